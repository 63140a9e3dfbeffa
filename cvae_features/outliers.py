"""Outliers over all rows of a store without labels: several scores, one combined rank, a threshold at a rate.

Every row is scored against all the others (no normal class, no held-out split):

- ``knn``: the mean Euclidean distance in μ to the ``k`` nearest *other* rows (leave-one-out:
  a row is never its own neighbour; an exact copy of it is, at distance 0);
- ``mahalanobis``: the Mahalanobis distance under a Ledoit-Wolf covariance fitted on every row
  (as the anomaly probe; a rate of outliers of a few per cent barely moves it);
- ``recon_error`` and ``neg_elbo``: the store's own per-row scores, when it holds them.

Higher = more unusual for every score. The scores have different units, so they are combined by
rank: each score ranks the rows (1 = highest, ties share the mean rank), ``mean_rank`` averages
those ranks, and ``rank`` orders the rows by it (1 = most unusual; ties by row order). An image
that is unusual under several views rises above one that only one score picks. The
``ceil(rate × n)`` best-ranked rows are flagged ``is_outlier``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .errors import ConfigError
from .probes._common import (PREPROCESSINGS, DataTooSmall, check_choices, check_features, check_fraction,
                             small_data_single_thread)
from .probes.anomaly import AnomalyScorer, _check_extra

RATE = 0.01
TOP = 20
K = 5
N_NEIGHBOURS = 6
ROWS_PER_SHEET = 25
EXTRA_SCORES = ("recon_error", "neg_elbo")


@dataclass
class OutliersResult:
    """Outcome of :func:`find_outliers` (and :func:`outlier_store`).

    Attributes
    ----------
    frame : pandas.DataFrame
        One row per input row, in input order: ``key``, one column per score, ``mean_rank``,
        ``rank`` (1 = most unusual) and ``is_outlier``.
    scores : list of str
        The score columns, in order.
    n_flagged : int
        ``ceil(rate * n_rows)``: the rows flagged.
    threshold_mean_rank : float
        The ``mean_rank`` of the last flagged row.
    top : list of str
        Keys of the ``top`` best-ranked rows, most unusual first.
    neighbours : dict of str to list of str
        For each key in ``top``: its nearest normal rows in μ (neither flagged nor in ``top``), nearest first.
    """

    frame: object
    scores: list
    rate: float
    n_flagged: int
    threshold_mean_rank: float
    k: int
    preprocessing: str
    n_rows: int
    top: list
    neighbours: dict
    store: Optional[str] = None
    sheets: object = None

    def to_dict(self) -> dict:
        f = self.frame.set_index("key")
        top = [{"key": key, "rank": int(f.at[key, "rank"]), "is_outlier": bool(f.at[key, "is_outlier"]),
                "scores": {name: float(f.at[key, name]) for name in self.scores},
                "nearest_normal": self.neighbours.get(key, [])} for key in self.top]
        out = {"store": self.store, "n_rows": self.n_rows, "scores": list(self.scores),
               "combined": "mean of per-score ranks (1 = highest score)", "rate": self.rate,
               "n_flagged": self.n_flagged, "threshold_mean_rank": self.threshold_mean_rank, "k": self.k,
               "preprocessing": self.preprocessing, "top": top}
        if self.sheets is not None:
            out["sheets"] = self.sheets.to_dict()
        return out


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def find_outliers(X, keys=None, *, extra=None, k: int = K, rate: float = RATE, top: int = TOP,
                  n_neighbours: int = N_NEIGHBOURS, preprocessing: str = "none") -> OutliersResult:
    """Score every row against the others, rank the rows and flag the ``rate`` most unusual.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    keys : sequence of str or None
        Row names (default "0", "1", ...).
    extra : dict of name -> ndarray of shape (n_samples,), or None
        Per-row scores computed elsewhere (higher = more unusual), e.g. 'recon_error', 'neg_elbo'.
    k : int
        Neighbours of the leave-one-out k-NN score; needs at least ``k`` + 1 rows.
    rate : float in (0, 1)
        Share of rows flagged: the ``ceil(rate * n)`` best-ranked.
    top : int
        Rows listed with their nearest normal rows (cut to n_samples).
    n_neighbours : int
        Nearest normal rows listed for each of the ``top``.
    preprocessing : {'none', 'standardize', 'l2'}
        Applied before the k-NN and Mahalanobis scores and the neighbour search ('none': μ as it is).

    Returns
    -------
    OutliersResult
    """
    import pandas as pd
    from scipy.stats import rankdata
    from sklearn.neighbors import NearestNeighbors

    rate = check_fraction("rate", rate)
    k = _check_int("k", k)
    top = _check_int("top", top)
    n_neighbours = _check_int("n_neighbours", n_neighbours)
    preprocessing = check_choices("preprocessing", (preprocessing,), PREPROCESSINGS)[0]
    X = check_features(X, "X")
    n = X.shape[0]
    keys = [str(i) for i in range(n)] if keys is None else [str(key) for key in keys]
    if len(keys) != n:
        raise ConfigError(f"keys: expected {n} keys (one per row of X), got {len(keys)}")
    if n < k + 1:
        raise DataTooSmall(f"{n} row(s) are too few for the k-NN score with k={k}: each row needs {k} other rows, "
                           f"so at least {k + 1} rows are needed")
    extra = _check_extra(extra, n, "extra")

    scorer = AnomalyScorer(("knn", "mahalanobis"), k=k, preprocessing=preprocessing).fit(X)
    scores = scorer.score_fitted_rows()
    scores.update(extra)
    names = list(scores)
    mean_rank = np.mean([rankdata(-scores[name], method="average") for name in names], axis=0)
    order = np.argsort(mean_rank, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(1, n + 1)
    n_flagged = math.ceil(round(rate * n, 9))  # round: 0.01 * 300 is 3.0000000000000004 in floating point
    is_outlier = rank <= n_flagged

    top_rows = order[:min(top, n)]
    pool = np.setdiff1d(np.flatnonzero(~is_outlier), top_rows)
    neighbours = {}
    if pool.size:
        Z = scorer.fit_rows_
        nn = NearestNeighbors(n_neighbors=min(n_neighbours, pool.size), algorithm="brute").fit(Z[pool])
        near = nn.kneighbors(Z[top_rows], return_distance=False)
        neighbours = {keys[r]: [keys[pool[j]] for j in row] for r, row in zip(top_rows, near)}
    data = {"key": keys}
    data.update({name: np.asarray(scores[name], dtype=np.float64) for name in names})
    data.update(mean_rank=mean_rank, rank=rank, is_outlier=is_outlier)
    return OutliersResult(
        frame=pd.DataFrame(data), scores=names, rate=rate, n_flagged=int(n_flagged),
        threshold_mean_rank=float(mean_rank[order[n_flagged - 1]]), k=k, preprocessing=preprocessing, n_rows=n,
        top=[keys[r] for r in top_rows], neighbours=neighbours)


# wrapped after the definition, not decorated: mutmut (benchmarks/mutation.py) leaves decorated functions out
find_outliers = small_data_single_thread(find_outliers)


def outlier_sheets(result: OutliersResult) -> list:
    """Contact sheets of the ``top`` rows, ``ROWS_PER_SHEET`` a page: each row the image, then its nearest normal images."""
    from .sheets import Sheet

    f = result.frame.set_index("key")
    sheets = []
    for page, start in enumerate(range(0, len(result.top), ROWS_PER_SHEET), 1):
        keys = result.top[start:start + ROWS_PER_SHEET]
        rows = [(f"#{int(f.at[key, 'rank'])}", [key] + result.neighbours.get(key, [])) for key in keys]
        listed = [(key, f"rank {int(f.at[key, 'rank'])}{' (outlier)' if f.at[key, 'is_outlier'] else ''}; "
                        + ", ".join(f"{name} {f.at[key, name]:.4g}" for name in result.scores)) for key in keys]
        sheets.append(Sheet(
            name=f"outliers_{page:02d}", heading=f"Ranks {start + 1} to {start + len(keys)}",
            caption="Each row: the image (first column), then its nearest normal images in μ, nearest first.",
            rows=rows, listed=listed))
    return sheets


def outlier_store(path, *, k: int = K, rate: float = RATE, top: int = TOP, sheets=None, source=None,
                  data_dir=None, **options) -> OutliersResult:
    """:func:`find_outliers` on a complete store, with its ``recon_error``/``neg_elbo`` when it holds them,
    and contact sheets of the ``top`` rows when ``sheets`` names a folder.

    An incomplete store is refused (finish it with ``cvae extract ... --resume``); when ``sheets`` is
    asked and the store's source cannot be opened (moved: pass ``source``), nothing is computed or
    written (SourceNotFoundError).
    """
    from .probes.suite import read_store_rows
    from .sheets import StoreImages, write_sheets
    from .store import FeatureStore

    rows = read_store_rows(path, "store")
    images = None
    if sheets is not None:
        with FeatureStore(path) as store:
            images = StoreImages.open(store, source=source, data_dir=data_dir)
    result = find_outliers(rows["X"], rows["keys"], extra={name: rows["extras"][name] for name in EXTRA_SCORES
                                                          if name in rows["extras"]},
                           k=k, rate=rate, top=top, **options)
    result.store = str(path)
    if images is not None:
        result.sheets = write_sheets(
            sheets, outlier_sheets(result), images, title=f"Outliers of {path}",
            intro=f"The {len(result.top)} most unusual of {result.n_rows:,} images by the mean rank of "
                  f"{', '.join(result.scores)}; {result.n_flagged} flagged at rate {result.rate:g}.")
    return result


__all__ = ["OutliersResult", "find_outliers", "outlier_store", "outlier_sheets", "RATE", "TOP"]
