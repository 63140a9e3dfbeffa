"""Groups for every row of a store without labels: a cluster, the distance to its centre, exemplars.

The clustering is the cluster probe's (:func:`~cvae_features.probes.cluster.fit_clusters` on
features preprocessed by :class:`~cvae_features.probes.FeaturePrep`: by default centred and
scaled to unit norm, k-means with 10 seeded restarts or a diagonal Gaussian mixture).

Choosing the number of groups without labels: the **silhouette** (mean over rows of
(b - a) / max(a, b), a = mean distance to the row's own group, b = to the nearest other group),
computed for every k in a range on a seeded sample of rows, in the space that is clustered; the
largest wins (ties: the smaller k). Why this criterion: it needs no labels, it puts partitions
with different k on one scale (the k-means inertia always falls as k grows), and it serves both
methods alike (BIC applies to the mixture only, and a diagonal mixture on unit-norm features
keeps gaining likelihood from components that model the shape of one group). Its limits, stated
so that the choice can be judged: it cannot answer "one group", it favours few well-separated
groups over many touching ones, and the sample costs some precision on very large stores. Every
value is recorded (``criterion["values"]``), so a close second choice is visible; pass ``k`` to
override.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .errors import ConfigError
from .probes._common import (PREPROCESSINGS, DataTooSmall, FeaturePrep, check_choices, check_features,
                             small_data_single_thread)
from .probes.cluster import MIN_ROWS_PER_CLUSTER, fit_clusters

METHODS = ("kmeans", "gmm")  # a group needs a centre in feature space (its nearest images): not umap-gmm

K_RANGE = (2, 12)
SELECTION_ROWS = 2000  # the silhouette's cost is quadratic in the rows it is computed on
N_EXEMPLARS = 5
SHEET_CELLS = 24
SHEET_COLUMNS = 8


@dataclass
class GroupsResult:
    """Outcome of :func:`group_rows` (and :func:`group_store`).

    Attributes
    ----------
    frame : pandas.DataFrame
        One row per input row, in input order: ``key``, ``cluster`` (0 = the largest group),
        ``distance`` (Euclidean, to the group's centre, in the clustered space) and ``exemplar``
        (True for the ``n_exemplars`` members closest to the centre).
    k : int
        The number of groups.
    chosen_by : {'given', 'silhouette'}
    criterion : dict or None
        When k was chosen: ``name`` ('silhouette'), ``values`` (k -> silhouette, None where the
        fit gave fewer than two distinct groups), ``rows`` (the sample it was computed on) and
        ``k_range``.
    sizes : list of int
        Rows per group, by group id.
    centres : ndarray of shape (k, n_features)
        Group centres in the clustered (preprocessed) space; kept out of :meth:`to_dict`.
    """

    frame: object
    k: int
    chosen_by: str
    criterion: Optional[dict]
    method: str
    preprocessing: str
    sizes: list
    n_rows: int
    n_exemplars: int
    seed: int
    centres: np.ndarray = field(repr=False, default=None)
    store: Optional[str] = None
    sheets: object = None

    def exemplars(self) -> dict:
        """Group id -> the keys of its exemplars, closest to the centre first."""
        f = self.frame[self.frame["exemplar"]].sort_values(["cluster", "distance"], kind="stable")
        return {int(c): list(g["key"]) for c, g in f.groupby("cluster", sort=True)}

    def to_dict(self) -> dict:
        out = {"store": self.store, "n_rows": self.n_rows, "k": self.k, "chosen_by": self.chosen_by,
               "criterion": self.criterion, "method": self.method, "preprocessing": self.preprocessing,
               "sizes": list(self.sizes), "n_exemplars": self.n_exemplars, "seed": self.seed,
               "exemplars": {str(c): keys for c, keys in self.exemplars().items()}}
        if self.sheets is not None:
            out["sheets"] = self.sheets.to_dict()
        return out


def _check_k(k, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ConfigError(f"k: expected an integer >= 2 (the number of groups), got {k!r}")
    k = int(k)
    if k * MIN_ROWS_PER_CLUSTER > n:
        raise DataTooSmall(f"k: {k} groups need at least {MIN_ROWS_PER_CLUSTER * k} rows "
                           f"({MIN_ROWS_PER_CLUSTER} per group), the store holds {n}")
    return k


def _whole(value) -> int:
    """``value`` as an int; ValueError for a bool or a number with a fraction (int() would cut 2.7 to 2)."""
    fraction = isinstance(value, (float, np.floating)) and not float(value).is_integer()
    if fraction or isinstance(value, (bool, np.bool_)):
        raise ValueError(value)
    return int(value)


def _check_k_range(k_range, n: int) -> list:
    try:
        lo, hi = (_whole(v) for v in k_range)
    except (TypeError, ValueError):
        raise ConfigError(f"k_range: expected two integers (smallest, largest k), got {k_range!r}") from None
    if lo < 2 or hi < lo:
        raise ConfigError(f"k_range: expected 2 <= smallest <= largest, got {k_range!r}")
    hi = min(hi, n // MIN_ROWS_PER_CLUSTER)
    if hi < lo:
        raise DataTooSmall(f"{n} rows are too few to choose the number of groups: at least "
                           f"{MIN_ROWS_PER_CLUSTER * lo} are needed ({MIN_ROWS_PER_CLUSTER} per group for k={lo})")
    return list(range(lo, hi + 1))


def silhouette_by_k(Xp: np.ndarray, k_values, method: str = "kmeans", *, n_init: int = 10, seed: int = 0) -> dict:
    """The silhouette of the clustering of ``Xp`` (n_samples, n_features) for each k: ``{k: float or None}``.

    None where the fit gave fewer than two distinct groups (the silhouette is undefined there).
    """
    from sklearn.metrics import silhouette_score

    out = {}
    for k in k_values:
        pred = fit_clusters(Xp, k, method, n_init=n_init, seed=seed).predict(Xp)
        distinct = np.unique(pred).size
        out[int(k)] = float(silhouette_score(Xp, pred)) if 2 <= distinct < Xp.shape[0] else None
    return out


def group_rows(X, keys=None, *, k: Optional[int] = None, method: str = "kmeans", k_range=K_RANGE,
               preprocessing: str = "l2", n_exemplars: int = N_EXEMPLARS, selection_rows: int = SELECTION_ROWS,
               n_init: int = 10, seed: int = 0) -> GroupsResult:
    """Put every row in a group, with its distance to the group's centre and the groups' exemplars.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    keys : sequence of str or None
        Row names (default "0", "1", ...).
    k : int or None
        The number of groups (2 .. n_samples / 2). None: chosen by the silhouette over ``k_range``
        (see the module notes).
    method : {'kmeans', 'gmm'}
    k_range : (int, int)
        Smallest and largest k tried when ``k`` is None (the largest is cut to n_samples / 2).
    preprocessing : {'l2', 'standardize', 'none'}
        As in the cluster probe; 'l2' centres and scales rows to unit norm.
    n_exemplars : int
        Members closest to the centre marked as exemplars, per group.
    selection_rows : int
        The silhouette is computed on a seeded sample of at most this many rows.
    n_init : int
        k-means restarts.
    seed : int
        Seeds the clusterer and the sample.

    Returns
    -------
    GroupsResult
    """
    import pandas as pd

    X = check_features(X, "X")
    n = X.shape[0]
    keys = [str(i) for i in range(n)] if keys is None else [str(key) for key in keys]
    if len(keys) != n:
        raise ConfigError(f"keys: expected {n} keys (one per row of X), got {len(keys)}")
    method = check_choices("method", (method,), METHODS)[0]
    preprocessing = check_choices("preprocessing", (preprocessing,), PREPROCESSINGS)[0]
    if isinstance(n_exemplars, bool) or not isinstance(n_exemplars, (int, np.integer)) or n_exemplars < 1:
        raise ConfigError(f"n_exemplars: expected an integer >= 1, got {n_exemplars!r}")
    Xp = FeaturePrep(preprocessing).fit_transform(X)

    criterion = None
    if k is None:
        k_values = _check_k_range(k_range, n)
        rng = np.random.default_rng(seed)
        sample = (np.arange(n) if n <= selection_rows else np.sort(rng.choice(n, selection_rows, replace=False)))
        values = silhouette_by_k(Xp[sample], k_values, method, n_init=n_init, seed=seed)
        scored = {kk: v for kk, v in values.items() if v is not None}
        if not scored:
            raise DataTooSmall(f"no k in {k_values[0]}..{k_values[-1]} splits the rows into two or more distinct "
                               "groups (are they all alike?); pass k")
        k = max(scored, key=lambda kk: (scored[kk], -kk))
        criterion = {"name": "silhouette", "values": values, "rows": int(sample.size),
                     "k_range": [k_values[0], k_values[-1]]}
    k = _check_k(k, n)

    est = fit_clusters(Xp, k, method, n_init=n_init, seed=seed)
    pred = est.predict(Xp)
    centres = est.cluster_centers_ if method == "kmeans" else est.means_
    # group 0 = the largest (ties: the fitted order), so ids mean something to a reader
    order = np.argsort(-np.bincount(pred, minlength=k), kind="stable")
    relabel = np.empty(k, dtype=np.int64)
    relabel[order] = np.arange(k)
    labels, centres = relabel[pred], np.asarray(centres, dtype=np.float64)[order]
    distance = np.linalg.norm(Xp - centres[labels], axis=1)
    exemplar = np.zeros(n, dtype=bool)
    for c in range(k):
        members = np.flatnonzero(labels == c)
        exemplar[members[np.argsort(distance[members], kind="stable")[:n_exemplars]]] = True
    frame = pd.DataFrame({"key": keys, "cluster": labels, "distance": distance, "exemplar": exemplar})
    return GroupsResult(frame=frame, k=k, chosen_by="given" if criterion is None else "silhouette",
                        criterion=criterion, method=method, preprocessing=preprocessing,
                        sizes=np.bincount(labels, minlength=k).tolist(), n_rows=n, n_exemplars=int(n_exemplars),
                        seed=int(seed), centres=centres)


# wrapped after the definition, not decorated: mutmut (benchmarks/mutation.py) leaves decorated functions out
group_rows = small_data_single_thread(group_rows)


def group_sheets(result: GroupsResult, per_sheet: int = SHEET_CELLS, seed: int = 0) -> list:
    """One :class:`~cvae_features.sheets.Sheet` per non-empty group: its exemplars (closest first),
    then a seeded sample of its other members, ``per_sheet`` images in all."""
    from .sheets import Sheet

    rng = np.random.default_rng(seed)
    frame = result.frame
    sheets = []
    for c in range(result.k):
        members = frame[frame["cluster"] == c]
        if members.empty:
            continue
        ex = members[members["exemplar"]].sort_values("distance", kind="stable")
        rest = members[~members["exemplar"]]["key"].to_numpy()
        take = min(rest.size, max(per_sheet - len(ex), 0))
        sample = list(rest[np.sort(rng.choice(rest.size, take, replace=False))]) if take else []
        rows = [("closest", list(ex["key"]))]
        rows += [("sample", sample[i:i + SHEET_COLUMNS]) for i in range(0, len(sample), SHEET_COLUMNS)]
        sheets.append(Sheet(
            name=f"group_{c:02d}", heading=f"Group {c}: {len(members):,} image(s)",
            caption=f"First row: the {len(ex)} member(s) closest to the group's centre (closest first); "
                    f"then {len(sample)} member(s) drawn at random (seed {seed}).",
            rows=rows, listed=[(key, f"distance {d:.4f}") for key, d in zip(ex["key"], ex["distance"])]))
    return sheets


def group_store(path, *, k: Optional[int] = None, method: str = "kmeans", sheets=None, source=None,
                data_dir=None, per_sheet: int = SHEET_CELLS, seed: int = 0, **options) -> GroupsResult:
    """:func:`group_rows` on the features of a complete store, and contact sheets when ``sheets`` names a folder.

    Parameters
    ----------
    path : str or Path
        A feature store; an incomplete one is refused (finish it with ``cvae extract ... --resume``).
    sheets : str or Path or None
        Folder for one PNG per group and ``index.html``. The images are read back from the store's
        recorded source (or ``source``); when it cannot be opened, nothing is computed or written
        (SourceNotFoundError).
    source : str or Path or None
        Where the store's images are now, when they have moved.
    options
        Passed to :func:`group_rows` (``k_range``, ``preprocessing``, ``n_exemplars``...).
    """
    from .probes.suite import read_store_rows
    from .sheets import StoreImages, write_sheets
    from .store import FeatureStore

    rows = read_store_rows(path, "store")
    images = None
    if sheets is not None:
        with FeatureStore(path) as store:
            images = StoreImages.open(store, source=source, data_dir=data_dir)
    result = group_rows(rows["X"], rows["keys"], k=k, method=method, seed=seed, **options)
    result.store = str(path)
    if images is not None:
        how = (f"k = {result.k} chosen by the silhouette over k = {result.criterion['k_range'][0]}.."
               f"{result.criterion['k_range'][1]}" if result.criterion else f"k = {result.k} as given")
        result.sheets = write_sheets(
            sheets, group_sheets(result, per_sheet=per_sheet, seed=seed), images,
            title=f"Groups of {path}",
            intro=f"{result.n_rows:,} images in {result.k} groups ({result.method}, {how}); images as the model "
                  f"saw them, from {images.source.spec or images.source.description}.")
    return result


__all__ = ["GroupsResult", "group_rows", "group_store", "group_sheets", "silhouette_by_k", "K_RANGE"]
