"""Anomaly scores from normal features: k-NN distance, Mahalanobis (Ledoit-Wolf), GMM negative log-density.

Higher score = more anomalous, for every score. Per-row scores computed elsewhere
(reconstruction error, negative ELBO) join in as extra score arrays.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from ._common import (PREPROCESSINGS, DataTooSmall, FeaturePrep, ResultRecord, check_choices, check_features,
                      check_fraction, check_labels, check_positive_ints, check_same_width, small_data_single_thread,
                      stratified_split, timed)

SCORES = ("knn", "mahalanobis", "gmm")
ONE_CLASS_MIN_ROWS = 2  # a GaussianMixture (even with one component) needs two rows


class AnomalyScorer:
    """Fits the latent-space scores on normal rows and scores new rows.

    Parameters
    ----------
    scores : sequence of {'knn', 'mahalanobis', 'gmm'}
    k : int
        'knn' = mean Euclidean distance to the ``k`` nearest normal rows.
    gmm_components : int
        Components of the full-covariance GaussianMixture ('gmm' = its negative log-density).
    preprocessing : {'none', 'standardize', 'l2'}
        Fitted on the normal rows (no labels); 'none' by default, since standardising
        inflates the near-constant dimensions a VAE leaves unused.
    seed : int
    """

    def __init__(self, scores=SCORES, *, k: int = 5, gmm_components: int = 4, preprocessing: str = "none",
                 seed: int = 0):
        self.scores = check_choices("scores", scores, SCORES)
        self.k = check_positive_ints("k", k)[0]
        self.gmm_components = check_positive_ints("gmm_components", gmm_components)[0]
        self.preprocessing = check_choices("preprocessing", (preprocessing,), PREPROCESSINGS)[0]
        self.seed = seed

    def fit(self, X_normal: np.ndarray) -> "AnomalyScorer":
        """Fit on normal rows ``X_normal`` of shape (n_normal, n_features); returns self."""
        from sklearn.covariance import LedoitWolf
        from sklearn.mixture import GaussianMixture
        from sklearn.neighbors import NearestNeighbors

        X = check_features(X_normal, "X_normal")
        if "knn" in self.scores and X.shape[0] < self.k:
            raise ConfigError(f"k: expected at most {X.shape[0]} (the normal rows to fit on), got {self.k}")
        if "gmm" in self.scores and X.shape[0] < self.gmm_components:
            raise ConfigError(f"gmm_components: expected at most {X.shape[0]} (the normal rows to fit on), "
                              f"got {self.gmm_components}")
        self.prep_ = FeaturePrep(self.preprocessing).fit(X)
        Z = self.prep_.transform(X)
        self.n_features_in_ = X.shape[1]
        self.fit_rows_ = Z  # the k-NN index holds the same array: no copy
        if "knn" in self.scores:
            self.nn_ = NearestNeighbors(n_neighbors=self.k, algorithm="brute").fit(Z)
        if "mahalanobis" in self.scores:
            self.cov_ = LedoitWolf().fit(Z)
        if "gmm" in self.scores:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.gmm_ = GaussianMixture(self.gmm_components, covariance_type="full", reg_covar=1e-4,
                                            random_state=self.seed).fit(Z)
        return self

    def score(self, X: np.ndarray) -> dict:
        """``{score_name: ndarray of shape (n_samples,)}`` for rows ``X`` (higher = more anomalous)."""
        X = check_features(X, "X")
        if X.shape[1] != self.n_features_in_:
            raise ConfigError(f"X: expected {self.n_features_in_} features like the normal rows, got {X.shape[1]}")
        Z = self.prep_.transform(X)
        return self._scores(Z, lambda: self.nn_.kneighbors(Z)[0])

    def score_fitted_rows(self) -> dict:
        """``{score_name: ndarray of shape (n_fit,)}`` for the rows ``fit`` saw, each left out of its own k-NN score.

        'knn' is the mean distance to the ``k`` nearest *other* rows (a row is never its own
        neighbour; an exact copy of it is, at distance 0), so it needs ``k`` + 1 rows. The other
        scores are those of :meth:`score`: fitted on every row, the scored one included.
        """
        Z = self.fit_rows_
        if "knn" in self.scores and Z.shape[0] <= self.k:
            raise ConfigError(f"k: expected at most {Z.shape[0] - 1} (the fitted rows less the one scored), "
                              f"got {self.k}")
        return self._scores(Z, lambda: self.nn_.kneighbors()[0])  # no query: each row's neighbours exclude it

    def _scores(self, Z, knn_distances) -> dict:
        out = {}
        if "knn" in self.scores:
            out["knn"] = knn_distances().mean(axis=1)
        if "mahalanobis" in self.scores:
            out["mahalanobis"] = self.cov_.mahalanobis(Z)
        if "gmm" in self.scores:
            out["gmm"] = -self.gmm_.score_samples(Z)
        return out


def anomaly_scores(X_normal, X_test, *, scores=SCORES, k: int = 5, gmm_components: int = 4,
                   preprocessing: str = "none", seed: int = 0) -> dict:
    """Fit the scores on ``X_normal`` (n_normal, d); return ``{name: (n_test,) array}`` for ``X_test`` (n_test, d)."""
    X_normal = check_features(X_normal, "X_normal")
    X_test = check_features(X_test, "X_test")
    check_same_width(X_normal, X_test)
    scorer = AnomalyScorer(scores, k=k, gmm_components=gmm_components, preprocessing=preprocessing, seed=seed)
    return scorer.fit(X_normal).score(X_test)


# wrapped after the definition, not decorated: mutmut (benchmarks/mutation.py) leaves decorated functions out
anomaly_scores = small_data_single_thread(anomaly_scores)


def _check_extra(extra, n: int, name: str) -> dict:
    out = {}
    for key, arr in (extra or {}).items():
        if arr is None:
            continue
        arr = np.asarray(arr, dtype=np.float64)
        if arr.shape != (n,):
            raise ConfigError(f"{name}[{key!r}]: expected shape ({n},), got {arr.shape}")
        if not np.isfinite(arr).all():
            raise ConfigError(f"{name}[{key!r}]: expected finite scores, got NaN or infinite values")
        out[str(key)] = arr
    return out


def min_normal_rows(fit_rows: int, heldout_fraction: float) -> int:
    """The fewest normal rows that leave ``fit_rows`` rows to fit on and one or more held-out rows.

    Mirrors :func:`stratified_split` on one class: ``round(fraction * n)`` rows held out,
    at least 1 and at most n - 1.
    """
    n = 2
    while n - min(max(int(round(heldout_fraction * n)), 1), n - 1) < fit_rows:
        n += 1
    return n


def _roc_points(y, s, max_points: int = 200) -> dict:
    """A down-sampled ROC curve (false-positive and true-positive rates) for plotting."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, s)
    if fpr.size > max_points:
        keep = np.unique(np.linspace(0, fpr.size - 1, max_points).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": np.round(fpr, 5).tolist(), "tpr": np.round(tpr, 5).tolist()}


@dataclass
class AnomalyResult(ResultRecord):
    """Outcome of :func:`anomaly_probe`.

    ``scores[name]`` holds ``threshold`` (calibrated on held-out normal rows at ``target_fpr``),
    ``heldout_fpr`` (the rate actually reached there), ``flagged`` (test rows above the threshold)
    and, with test labels, ``auroc``, ``aupr`` (anomaly = positive), ``test_fpr``, ``test_tpr``
    and ``roc`` points. ``normal_class`` names the class whose rows were normal (None: not given).
    ``test_scores`` (per-row arrays) stays out of ``to_dict``; use :meth:`scores_frame` to export it.
    """

    probe = "anomaly"
    _private_fields = ("test_scores", "is_anomaly")

    scores: dict
    target_fpr: float
    n_fit: int
    n_heldout: int
    n_test: int
    n_test_anomalies: int | None
    settings: dict
    seed: int
    timings: dict = field(default_factory=dict)
    normal_class: str | None = None
    test_scores: dict = field(default_factory=dict)
    is_anomaly: np.ndarray | None = None

    def summary(self) -> dict:
        out = {}
        for name, s in self.scores.items():
            for key in ("auroc", "aupr", "test_fpr", "test_tpr"):
                if s.get(key) is not None:
                    out[f"{name}_{key}"] = s[key]
        return out

    def scores_frame(self, keys=None):
        """One row per test row: ``key`` (when given), each score, ``flag_<score>`` and ``is_anomaly``."""
        import pandas as pd

        data = {}
        if keys is not None:
            data["key"] = list(keys)
        for name, arr in self.test_scores.items():
            data[name] = arr
            data[f"flag_{name}"] = arr > self.scores[name]["threshold"]
        if self.is_anomaly is not None:
            data["is_anomaly"] = self.is_anomaly
        return pd.DataFrame(data)


def anomaly_probe(X_normal, X_test, is_anomaly=None, *, scores=SCORES, extra_normal=None, extra_test=None,
                  fpr: float = 0.05, heldout_fraction: float = 0.2, k: int = 5, gmm_components: int = 4,
                  preprocessing: str = "none", normal_class: str | None = None, seed: int = 0) -> AnomalyResult:
    """Score test rows against normal training rows, calibrate thresholds, and measure them.

    A seeded ``heldout_fraction`` of the normal rows is held out; the scores are fitted on
    the rest, and each score's threshold is the ``1 - fpr`` quantile of its held-out scores,
    so that about ``fpr`` of unseen normal rows are flagged.

    Parameters
    ----------
    X_normal : ndarray of shape (n_normal, n_features)
        Normal (training) rows.
    X_test : ndarray of shape (n_test, n_features)
    is_anomaly : ndarray of shape (n_test,) or None
        1/True = anomaly; enables AUROC, AUPR and the test FPR/TPR at the threshold.
    extra_normal, extra_test : dict of name -> ndarray of shape (n_normal,) / (n_test,)
        Per-row scores computed elsewhere (e.g. 'recon_error', 'neg_elbo'); both must
        name the same scores.
    fpr : float
        Target false-positive rate of the calibrated thresholds.
    heldout_fraction : float
        Share of the normal rows held out for the calibration.
    normal_class : str or None
        Name of the normal class, only recorded in the result (for the report).

    Returns
    -------
    AnomalyResult

    Raises
    ------
    DataTooSmall
        When the normal rows left after the held-out share are fewer than the scores need
        to fit (``k`` for 'knn', ``gmm_components`` for 'gmm', 2 at least); the message gives
        the minimum number of normal rows.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    fpr = check_fraction("fpr", fpr)
    heldout_fraction = check_fraction("heldout_fraction", heldout_fraction)
    X_normal = check_features(X_normal, "X_normal")
    X_test = check_features(X_test, "X_test")
    check_same_width(X_normal, X_test)
    scores = check_choices("scores", scores, SCORES)
    k = check_positive_ints("k", k)[0]
    gmm_components = check_positive_ints("gmm_components", gmm_components)[0]
    need = max([2] + [k] * ("knn" in scores) + [gmm_components] * ("gmm" in scores))
    least = min_normal_rows(need, heldout_fraction)
    if X_normal.shape[0] < least:
        raise DataTooSmall(f"{X_normal.shape[0]} normal row(s) are too few: the scores need {need} rows to fit on "
                           f"(k={k}, gmm_components={gmm_components}) besides the {heldout_fraction:.0%} held out to "
                           f"calibrate the thresholds; at least {least} normal rows are needed")
    extra_n = _check_extra(extra_normal, X_normal.shape[0], "extra_normal")
    extra_t = _check_extra(extra_test, X_test.shape[0], "extra_test")
    if set(extra_n) != set(extra_t):
        raise ConfigError(f"extra_test: expected the same scores as extra_normal {sorted(extra_n)}, "
                          f"got {sorted(extra_t)}")
    labels = None
    if is_anomaly is not None:
        labels = check_labels(is_anomaly, X_test.shape[0], "is_anomaly")  # booleans and integers; 0.5 refused
        if labels.max(initial=0) > 1:
            raise ConfigError("is_anomaly: expected 0/1 (or booleans), got values above 1")

    fit_rows, held_rows = stratified_split(np.zeros(X_normal.shape[0], dtype=np.int64), heldout_fraction, seed)
    timings: dict = {}
    with timed(timings, "fit_s"):
        scorer = AnomalyScorer(scores, k=k, gmm_components=gmm_components, preprocessing=preprocessing,
                               seed=seed).fit(X_normal[fit_rows])
    with timed(timings, "score_s"):
        held = scorer.score(X_normal[held_rows])
        test = scorer.score(X_test)
    for name in extra_n:
        held[name], test[name] = extra_n[name][held_rows], extra_t[name]

    both = labels is not None and 0 < labels.sum() < labels.size
    out = {}
    for name, s in test.items():
        threshold = float(np.quantile(held[name], 1.0 - fpr))
        entry = {"threshold": threshold, "heldout_fpr": float(np.mean(held[name] > threshold)),
                 "flagged": int((s > threshold).sum())}
        if both:
            flag = s > threshold
            entry.update(auroc=float(roc_auc_score(labels, s)), aupr=float(average_precision_score(labels, s)),
                         test_fpr=float(flag[labels == 0].mean()), test_tpr=float(flag[labels == 1].mean()),
                         roc=_roc_points(labels, s))
        out[name] = entry
    settings = {"k": scorer.k, "gmm_components": scorer.gmm_components, "gmm_covariance": "full",
                "preprocessing": scorer.preprocessing, "heldout_fraction": heldout_fraction,
                "mahalanobis_covariance": "Ledoit-Wolf"}
    return AnomalyResult(
        scores=out, target_fpr=fpr, n_fit=int(fit_rows.size), n_heldout=int(held_rows.size),
        n_test=int(X_test.shape[0]), n_test_anomalies=int(labels.sum()) if labels is not None else None,
        settings=settings, seed=int(seed), timings=timings,
        normal_class=None if normal_class is None else str(normal_class), test_scores=test, is_anomaly=labels)


anomaly_probe = small_data_single_thread(anomaly_probe)


@dataclass
class OneClassResult(ResultRecord):
    """Outcome of :func:`one_class_protocol`: ``auroc[score][class]`` and ``mean_auroc[score]``.

    ``class_names`` (when names were given) follows ``classes``.
    """

    probe = "one_class"

    auroc: dict
    mean_auroc: dict
    classes: list
    n_fit_per_class: dict
    n_test: int
    settings: dict
    seed: int
    timings: dict = field(default_factory=dict)
    class_names: list | None = None

    def summary(self) -> dict:
        return {f"{name}_mean_auroc": v for name, v in self.mean_auroc.items()}


def one_class_protocol(X_train, y_train, X_test, y_test, *, scores=SCORES, extra_test=None, k: int = 5,
                       gmm_components: int = 4, preprocessing: str = "none", label_names=None,
                       seed: int = 0) -> OneClassResult:
    """The one-class protocol (Deep SVDD, GEOM): each class in turn is normal, all other test rows anomalies.

    For each class c the scores are fitted on the training rows of class c, every test
    row is scored, and the AUROC of "label != c" is recorded; ``mean_auroc`` averages classes.

    Parameters
    ----------
    X_train : ndarray of shape (n_train, n_features)
    y_train : ndarray of shape (n_train,)
    X_test : ndarray of shape (n_test, n_features)
    y_test : ndarray of shape (n_test,)
        Rows labelled -1 in either split are left out.
    extra_test : dict of name -> ndarray of shape (n_test,)
        Per-row scores that need no fitting (e.g. a VAE's 'neg_elbo'), measured the same way.
    label_names : list of str or None
        Class names by id, used in messages and recorded as ``class_names``.

    Returns
    -------
    OneClassResult

    Raises
    ------
    DataTooSmall
        When no class has test rows both of its own and of other classes, or a protocol class
        has fewer than 2 training rows (the least its scores fit on).
    """
    from sklearn.metrics import roc_auc_score

    X_train = check_features(X_train, "X_train")
    X_test = check_features(X_test, "X_test")
    check_same_width(X_train, X_test)
    y_train = check_labels(y_train, X_train.shape[0], "y_train", allow_unknown=True)
    y_test = check_labels(y_test, X_test.shape[0], "y_test", allow_unknown=True)
    extra = _check_extra(extra_test, X_test.shape[0], "extra_test")
    keep = y_test >= 0
    X_test, y_test = X_test[keep], y_test[keep]
    extra = {name: arr[keep] for name, arr in extra.items()}
    classes = [int(c) for c in np.unique(y_train[y_train >= 0]) if np.any(y_test == c) and np.any(y_test != c)]
    if not classes:
        raise DataTooSmall("the test rows must hold at least two classes, one or more of them also in the "
                           "training rows; the one-class protocol has nothing to measure otherwise")

    def described(c):
        return f"'{label_names[c]}' (id {c})" if label_names is not None and c < len(label_names) else f"id {c}"

    short = [c for c in classes if np.sum(y_train == c) < ONE_CLASS_MIN_ROWS]
    if short:
        listed = ", ".join(f"{described(c)} has {int(np.sum(y_train == c))}" for c in short)
        raise DataTooSmall(f"the one-class protocol fits each class on its own training rows and needs at least "
                           f"{ONE_CLASS_MIN_ROWS} per class; class {listed}")
    auroc: dict = {}
    counts, timings = {}, {}
    with timed(timings, "total_s"):
        for c in classes:
            normal = X_train[y_train == c]
            counts[c] = int(normal.shape[0])
            s = anomaly_scores(normal, X_test, scores=scores, k=min(k, normal.shape[0]),
                               gmm_components=min(gmm_components, normal.shape[0]),
                               preprocessing=preprocessing, seed=seed)
            s.update(extra)
            for name, arr in s.items():
                auroc.setdefault(name, {})[c] = float(roc_auc_score(y_test != c, arr))
    mean = {name: float(np.mean(list(per.values()))) for name, per in auroc.items()}
    settings = {"k": int(k), "gmm_components": int(gmm_components), "preprocessing": preprocessing}
    names = ([str(label_names[c]) if c < len(label_names) else str(c) for c in classes]
             if label_names is not None else None)
    return OneClassResult(auroc=auroc, mean_auroc=mean, classes=classes, n_fit_per_class=counts,
                          n_test=int(y_test.size), settings=settings, seed=int(seed), timings=timings,
                          class_names=names)


one_class_protocol = small_data_single_thread(one_class_protocol)
