"""Few-label curves: accuracy with k labelled training rows per class, supervised and semi-supervised.

Draws are stratified and seeded: for each seed every class's training rows are shuffled
once and the first k are labelled, so the draws are nested (the 1-label set is part of the
5-label set of the same seed). Only training rows are ever drawn or used as unlabelled rows;
the test rows are classified and scored at the end.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from ._common import (DataTooSmall, FeaturePrep, ResultRecord, check_choices, check_features, check_labels,
                      check_positive_ints, check_same_width, small_data_single_thread, timed)
from .registry import fewshot_methods, get_fewshot_method, register_fewshot_method

METHODS = ("logistic", "knn", "label_spreading", "self_training", "m2")  # the built-in ones; see fewshot_methods()
DEFAULT_METHODS = METHODS[:4]  # run when none are named; m2 trains networks (about a minute a fit on 2 cores)


def draw_labelled(y_train, labels_per_class: int, seed: int) -> np.ndarray:
    """Indices of exactly ``labels_per_class`` training rows of every known class (sorted, seeded).

    Parameters
    ----------
    y_train : ndarray of shape (n_train,)
        Training labels; -1 (unknown) rows are never drawn.
    labels_per_class : int
    seed : int

    Raises
    ------
    ConfigError
        When a class has fewer than ``labels_per_class`` training rows.
    """
    y_train = np.asarray(y_train)
    k = check_positive_ints("labels_per_class", labels_per_class)[0]
    rng = np.random.default_rng(seed)
    picked = []
    for cls in np.unique(y_train[y_train >= 0]):
        rows = np.flatnonzero(y_train == cls)
        if rows.size < k:
            raise ConfigError(f"labels_per_class: {k} labels per class requested but class {cls} has only "
                              f"{rows.size} training rows")
        picked.append(rng.permutation(rows)[:k])  # one permutation per class and seed: nested draws
    return np.sort(np.concatenate(picked))


@dataclass
class FewShotResult(ResultRecord):
    """Outcome of :func:`fewshot_curve`.

    ``curves[method][str(k)]`` holds ``mean``, ``std`` (population, over seeds), ``accuracies``
    (one per seed, in ``seeds`` order), ``labelled_per_class`` (actual counts, ``{class: n}``),
    ``n_unlabelled`` (rows used by semi-supervised methods, per seed) and ``seconds``.
    ``predictions[method][str(k)]`` (one array of predicted test labels per seed, for the test
    rows with a known label) stays out of ``to_dict``.
    """

    probe = "fewshot"
    _private_fields = ("predictions",)

    labels_per_class: list
    seeds: list
    methods: list
    curves: dict
    settings: dict
    n_train: int
    n_test: int
    timings: dict = field(default_factory=dict)
    predictions: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {f"{m}@{k}": (c["mean"], c["std"]) for m, per_k in self.curves.items() for k, c in per_k.items()}


class _SymmetricKnnKernel:
    """k-NN affinity for LabelSpreading that links i and j when either is among the other's neighbours.

    scikit-learn's built-in 'knn' kernel is directed: a labelled row that is nobody's
    neighbour spreads its label nowhere, and a whole cluster can stay unlabelled.
    Called with (X, X) it returns the symmetric (n, n) graph; with (X, Y) the (n_X, n_Y)
    links from each row of Y to its neighbours in X (used by ``predict``).
    """

    def __init__(self, n_neighbors: int, n_jobs: int | None = None):
        self.n_neighbors = n_neighbors
        self.n_jobs = n_jobs

    def __call__(self, X, Y):
        from sklearn.neighbors import NearestNeighbors

        if Y is X:
            k = min(self.n_neighbors + 1, X.shape[0])  # +1: each row finds itself first
            graph = NearestNeighbors(n_neighbors=k, n_jobs=self.n_jobs).fit(X).kneighbors_graph(X)
            graph = graph.maximum(graph.T).tolil()
            graph.setdiag(0)
            return graph.tocsr()
        k = min(self.n_neighbors, X.shape[0])
        return NearestNeighbors(n_neighbors=k, n_jobs=self.n_jobs).fit(X).kneighbors_graph(Y).T.tocsr()


def _logistic_predict(Z_lab, y_lab, Z_unl, Z_test, params):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=params["C"], max_iter=params["max_iter"]).fit(Z_lab, y_lab).predict(Z_test)


def _knn_predict(Z_lab, y_lab, Z_unl, Z_test, params):
    from sklearn.neighbors import KNeighborsClassifier

    k = min(params["knn_neighbors"], y_lab.size)
    return KNeighborsClassifier(n_neighbors=k, n_jobs=params["n_jobs"]).fit(Z_lab, y_lab).predict(Z_test)


def _label_spreading_predict(Z_lab, y_lab, Z_unl, Z_test, params):
    """Fit LabelSpreading on labelled + unlabelled rows and classify the test rows.

    A test row whose neighbours received no label mass (a component without any
    labelled row) falls back to its nearest labelled row.
    """
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.semi_supervised import LabelSpreading

    X = np.vstack([Z_lab, Z_unl])
    y = np.concatenate([y_lab, np.full(Z_unl.shape[0], -1)])
    kernel = _SymmetricKnnKernel(params["spreading_neighbors"], params["n_jobs"])
    model = LabelSpreading(kernel=kernel, alpha=params["spreading_alpha"], max_iter=1000, tol=1e-4).fit(X, y)
    with np.errstate(invalid="ignore", divide="ignore"):
        proba = model.predict_proba(Z_test)
    pred = model.classes_[np.nan_to_num(proba, nan=-1.0).argmax(axis=1)]
    lost = ~np.isfinite(proba).all(axis=1)
    if lost.any():
        pred[lost] = KNeighborsClassifier(n_neighbors=1).fit(Z_lab, y_lab).predict(Z_test[lost])
    return pred


def _self_training_predict(Z_lab, y_lab, Z_unl, Z_test, params, *, rounds=5, share=0.1):
    """Class-balanced self-training around logistic regression; returns test predictions.

    Each round pseudo-labels, for every class, the unlabelled rows most confidently
    predicted as that class (``share`` of the unlabelled rows per round, split evenly
    over classes). Balancing matters: picking the most confident rows overall (sklearn's
    ``k_best``) lets one class swallow the pseudo-labels when labels are few.
    """
    from sklearn.linear_model import LogisticRegression

    C, max_iter = params["C"], params["max_iter"]
    classes = np.unique(y_lab)
    per_class = max(1, int(share * Z_unl.shape[0]) // classes.size)
    X, y = Z_lab, y_lab
    remaining = np.arange(Z_unl.shape[0])
    model = LogisticRegression(C=C, max_iter=max_iter).fit(X, y)
    for _ in range(rounds):
        if remaining.size == 0:
            break
        proba = model.predict_proba(Z_unl[remaining])
        best, conf = proba.argmax(axis=1), proba.max(axis=1)
        picked = []
        for ci in range(classes.size):
            rows = np.flatnonzero(best == ci)
            picked.append(rows[np.argsort(-conf[rows], kind="stable")[:per_class]])
        picked = np.concatenate(picked)
        X = np.vstack([X, Z_unl[remaining[picked]]])
        y = np.concatenate([y, classes[best[picked]]])
        remaining = np.delete(remaining, picked)
        model = LogisticRegression(C=C, max_iter=max_iter).fit(X, y)
    return model.predict(Z_test)


def _m2_predict(Z_lab, y_lab, Z_unl, Z_test, params):
    """Kingma et al.'s M2 fitted on the labelled and unlabelled rows (M1+M2: the rows are M1's codes)."""
    from ..semisup import fit_m2

    return fit_m2(Z_lab, y_lab, Z_unl, params["m2"], seed=params["seed"]).predict(Z_test)


register_fewshot_method("logistic", _logistic_predict, uses_unlabelled=False,
                        description="logistic regression on the labelled rows (fixed C)")
register_fewshot_method("knn", _knn_predict, uses_unlabelled=False,
                        description="k-NN (cosine) among the labelled rows")
register_fewshot_method("label_spreading", _label_spreading_predict, uses_unlabelled=True,
                        description="LabelSpreading over a symmetric k-NN graph of labelled and unlabelled rows")
register_fewshot_method("self_training", _self_training_predict, uses_unlabelled=True,
                        description="class-balanced self-training around logistic regression")
register_fewshot_method("m2", _m2_predict, uses_unlabelled=True, default=False,
                        description="Kingma's M2 semi-supervised VAE on the features (M1+M2); slow, run when named")


def _m2_config(m2):
    from ..semisup import M2Config

    if m2 is None or isinstance(m2, M2Config):
        return m2 or M2Config()
    if isinstance(m2, dict):
        unknown = sorted(set(m2) - set(M2Config.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"m2: unknown setting(s) {unknown}; known are {sorted(M2Config.__dataclass_fields__)}")
        return M2Config(**m2)
    raise ConfigError(f"m2: expected an M2Config or a dict of its settings, got {type(m2).__name__}")


def fewshot_curve(X_train, y_train, X_test, y_test, *, labels_per_class=(1, 5, 10, 100), seeds=(0, 1, 2, 3, 4),
                  methods=None, C: float = 1.0, knn_neighbors: int = 1, spreading_neighbors: int = 10,
                  spreading_alpha: float = 0.9, max_unlabelled: int = 10_000, max_iter: int = 1000,
                  n_jobs: int | None = None, m2=None) -> FewShotResult:
    """Test accuracy as a function of the number of labelled training rows per class.

    Features are centred on the mean of all training rows (no labels involved) and
    L2-normalised; standardising is avoided on purpose, since with few labels it
    amplifies noise dimensions.

    Methods
    -------
    'logistic' : LogisticRegression on the labelled rows with a fixed ``C`` (no CV is possible
        with one label a class); on unit-norm rows a moderate C keeps it close to a
        nearest-class-mean rule, which is the robust choice at few labels.
    'knn' : ``knn_neighbors``-NN (cosine) among the labelled rows (capped at the number labelled).
    'label_spreading' : sklearn LabelSpreading over a symmetric k-NN graph (``spreading_neighbors``)
        of the labelled rows plus up to ``max_unlabelled`` other training rows (seeded); test rows
        are classified by its ``predict`` (vote of their neighbours' label distributions).
    'self_training' : class-balanced self-training around the same logistic regression: each of
        5 rounds pseudo-labels the most confident tenth of the unlabelled rows, split evenly over
        the classes (sklearn's SelfTrainingClassifier picks the most confident rows overall, and
        with few labels one class then takes them all; a fixed probability threshold is rarely
        passed on unit-norm features).
    'm2' : Kingma et al.'s M2 semi-supervised VAE (:mod:`cvae_features.semisup`) fitted on the labelled
        rows and the same unlabelled rows, seeded by the draw's seed; settings ``m2`` (an
        :class:`~cvae_features.semisup.M2Config` or a dict of its fields; default its defaults).
        Not run unless named: it trains three networks per draw.
    Any method added with :func:`~cvae_features.probes.registry.register_fewshot_method` runs too.

    Parameters
    ----------
    X_train : ndarray of shape (n_train, n_features)
    y_train : ndarray of shape (n_train,)
        -1 marks an unknown label: such rows are never drawn but may serve as unlabelled rows.
    X_test : ndarray of shape (n_test, n_features)
    y_test : ndarray of shape (n_test,)
        Used only to score; rows labelled -1 are ignored.
    labels_per_class : sequence of int
    seeds : sequence of int or int
        The seeds themselves; an int n means seeds 0..n-1.
    methods : sequence of str or None
        Registered method names; None: every registered method that runs by default, in registration
        order (all but 'm2' among the built-in ones).

    Returns
    -------
    FewShotResult

    Raises
    ------
    ConfigError
        When a class has fewer training rows than the largest ``labels_per_class``.
    """
    ks = tuple(sorted(set(check_positive_ints("labels_per_class", labels_per_class))))
    seeds = tuple(range(seeds)) if np.isscalar(seeds) else tuple(int(s) for s in seeds)
    if not seeds:
        raise ConfigError("seeds: expected at least one seed, got none")
    methods = check_choices("methods", fewshot_methods(default_only=True) if methods is None else methods,
                            fewshot_methods())
    if not C > 0:
        raise ConfigError(f"C: expected a positive number, got {C}")
    if not 0 < spreading_alpha < 1:
        raise ConfigError(f"spreading_alpha: expected a number in (0, 1), got {spreading_alpha}")
    check_positive_ints("knn_neighbors", knn_neighbors)
    check_positive_ints("spreading_neighbors", spreading_neighbors)
    m2 = _m2_config(m2) if m2 is not None or "m2" in methods else None
    X_train = check_features(X_train, "X_train")
    X_test = check_features(X_test, "X_test")
    check_same_width(X_train, X_test)
    y_train = check_labels(y_train, X_train.shape[0], "y_train", allow_unknown=True)
    y_test = check_labels(y_test, X_test.shape[0], "y_test", allow_unknown=True)
    n_classes = np.unique(y_train[y_train >= 0]).size
    if n_classes < 2:
        raise DataTooSmall(f"the training rows hold {n_classes} class(es) with known labels; at least 2 are needed")
    keep = y_test >= 0
    if not keep.any():
        raise ConfigError("y_test: expected at least one test row with a known label, got none")
    X_test, y_test = X_test[keep], y_test[keep]
    counts = np.bincount(y_train[y_train >= 0])
    smallest = int(counts[counts > 0].min())
    if ks[-1] > smallest:
        cls = int(np.flatnonzero(counts == smallest)[0])
        raise ConfigError(f"labels_per_class: {ks[-1]} labels per class requested but class {cls} has only "
                          f"{smallest} training rows")

    specs = {m: get_fewshot_method(m) for m in methods}
    params = {"C": float(C), "max_iter": int(max_iter), "knn_neighbors": int(knn_neighbors),
              "spreading_neighbors": int(spreading_neighbors), "spreading_alpha": float(spreading_alpha),
              "n_jobs": n_jobs, "m2": m2}
    prep = FeaturePrep("l2").fit(X_train)  # label-free statistics of the training rows only
    Ztrain, Ztest = prep.transform(X_train), prep.transform(X_test)
    curves = {m: {} for m in methods}
    predictions = {m: {} for m in methods}
    timings: dict = {}

    for k in ks:
        per = {m: {"accuracies": [], "seconds": 0.0, "predictions": []} for m in methods}
        counts_per_seed, unlab_per_seed = [], []
        for seed in seeds:
            lab = draw_labelled(y_train, k, seed)
            ylab = y_train[lab]
            cls, cnt = np.unique(ylab, return_counts=True)
            counts_per_seed.append({int(c): int(n) for c, n in zip(cls, cnt)})
            rest = np.setdiff1d(np.arange(y_train.size), lab)
            rng = np.random.default_rng([seed, k])
            unl = np.sort(rng.choice(rest, min(max_unlabelled, rest.size), replace=False))
            unlab_per_seed.append(int(unl.size))
            Zlab, Zunl = Ztrain[lab], Ztrain[unl]
            params["seed"] = seed
            for m, spec in specs.items():
                with timed(per[m], "_t"), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # convergence chatter on tiny labelled sets
                    pred = np.asarray(spec.predict(Zlab, ylab, Zunl if spec.uses_unlabelled else None, Ztest,
                                                   params))
                if pred.shape != y_test.shape:
                    raise ConfigError(f"few-label method {m!r}: predict returned shape {pred.shape}, "
                                      f"expected {y_test.shape} (one label per test row)")
                per[m]["accuracies"].append(float(np.mean(pred == y_test)))
                per[m]["predictions"].append(np.asarray(pred))
                per[m]["seconds"] += per[m].pop("_t")
        for m in methods:
            accs = np.asarray(per[m]["accuracies"])
            curves[m][str(k)] = {"mean": float(accs.mean()), "std": float(accs.std()),
                                 "accuracies": accs.tolist(), "seeds": list(seeds),
                                 "labelled_per_class": counts_per_seed,
                                 "n_unlabelled": unlab_per_seed if specs[m].uses_unlabelled else None,
                                 "seconds": round(per[m]["seconds"], 4)}
            timings[m] = round(timings.get(m, 0.0) + per[m]["seconds"], 4)
            predictions[m][str(k)] = per[m]["predictions"]

    settings = {"preprocessing": "l2 (centred on all training rows, unit norm)", "C": float(C),
                "knn_neighbors": int(knn_neighbors), "knn_metric": "cosine",
                "spreading_neighbors": int(spreading_neighbors), "spreading_alpha": float(spreading_alpha),
                "spreading_graph": "symmetric k-NN", "max_unlabelled": int(max_unlabelled),
                "self_training": "class-balanced, 5 rounds of unlabelled/10 pseudo-labels",
                "draws": "per seed and class one permutation of the training rows; first k labelled (nested)"}
    if "m2" in methods:
        settings["m2"] = m2.to_dict()
    return FewShotResult(labels_per_class=list(ks), seeds=list(seeds), methods=list(methods), curves=curves,
                         settings=settings, n_train=int(X_train.shape[0]), n_test=int(y_test.size), timings=timings,
                         predictions=predictions)


# wrapped after the definition, not decorated: mutmut (benchmarks/mutation.py) leaves decorated functions out
fewshot_curve = small_data_single_thread(fewshot_curve)
