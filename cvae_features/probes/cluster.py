"""Clustering probe: k-means, a diagonal Gaussian mixture and UMAP + a full Gaussian mixture (the N2D recipe) on the
features, scored against labels when known; and 'prior', the clusters of a mixture-prior model (conv-vade) read from
its prior, argmax_c p(c | z = μ)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, MissingExtraError
from ._common import (PREPROCESSINGS, DataTooSmall, FeaturePrep, ResultRecord, check_choices, check_features,
                      check_labels, small_data_single_thread, timed)

METHODS = ("kmeans", "gmm", "umap-gmm", "prior")
DEFAULT_METHODS = ("kmeans", "gmm")  # umap-gmm needs the umap extra and costs seconds to minutes: asked for by name
UMAP_EXTRA = 'pip install "cvae-features[umap]"'
# N2D (McConville et al. 2019): UMAP to as many dimensions as clusters, 20 neighbours, min_dist 0, then a
# full-covariance Gaussian mixture. Fixed by the recipe, so no label ever chooses them.
UMAP_NEIGHBOURS = 20
UMAP_MIN_DIST = 0.0
MIN_ROWS_PER_CLUSTER = 2  # fewer rows than this per cluster and the clusters are mostly forced singletons


def cluster_accuracy(y_true, y_pred) -> float:
    """Clustering accuracy: the best one-to-one matching of clusters to classes (Hungarian algorithm).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Class labels.
    y_pred : array-like of shape (n_samples,)
        Cluster ids (any integers; the number of clusters may differ from the number of classes,
        unmatched clusters count as errors).

    Returns
    -------
    float
        Fraction of rows whose cluster is matched to their class, in [0, 1].
    """
    from scipy.optimize import linear_sum_assignment

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ConfigError(f"y_pred: expected the shape of y_true {y_true.shape}, got {y_pred.shape}")
    if y_true.size == 0:
        raise ConfigError("y_true: expected at least one row, got none")
    classes, t = np.unique(y_true, return_inverse=True)
    clusters, p = np.unique(y_pred, return_inverse=True)
    counts = np.zeros((clusters.size, classes.size), dtype=np.int64)
    np.add.at(counts, (p, t), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / y_true.size)


def import_umap():
    """The ``umap`` module (umap-learn), or a one-line MissingExtraError naming the extra that installs it."""
    try:
        import umap
    except ImportError as err:
        raise MissingExtraError(f"the umap-gmm cluster method needs umap-learn, which is not installed ({err}): "
                                f"{UMAP_EXTRA}") from None
    return umap


def check_methods(methods, name: str = "methods") -> tuple:
    """``methods`` as a tuple of known cluster methods (ConfigError otherwise); umap-learn checked when asked for."""
    methods = check_choices(name, methods, METHODS)
    if "umap-gmm" in methods:
        import_umap()
    return methods


class UmapGmm:
    """The N2D recipe: a UMAP embedding of the rows (``n_components`` = clusters, 20 neighbours, min_dist 0,
    Euclidean on the preprocessed rows, seeded), then a full-covariance ``GaussianMixture`` on the embedding.

    ``fit(X)`` keeps the embedding (``embedding_``) and the mixture (``mixture_``); ``predict`` of the fitted
    rows reads the embedding, of other rows embeds them with UMAP's ``transform`` first.
    """

    def __init__(self, n_clusters: int, *, n_neighbors: int = UMAP_NEIGHBOURS, min_dist: float = UMAP_MIN_DIST,
                 seed: int = 0):
        self.n_clusters, self.n_neighbors, self.min_dist, self.seed = n_clusters, n_neighbors, min_dist, seed

    def fit(self, X: np.ndarray) -> "UmapGmm":
        from sklearn.mixture import GaussianMixture

        umap = import_umap()
        n = X.shape[0]
        # tiny inputs: fewer neighbours than rows; a spectral start needs more rows than dimensions
        self.umap_ = umap.UMAP(n_components=self.n_clusters, n_neighbors=max(2, min(self.n_neighbors, n - 1)),
                               min_dist=self.min_dist, random_state=self.seed, n_jobs=1,
                               init="spectral" if n > self.n_clusters + 1 else "random")
        self._fitted = X
        self.embedding_ = self.umap_.fit_transform(X)
        self.mixture_ = GaussianMixture(self.n_clusters, covariance_type="full", reg_covar=1e-6,
                                        random_state=self.seed).fit(self.embedding_)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        embedded = self.embedding_ if X is self._fitted else self.umap_.transform(X)
        return self.mixture_.predict(embedded)


def fit_clusters(Xp: np.ndarray, n_clusters: int, method: str = "kmeans", *, n_init: int = 10, seed: int = 0):
    """The probe's clusterer fitted on preprocessed rows ``Xp`` of shape (n_samples, n_features).

    'kmeans': ``KMeans`` with ``n_init`` seeded restarts (centres in ``cluster_centers_``);
    'gmm': a diagonal-covariance ``GaussianMixture`` (one start from k-means; centres in ``means_``)
    whose ``reg_covar`` is :func:`gmm_reg_covar` (1e-4 of the rows' total variance);
    'umap-gmm': :class:`UmapGmm` (needs umap-learn). All have ``predict``. Convergence and UMAP's warnings are silenced: on tiny data they say nothing useful.
    """
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    check_choices("method", (method,), METHODS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "kmeans":
            return KMeans(n_clusters, n_init=n_init, random_state=seed).fit(Xp)
        if method == "umap-gmm":
            return UmapGmm(n_clusters, seed=seed).fit(Xp)
        return GaussianMixture(n_clusters, covariance_type="diag", reg_covar=gmm_reg_covar(Xp),
                               random_state=seed).fit(Xp)


def prior_assignments(prior, X: np.ndarray) -> np.ndarray:
    """``prior.assign`` of the rows ``X`` (codes μ, shape (n_samples, dim)): int64 cluster ids of shape (n_samples,)."""
    import torch

    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[1] != getattr(prior, "dim", X.shape[1]):
        raise ConfigError(f"the 'prior' cluster method: rows of width {X.shape[1:]} for a prior over codes of "
                          f"width {prior.dim}")
    param = next(iter(prior.parameters()), None) if hasattr(prior, "parameters") else None
    with torch.no_grad():
        codes = torch.from_numpy(X)
        if param is not None:
            codes = codes.to(param.device)
        return prior.assign(codes).cpu().numpy().astype(np.int64)


def gmm_reg_covar(Xp: np.ndarray) -> float:
    """The diagonal GMM's variance floor: 1e-4 of the rows' total variance (sum over columns).

    On the probe's default rows (centred, unit norm; total variance about 1) this is about the
    fixed 1e-4 it replaces; a fixed floor swamped features of small scale (rows varying ~1e-5
    per column all fell into one component) and meant nothing on large ones. Rows without
    variance (all alike) keep 1e-4.
    """
    total = float(np.var(Xp, axis=0).sum())
    return 1e-4 * total if total > 0 else 1e-4


@dataclass
class ClusterProbeResult(ResultRecord):
    """Outcome of :func:`cluster_probe`.

    ``methods`` maps each method ('kmeans', 'gmm', 'umap-gmm', 'prior') to a dict with
    ``cluster_sizes`` and ``silhouette`` (no labels needed) and, when labels were given,
    ``acc`` (Hungarian), ``nmi`` and ``ari`` measured on the labelled rows. ``assignments`` (per-row cluster ids) stays out of ``to_dict``.
    """

    probe = "cluster"
    _private_fields = ("assignments",)

    n_clusters: int
    preprocessing: str
    methods: dict
    n_rows: int
    n_labelled: int
    silhouette_rows: int
    seed: int
    timings: dict = field(default_factory=dict)
    assignments: dict = field(default_factory=dict)

    def summary(self) -> dict:
        out = {}
        for name, m in self.methods.items():
            for key in ("acc", "nmi", "ari", "silhouette"):
                if m.get(key) is not None:
                    out[f"{name}_{key}"] = m[key]
        return out


def cluster_probe(X, y=None, *, n_clusters: int | None = None, methods=DEFAULT_METHODS, preprocessing: str = "l2",
                  n_init: int = 10, max_silhouette_rows: int = 5000, seed: int = 0, prior=None) -> ClusterProbeResult:
    """Cluster the given features and measure the clusters.

    The protocol clusters the test features; labels (when given) only score the result.
    Preprocessing uses no labels.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    y : ndarray of shape (n_samples,) or None
        Class labels for scoring (-1 = unknown: such rows are clustered but not scored).
    n_clusters : int or None
        Default: the number of distinct known labels in ``y`` (required when ``y`` is None).
        ``X`` must hold at least 2 rows per cluster (:class:`DataTooSmall` otherwise).
    methods : sequence of {'kmeans', 'gmm', 'umap-gmm'}
        Default ('kmeans', 'gmm'): k-means (``n_init`` seeded restarts) and a GaussianMixture with
        diagonal covariances. 'umap-gmm': the N2D recipe (:class:`UmapGmm`; umap-learn, the
        ``umap`` extra), its settings fixed by the recipe. 'prior': each row's component under
        ``prior`` (``prior.assign(X)``, on the rows as given, without preprocessing); its
        clusters are the prior's components, however many ``n_clusters`` says.
    preprocessing : {'l2', 'standardize', 'none'}
        Default 'l2': centre, then scale rows to unit norm (cosine geometry).
    n_init : int
        Restarts of k-means (the GMM starts from k-means, one restart).
    max_silhouette_rows : int
        The silhouette is computed on a seeded subsample of at most this many rows (quadratic cost).
    seed : int
        Seeds k-means, the GMM and the silhouette subsample.
    prior : MixturePrior or None
        The mixture prior of the model whose codes ``X`` are (:class:`~cvae_features.priors.MixturePrior`,
        or anything with ``assign(mu) -> component ids`` and ``n_components``, the number of
        components, which sizes its cluster counts); needed by the 'prior' method only.

    Returns
    -------
    ClusterProbeResult
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

    methods = check_methods(methods)  # before any work
    if "prior" in methods and not callable(getattr(prior, "assign", None)):
        raise ConfigError("the 'prior' cluster method needs the mixture prior of the model that made the features "
                          f"(prior=model.prior of a conv-vade model), got {prior!r}")
    check_choices("preprocessing", (preprocessing,), PREPROCESSINGS)
    X = check_features(X, "X")
    labelled = None
    if y is not None:
        y = check_labels(y, X.shape[0], "y", allow_unknown=True)
        labelled = y >= 0
        if not labelled.any():
            y, labelled = None, None
    if n_clusters is None:
        if y is None:
            raise ConfigError("n_clusters: expected a number of clusters when no labels are given, got None")
        n_clusters = int(np.unique(y[labelled]).size)
        if n_clusters < 2:
            raise DataTooSmall(f"the rows hold {n_clusters} labelled class(es), so there is nothing to cluster "
                               "into; at least 2 classes (or an explicit n_clusters) are needed")
    if isinstance(n_clusters, bool) or not float(n_clusters).is_integer() or int(n_clusters) < 2:
        raise ConfigError(f"n_clusters: expected an integer >= 2, got {n_clusters!r}")
    n_clusters = int(n_clusters)
    if X.shape[0] < MIN_ROWS_PER_CLUSTER * n_clusters:
        raise DataTooSmall(f"{X.shape[0]} rows are too few for {n_clusters} clusters; clustering needs at least "
                           f"{MIN_ROWS_PER_CLUSTER} rows per cluster ({MIN_ROWS_PER_CLUSTER * n_clusters})")

    Xp = FeaturePrep(preprocessing).fit_transform(X)
    rng = np.random.default_rng(seed)
    sil_rows = (np.arange(X.shape[0]) if X.shape[0] <= max_silhouette_rows
                else np.sort(rng.choice(X.shape[0], max_silhouette_rows, replace=False)))
    timings: dict = {}
    results, assignments = {}, {}
    for name in methods:
        with timed(timings, f"{name}_s"):
            pred = (prior_assignments(prior, X) if name == "prior"
                    else fit_clusters(Xp, n_clusters, name, n_init=n_init, seed=seed).predict(Xp))
        sizes = np.bincount(pred, minlength=prior.n_components if name == "prior" else n_clusters)
        entry = {"cluster_sizes": sizes.tolist(), "n_empty": int((sizes == 0).sum()),
                 # the silhouette is defined for 2 .. n-1 distinct clusters among the rows it is computed on
                 "silhouette": (float(silhouette_score(Xp[sil_rows], pred[sil_rows]))
                                if 2 <= np.unique(pred[sil_rows]).size < sil_rows.size else None)}
        if y is not None:
            t, p = y[labelled], pred[labelled]
            entry.update(acc=cluster_accuracy(t, p), nmi=float(normalized_mutual_info_score(t, p)),
                         ari=float(adjusted_rand_score(t, p)))
        results[name] = entry
        assignments[name] = pred
    return ClusterProbeResult(
        n_clusters=n_clusters, preprocessing=preprocessing, methods=results, n_rows=int(X.shape[0]),
        n_labelled=int(labelled.sum()) if labelled is not None else 0, silhouette_rows=int(sil_rows.size),
        seed=int(seed), timings=timings, assignments=assignments)


# wrapped after the definition, not decorated: mutmut (benchmarks/mutation.py) leaves decorated functions out
cluster_probe = small_data_single_thread(cluster_probe)
