"""k-nearest-neighbour probe: k, metric and vote weighting chosen on training rows only."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from ._common import (FeaturePrep, ResultRecord, _balanced_accuracy, check_choices, check_fraction,
                      check_positive_ints, l2_normalize, selection_splits, small_data_single_thread,
                      supervised_inputs, timed)

METRICS = ("euclidean", "cosine", "centered_cosine")
WEIGHTS = ("uniform", "distance")


@dataclass
class KnnProbeResult(ResultRecord):
    """Outcome of :func:`knn_probe`; ``cv_scores`` maps ``"<metric>/<weights>/k=<k>"`` to validation accuracy."""

    probe = "knn"

    accuracy: float
    balanced_accuracy: float
    k: int
    metric: str
    weights: str
    cv_scores: dict
    selection: dict
    n_train: int
    n_test: int
    seed: int
    timings: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"accuracy": self.accuracy, "balanced_accuracy": self.balanced_accuracy}


def _geometry(metric: str, X_ref: np.ndarray, X_query: np.ndarray):
    """Map both sets so that Euclidean distance ranks neighbours as ``metric`` does (fitted on X_ref)."""
    if metric == "euclidean":
        return X_ref, X_query
    if metric == "cosine":
        return l2_normalize(X_ref), l2_normalize(X_query)
    prep = FeaturePrep("l2").fit(X_ref)  # centred on the reference rows, then cosine
    return prep.transform(X_ref), prep.transform(X_query)


def nearest_neighbours(X_ref: np.ndarray, X_query: np.ndarray, k: int, *, n_jobs: int | None = None):
    """Distances and indices of the ``k`` nearest rows of ``X_ref`` for every query row (brute force).

    Returns
    -------
    dist : ndarray of shape (n_query, k), nearest first
    idx : ndarray of shape (n_query, k), indices into X_ref
    """
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=min(k, X_ref.shape[0]), algorithm="brute", n_jobs=n_jobs).fit(X_ref)
    return nn.kneighbors(X_query)


def vote(neigh_labels: np.ndarray, neigh_dist: np.ndarray, k: int, weights: str, n_classes: int) -> np.ndarray:
    """Predicted class index per row from the first ``k`` columns of precomputed neighbour lists.

    Ties are broken towards the class whose neighbours are nearer (a tiny rank bonus).
    """
    lab, dist = neigh_labels[:, :k], neigh_dist[:, :k]
    w = np.ones_like(dist) if weights == "uniform" else 1.0 / (dist + 1e-12)
    w = w * (1.0 + 1e-9 * (k - np.arange(lab.shape[1])))  # nearer neighbours win exact ties
    scores = np.zeros((lab.shape[0], n_classes))
    rows = np.arange(lab.shape[0])
    for j in range(lab.shape[1]):
        scores[rows, lab[:, j]] += w[:, j]  # one entry per row per column: no repeated indices
    return scores.argmax(axis=1)


def knn_probe(X_train, y_train, X_test, y_test, *, ks=(1, 5, 10, 20, 50), metrics=("euclidean", "cosine"),
              weights=WEIGHTS, cv: int | None = None, val_fraction: float = 0.2,
              max_select_rows: int | None = 20_000, n_jobs: int | None = -1, seed: int = 0) -> KnnProbeResult:
    """k-NN classification probe with (k, metric, weights) chosen on the training rows.

    Neighbours are searched once per metric for the largest k; every smaller k and
    both weightings are evaluated from the same neighbour lists.

    Parameters
    ----------
    X_train : ndarray of shape (n_train, n_features)
    y_train : ndarray of shape (n_train,)
        Rows labelled -1 are ignored.
    X_test : ndarray of shape (n_test, n_features)
    y_test : ndarray of shape (n_test,)
        Used only for the final score.
    ks : sequence of int
        Neighbour counts to try.
    metrics : sequence of {'euclidean', 'cosine', 'centered_cosine'}
        'centered_cosine' centres on the mean of the reference (training) rows first.
    weights : sequence of {'uniform', 'distance'}
        Vote weighting to try.
    cv, val_fraction, max_select_rows, seed
        How the choice is made: see :func:`cvae_features.probes.linear_probe`.
    n_jobs : int or None
        Parallel jobs for the neighbour search.

    Returns
    -------
    KnnProbeResult
    """
    ks = tuple(sorted(set(check_positive_ints("ks", ks))))
    metrics = check_choices("metrics", metrics, METRICS)
    weights = check_choices("weights", weights, WEIGHTS)
    check_fraction("val_fraction", val_fraction)
    X_train, y_train, X_test, y_test = supervised_inputs(X_train, y_train, X_test, y_test)
    classes, y_idx = np.unique(y_train, return_inverse=True)
    timings: dict = {}

    with timed(timings, "select_s"):
        splits, selection = selection_splits(y_idx, cv=cv, val_fraction=val_fraction,
                                             max_rows=max_select_rows, seed=seed)
        smallest_ref = min(fit_rows.size for fit_rows, _ in splits)
        if ks[0] > smallest_ref:
            raise ConfigError(f"ks: the smallest k ({ks[0]}) exceeds the {smallest_ref} reference rows "
                              "available while choosing")
        usable_ks = tuple(k for k in ks if k <= smallest_ref)
        scores = {(m, w, k): [] for m in metrics for w in weights for k in usable_ks}
        for fit_rows, val_rows in splits:
            for m in metrics:
                ref, query = _geometry(m, X_train[fit_rows], X_train[val_rows])
                dist, idx = nearest_neighbours(ref, query, usable_ks[-1], n_jobs=n_jobs)
                neigh = y_idx[fit_rows][idx]
                for w in weights:
                    for k in usable_ks:
                        pred = vote(neigh, dist, k, w, classes.size)
                        scores[(m, w, k)].append(float(np.mean(pred == y_idx[val_rows])))
        mean_scores = {key: float(np.mean(v)) for key, v in scores.items()}
        best_metric, best_weights, best_k = max(mean_scores, key=mean_scores.get)

    with timed(timings, "predict_s"):
        ref, query = _geometry(best_metric, X_train, X_test)
        dist, idx = nearest_neighbours(ref, query, best_k, n_jobs=n_jobs)
        pred = classes[vote(y_idx[idx], dist, best_k, best_weights, classes.size)]

    selection = dict(selection, ks_tried=list(usable_ks))
    return KnnProbeResult(
        accuracy=float(np.mean(pred == y_test)),
        balanced_accuracy=_balanced_accuracy(y_test, pred),
        k=int(best_k), metric=best_metric, weights=best_weights,
        cv_scores={f"{m}/{w}/k={k}": s for (m, w, k), s in mean_scores.items()},
        selection=selection, n_train=int(y_train.size), n_test=int(y_test.size), seed=int(seed), timings=timings)


# wrapped after the definition, not decorated: mutmut (benchmarks/mutation.py) leaves decorated functions out
knn_probe = small_data_single_thread(knn_probe)
