"""Shared bits of the probes: input checks, feature preprocessing, splits of the training rows, result records.

Everything here uses only training rows (or no labels at all); the probes call it
before they ever look at a test row.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from contextlib import contextmanager, nullcontext

import numpy as np

from .._json import to_builtin
from ..errors import ConfigError

PREPROCESSINGS = ("standardize", "l2", "none")


class DataTooSmall(ConfigError):
    """The data hold too few rows (or classes) for a probe; the message says what is short and the minimum.

    A ``ConfigError`` (callers catching that keep working); the probe suite catches this
    subclass to skip one probe and run the others.
    """


# --------------------------------------------------------------------------- checks

def check_features(X, name: str = "X") -> np.ndarray:
    """Return ``X`` as a finite float64 array of shape (n_samples, n_features) or raise ConfigError."""
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise ConfigError(f"{name}: expected a 2-D array (n_samples, n_features), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ConfigError(f"{name}: expected at least one row and one column, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ConfigError(f"{name}: expected real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise ConfigError(f"{name}: {bad} row(s) hold NaN or infinite values; expected finite features")
    return arr


def check_labels(y, n: int, name: str = "y", *, allow_unknown: bool = False) -> np.ndarray:
    """Return ``y`` as an int64 array of shape (n,) or raise ConfigError; -1 means unknown when allowed."""
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ConfigError(f"{name}: expected shape ({n},) to match the features, got {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ConfigError(f"{name}: expected integer class labels, got non-integer values")
    elif arr.dtype.kind not in "iub":
        raise ConfigError(f"{name}: expected integer class labels, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    low = -1 if allow_unknown else 0
    if arr.size and arr.min() < low:
        what = "labels >= -1 (-1 = unknown)" if allow_unknown else "labels >= 0 (no unknown rows)"
        raise ConfigError(f"{name}: expected {what}, got minimum {int(arr.min())}")
    return arr


def check_same_width(X_train: np.ndarray, X_test: np.ndarray) -> None:
    """Raise ConfigError when train and test features differ in width."""
    if X_train.shape[1] != X_test.shape[1]:
        raise ConfigError(f"X_test: expected {X_train.shape[1]} features like X_train, got {X_test.shape[1]}")


def check_choices(name: str, values, allowed) -> tuple:
    """Return ``values`` as a non-empty tuple whose items are all in ``allowed`` or raise ConfigError."""
    values = (values,) if isinstance(values, str) else tuple(values)
    if not values:
        raise ConfigError(f"{name}: expected at least one of {list(allowed)}, got none")
    for v in values:
        if v not in allowed:
            raise ConfigError(f"{name}: expected one of {list(allowed)}, got {v!r}")
    return values


def check_positive_ints(name: str, values, minimum: int = 1) -> tuple:
    """Return ``values`` as a non-empty tuple of ints >= minimum or raise ConfigError."""
    values = (values,) if np.isscalar(values) else tuple(values)
    if not values:
        raise ConfigError(f"{name}: expected at least one integer >= {minimum}, got none")
    out = []
    for v in values:
        if isinstance(v, bool) or not float(v).is_integer() or int(v) < minimum:
            raise ConfigError(f"{name}: expected integers >= {minimum}, got {v!r}")
        out.append(int(v))
    return tuple(out)


def check_fraction(name: str, value: float, *, low: float = 0.0, high: float = 1.0) -> float:
    """Return ``value`` as a float strictly between low and high or raise ConfigError."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a number in ({low}, {high}), got {value!r}") from None
    if not low < value < high:
        raise ConfigError(f"{name}: expected a number in ({low}, {high}), got {value}")
    return value


def labelled_classes(y: np.ndarray) -> np.ndarray:
    """The sorted distinct known labels (>= 0) of ``y``."""
    return np.unique(y[y >= 0])


def supervised_inputs(X_train, y_train, X_test, y_test, *, min_classes: int = 2):
    """Checked (X_train, y_train, X_test, y_test) keeping only rows whose label is known (>= 0).

    Raises ConfigError when fewer than ``min_classes`` classes are left in the training rows
    or no labelled test row is left.
    """
    X_train = check_features(X_train, "X_train")
    X_test = check_features(X_test, "X_test")
    check_same_width(X_train, X_test)
    y_train = check_labels(y_train, X_train.shape[0], "y_train", allow_unknown=True)
    y_test = check_labels(y_test, X_test.shape[0], "y_test", allow_unknown=True)
    keep_train, keep_test = y_train >= 0, y_test >= 0
    X_train, y_train = X_train[keep_train], y_train[keep_train]
    X_test, y_test = X_test[keep_test], y_test[keep_test]
    n_classes = np.unique(y_train).size
    if n_classes < min_classes:
        raise DataTooSmall(f"the training rows hold {n_classes} class(es) with known labels; "
                           f"at least {min_classes} are needed")
    if y_test.size == 0:
        raise ConfigError("y_test: expected at least one test row with a known label, got none")
    return X_train, y_train, X_test, y_test


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Balanced accuracy without scikit-learn's warning about predicted classes absent from the test rows.

    That happens whenever the test store lacks some training classes; the probe suite warns
    about class names that differ between the stores itself.
    """
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(y_true, y_pred))


# --------------------------------------------------------------------------- preprocessing

class FeaturePrep:
    """Feature preprocessing fitted on one set of rows and applied to others.

    Parameters
    ----------
    method : {'standardize', 'l2', 'none'}
        'standardize': subtract the mean, divide by the standard deviation per feature.
        'l2': subtract the mean, then scale every row to unit Euclidean norm
        (cosine geometry around the data's centre). 'none': leave features as they are.
    """

    def __init__(self, method: str = "none"):
        check_choices("preprocessing", (method,), PREPROCESSINGS)
        self.method = method

    def fit(self, X: np.ndarray) -> "FeaturePrep":
        """Learn the mean (and scale) from ``X`` of shape (n_samples, n_features); returns self."""
        X = np.asarray(X, dtype=np.float64)
        self.mean_ = X.mean(axis=0)
        std = X.std(axis=0)
        # a constant feature carries nothing; leave it at zero rather than dividing by zero
        self.scale_ = np.where(std > 1e-12, std, 1.0)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Apply the fitted preprocessing to ``X`` of shape (n_samples, n_features)."""
        X = np.asarray(X, dtype=np.float64)
        if self.method == "none":
            return X
        if self.method == "standardize":
            return (X - self.mean_) / self.scale_
        return l2_normalize(X - self.mean_)

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        return self.fit(X).transform(X)


def l2_normalize(X: np.ndarray) -> np.ndarray:
    """Rows of ``X`` scaled to unit Euclidean norm (all-zero rows stay zero)."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 1e-12, norms, 1.0)


# --------------------------------------------------------------------------- splits of the training rows

def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into (kept, held-out) with about ``fraction`` of every class held out.

    Rows with label -1 are treated as one more group. A class with at least two rows
    keeps at least one row on each side. Both index arrays are sorted.
    """
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for cls in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == cls))
        n_held = int(round(fraction * rows.size))
        if rows.size >= 2:
            n_held = min(max(n_held, 1), rows.size - 1)
        else:
            n_held = 0
        held.append(rows[:n_held])
        kept.append(rows[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def stratified_subsample(y: np.ndarray, max_rows: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a stratified subsample of at most about ``max_rows`` rows (all rows if fewer)."""
    if max_rows is None or y.size <= max_rows:
        return np.arange(y.size)
    _, held = stratified_split(y, max_rows / y.size, seed)
    return held


def selection_splits(y: np.ndarray, *, cv: int | None, val_fraction: float, max_rows: int | None,
                     seed: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict]:
    """Splits of the training rows on which a probe chooses its hyper-parameters.

    Parameters
    ----------
    y : ndarray of shape (n_train,)
        Training labels (only these; the test split is never involved).
    cv : int or None
        None: one stratified validation split holding out ``val_fraction`` of the rows.
        int >= 2: stratified K-fold cross-validation with that many folds.
    max_rows : int or None
        Choose on a stratified subsample of at most this many training rows (speed on big stores).

    Returns
    -------
    splits : list of (fit_rows, val_rows)
        Index arrays into the training rows.
    info : dict
        How the splits were made (for the result record).
    """
    rows = stratified_subsample(y, max_rows, seed)
    info = {"selection": "validation split" if cv is None else f"{cv}-fold stratified CV",
            "selection_rows": int(rows.size), "selection_seed": int(seed)}
    if cv is None:
        fit, val = stratified_split(y[rows], val_fraction, seed)
        if val.size == 0:
            raise DataTooSmall(f"every class has at most 1 of the {rows.size} training rows, so no row can be "
                               "held out to choose hyper-parameters on; at least one class needs 2 training rows")
        info["val_fraction"] = float(val_fraction)
        return [(rows[fit], rows[val])], info
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y[rows])
    smallest = int(counts[counts > 0].min())
    if smallest < cv:
        raise DataTooSmall(f"cv: {cv} folds need at least {cv} training rows in every class; "
                          f"the smallest class has {smallest}")
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
    return [(rows[a], rows[b]) for a, b in folds.split(np.zeros(rows.size), y[rows])], info


# --------------------------------------------------------------------------- records

class ResultRecord:
    """Mixin of the probes' result dataclasses: ``to_dict()`` and ``summary()``.

    ``to_dict`` holds every number, choice, count, seed and timing (JSON-ready);
    fields listed in ``_private_fields`` (per-row arrays) are left out of it.
    ``summary`` gives the headline metrics, ``{metric: value}`` where value is a
    float or a ``(mean, std)`` pair, for the report's table.
    """

    probe = "probe"
    _private_fields: tuple = ()

    def to_dict(self) -> dict:
        out = {"probe": self.probe}
        for f in dataclasses.fields(self):
            if f.name not in self._private_fields:
                out[f.name] = to_builtin(getattr(self, f.name))
        return out

    def summary(self) -> dict:  # pragma: no cover - every probe overrides it
        return {}


@contextmanager
def timed(timings: dict, name: str):
    """Record the wall time of the block in ``timings[name]`` (seconds)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - start, 4)


SINGLE_THREAD_BELOW = 4_000_000


def small_data_single_thread(func):
    """Run a probe with one BLAS/OpenMP thread when its first array is small (< 4M values).

    On small problems thread start-up and synchronisation cost more than they save, and
    on a busy machine spinning worker threads can slow a 0.1 s fit down a hundredfold.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        first = args[0] if args else next(iter(kwargs.values()), None)
        size = getattr(first, "size", None)
        if size is None:
            size = np.asarray(first).size if first is not None else 0
        if size < SINGLE_THREAD_BELOW:
            from threadpoolctl import threadpool_limits

            ctx = threadpool_limits(limits=1)
        else:
            ctx = nullcontext()
        with ctx:
            return func(*args, **kwargs)

    return wrapper
