"""Probes on generated data: known answers, honest selection (no test-label leakage), clear errors."""

import json
import warnings

import numpy as np
import pytest

from cvae_features.errors import ConfigError
from cvae_features.probes import (DataTooSmall, FeaturePrep, anomaly_probe, anomaly_scores, cluster_accuracy,
                                  cluster_probe, draw_labelled, fewshot_curve, knn_probe, linear_probe,
                                  one_class_protocol)
from cvae_features.probes.fewshot import DEFAULT_METHODS, METHODS

TINY_M2 = {"hidden": 16, "latent_dim": 2, "steps": 30, "batch_size": 32, "labelled_batch": 16, "warmup_steps": 10}

SMALL = {"Cs": (0.1, 1.0)}
SMALL_KNN = {"ks": (1, 5)}


def blobs(n, *, d=6, k=3, sep=12.0, seed=0):
    """Well-separated Gaussian blobs: features (n, d) and labels (n,) in 0..k-1, every class present."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * sep
    y = np.arange(n) % k
    rng.shuffle(y)
    return centres[y] + rng.normal(size=(n, d)), y


def noisy(n, *, d=8, k=3, seed=0):
    """Overlapping classes (the choice of hyper-parameters is not trivial)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    X = rng.normal(size=(n, d)) * np.linspace(0.2, 5, d)
    X[:, 0] = rng.normal(size=n) + 1.5 * y
    return X, y


@pytest.fixture(scope="module")
def sep_data():
    X, y = blobs(360)
    return X[:240], y[:240], X[240:], y[240:]


# -- separable and random --------------------------------------------------------------

def test_separable_blobs_are_solved(sep_data):
    Xtr, ytr, Xte, yte = sep_data
    lin = linear_probe(Xtr, ytr, Xte, yte, **SMALL)
    assert lin.accuracy == 1.0 and lin.balanced_accuracy == 1.0 and lin.macro_f1 == 1.0
    assert np.trace(lin.confusion_matrix) == len(yte) == lin.n_test
    assert lin.preprocessing in ("standardize", "l2", "none") and lin.C in (0.1, 1.0)
    assert set(lin.cv_scores) == {f"{p}/C={c:g}" for p in ("standardize", "l2", "none") for c in (0.1, 1.0)}
    knn = knn_probe(Xtr, ytr, Xte, yte, **SMALL_KNN)
    assert knn.accuracy == 1.0 and knn.k in (1, 5) and knn.metric in ("euclidean", "cosine")
    clu = cluster_probe(Xte, yte, seed=0)
    assert clu.n_clusters == 3
    for name in ("kmeans", "gmm"):
        m = clu.methods[name]
        assert m["acc"] == 1.0 and m["nmi"] > 0.95 and m["ari"] > 0.95
        assert sorted(m["cluster_sizes"]) == sorted(np.bincount(yte).tolist())
        assert m["silhouette"] > 0.5


def test_random_labels_give_chance_accuracy():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(900, 5))
    y = rng.integers(0, 3, 900)
    Xtr, ytr, Xte, yte = X[:450], y[:450], X[450:], y[450:]
    assert abs(linear_probe(Xtr, ytr, Xte, yte, **SMALL).accuracy - 1 / 3) < 0.08
    assert abs(knn_probe(Xtr, ytr, Xte, yte, **SMALL_KNN).accuracy - 1 / 3) < 0.08
    few = fewshot_curve(Xtr, ytr, Xte, yte, labels_per_class=(5,), seeds=2, methods=("logistic", "knn"))
    for method in ("logistic", "knn"):
        assert abs(few.curves[method]["5"]["mean"] - 1 / 3) < 0.1


def test_cluster_accuracy_hand_example():
    y_true = [0, 0, 1, 1, 2, 2]
    assert cluster_accuracy(y_true, [2, 2, 0, 0, 1, 1]) == 1.0  # a pure permutation
    # best matching: cluster 1 -> class 0 (2 rows), cluster 0 -> class 1 (1), cluster 2 -> class 2 (1)
    assert cluster_accuracy(y_true, [1, 1, 1, 0, 0, 2]) == pytest.approx(4 / 6)
    # more clusters than classes: the unmatched cluster counts as wrong
    assert cluster_accuracy([0, 0, 1, 1], [5, 5, 7, 9]) == pytest.approx(3 / 4)
    with pytest.raises(ConfigError, match="y_pred"):
        cluster_accuracy([0, 1], [0, 1, 1])


def test_gmm_clusters_do_not_depend_on_the_scale_of_the_features():
    from cvae_features.probes.cluster import fit_clusters, gmm_reg_covar

    X, _ = blobs(90, d=6, sep=3.0, seed=5)
    base = fit_clusters(X, 3, "gmm", seed=0).predict(X)
    assert sorted(np.bincount(base)) == [30, 30, 30]
    for scale in (1e-5, 1e6):  # a fixed variance floor swamped the small scale: one component took every row
        np.testing.assert_array_equal(fit_clusters(X * scale, 3, "gmm", seed=0).predict(X * scale), base)
    cols = np.column_stack([np.r_[0.0, 2.0].repeat(5), np.r_[1.0, 7.0].repeat(5)])  # variances 1 and 9
    assert gmm_reg_covar(cols) == pytest.approx(1e-3)
    assert gmm_reg_covar(np.ones((6, 3))) == 1e-4


def test_cluster_probe_without_labels_reports_sizes_and_silhouette(sep_data):
    _, _, Xte, _ = sep_data
    res = cluster_probe(Xte, None, n_clusters=3, methods=("kmeans",), max_silhouette_rows=50, seed=3)
    m = res.methods["kmeans"]
    assert "acc" not in m and sum(m["cluster_sizes"]) == len(Xte) and res.silhouette_rows == 50
    assert res.summary() == {"kmeans_silhouette": m["silhouette"]}
    assert "assignments" not in res.to_dict() and res.assignments["kmeans"].shape == (len(Xte),)
    with pytest.raises(ConfigError, match="n_clusters"):
        cluster_probe(Xte, None)


# -- honesty: test labels never choose anything ---------------------------------------

def _choices(res):
    keys = ("preprocessing", "C", "k", "metric", "weights", "cv_scores", "selection")
    return {k: getattr(res, k) for k in keys if hasattr(res, k)}


@pytest.mark.parametrize("probe, kwargs", [(linear_probe, SMALL), (knn_probe, {"ks": (1, 5, 15)})])
def test_no_test_label_leakage(probe, kwargs):
    X, y = noisy(600)
    Xtr, ytr, Xte, yte = X[:400], y[:400], X[400:], y[400:]
    base = probe(Xtr, ytr, Xte, yte, seed=0, **kwargs)
    permuted = probe(Xtr, ytr, Xte, np.random.default_rng(5).permutation(yte), seed=0, **kwargs)
    other_X = probe(Xtr, ytr, np.random.default_rng(6).normal(size=Xte.shape), yte, seed=0, **kwargs)
    assert _choices(base) == _choices(permuted) == _choices(other_X)
    assert 0.4 < base.accuracy < 1.0  # the task is neither trivial nor hopeless
    assert base.accuracy != permuted.accuracy  # the test labels do count, in the final score only


def test_linear_probe_cv_folds_and_record():
    X, y = noisy(300)
    res = linear_probe(X[:200], y[:200], X[200:], y[200:], cv=3, preprocessings=("l2", "none"), Cs=(1.0,))
    assert res.selection["selection"] == "3-fold stratified CV" and res.selection["selection_rows"] == 200
    d = res.to_dict()
    assert d["probe"] == "linear" and json.loads(json.dumps(d)) == d
    assert {"accuracy", "balanced_accuracy", "macro_f1", "confusion_matrix", "preprocessing", "C",
            "cv_scores", "timings", "seed", "n_train", "n_test"} <= set(d)


def test_selection_subsample_is_capped():
    X, y = noisy(600)
    res = linear_probe(X[:500], y[:500], X[500:], y[500:], Cs=(1.0,), max_select_rows=150)
    assert res.selection["selection_rows"] == 150 and res.n_train == 500


def test_unknown_labels_are_ignored(sep_data):
    Xtr, ytr, Xte, yte = sep_data
    ytr = ytr.copy()
    ytr[:40] = -1
    res = knn_probe(Xtr, ytr, Xte, yte, **SMALL_KNN)
    assert res.n_train == 200 and res.accuracy == 1.0


def test_input_errors(sep_data):
    Xtr, ytr, Xte, yte = sep_data
    with pytest.raises(ConfigError, match="X_test: expected 6 features"):
        linear_probe(Xtr, ytr, Xte[:, :4], yte)
    bad = Xtr.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        knn_probe(bad, ytr, Xte, yte)
    with pytest.raises(ConfigError, match="y_train: expected shape"):
        linear_probe(Xtr, ytr[:-1], Xte, yte)
    with pytest.raises(ConfigError, match="preprocessings"):
        linear_probe(Xtr, ytr, Xte, yte, preprocessings=("whiten",))
    with pytest.raises(ConfigError, match="metrics"):
        knn_probe(Xtr, ytr, Xte, yte, metrics=("manhattan",))


def test_feature_prep():
    X = np.random.default_rng(0).normal(3.0, 2.0, size=(50, 4))
    Z = FeaturePrep("l2").fit_transform(X)
    np.testing.assert_allclose(np.linalg.norm(Z, axis=1), 1.0)
    S = FeaturePrep("standardize").fit_transform(X)
    np.testing.assert_allclose(S.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(S.std(axis=0), 1.0)
    assert FeaturePrep("none").fit_transform(X) is not None
    with pytest.raises(ConfigError, match="preprocessing"):
        FeaturePrep("pca")


# -- few labels -------------------------------------------------------------------------

def test_draws_are_seeded_exact_nested_and_train_only():
    y = np.repeat([0, 1, 2], [30, 12, 20])
    a, b = draw_labelled(y, 5, seed=3), draw_labelled(y, 5, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, draw_labelled(y, 5, seed=4))
    assert np.bincount(y[a]).tolist() == [5, 5, 5]
    assert a.max() < y.size and a.min() >= 0
    assert set(draw_labelled(y, 1, seed=3)) <= set(a)  # nested: the 1-label draw is inside the 5-label draw
    y_unknown = y.copy()
    y_unknown[:25] = -1  # unknown rows are never drawn
    assert (y_unknown[draw_labelled(y_unknown, 5, seed=0)] >= 0).all()
    with pytest.raises(ConfigError, match="class 1 has only 12 training rows"):
        draw_labelled(y, 13, seed=0)


def test_fewshot_curve_records(sep_data):
    Xtr, ytr, Xte, yte = sep_data
    res = fewshot_curve(Xtr, ytr, Xte, yte, labels_per_class=(1, 5), seeds=(0, 1, 2), max_unlabelled=60)
    assert res.seeds == [0, 1, 2] and res.labels_per_class == [1, 5]
    assert res.methods == list(DEFAULT_METHODS)
    for method in DEFAULT_METHODS:
        for k in ("1", "5"):
            entry = res.curves[method][k]
            assert len(entry["accuracies"]) == 3
            assert entry["mean"] == pytest.approx(np.mean(entry["accuracies"]))
            assert entry["std"] == pytest.approx(np.std(entry["accuracies"]))
            assert entry["labelled_per_class"] == [{0: int(k), 1: int(k), 2: int(k)}] * 3
        assert res.curves[method]["5"]["mean"] == 1.0  # separable blobs
    assert res.curves["label_spreading"]["1"]["n_unlabelled"] == [60, 60, 60]
    assert res.summary()["logistic@5"] == (1.0, 0.0)
    json.dumps(res.to_dict())
    again = fewshot_curve(Xtr, ytr, Xte, yte, labels_per_class=(1, 5), seeds=(0, 1, 2), max_unlabelled=60)
    assert again.curves == {m: {k: dict(v, seconds=again.curves[m][k]["seconds"]) for k, v in per.items()}
                            for m, per in res.curves.items()}


def test_fewshot_does_not_depend_on_test_labels_for_draws(sep_data):
    Xtr, ytr, Xte, yte = sep_data
    a = fewshot_curve(Xtr, ytr, Xte, yte, labels_per_class=(2,), seeds=2, methods=("knn",))
    b = fewshot_curve(Xtr, ytr, Xte[::-1], yte[::-1], labels_per_class=(2,), seeds=2, methods=("knn",))
    assert a.curves["knn"]["2"]["accuracies"] == b.curves["knn"]["2"]["accuracies"]


def _same_train_side(a, b):
    """Everything a few-label run decides from training rows: draws, unlabelled rows and predictions."""
    for method in a.methods:
        for k, entry in a.curves[method].items():
            other = b.curves[method][k]
            assert entry["labelled_per_class"] == other["labelled_per_class"]
            assert entry["n_unlabelled"] == other["n_unlabelled"]
            assert len(a.predictions[method][k]) == len(entry["seeds"])
            for pa, pb in zip(a.predictions[method][k], b.predictions[method][k]):
                np.testing.assert_array_equal(pa, pb, err_msg=f"{method}@{k}")


def test_no_few_label_method_sees_test_labels():
    # overlapping blobs: no method is perfect, so labels handed to a method would show in its predictions
    X, y = blobs(330, d=6, sep=1.2, seed=2)
    Xtr, ytr, Xte, yte = X[:240], y[:240], X[240:], y[240:]
    kwargs = {"labels_per_class": (1, 5), "seeds": (0, 1), "max_unlabelled": 120, "methods": METHODS,
              "m2": TINY_M2}
    base = fewshot_curve(Xtr, ytr, Xte, yte, **kwargs)
    assert base.methods == list(METHODS) and base.settings["m2"]["steps"] == 30
    for method in METHODS:
        assert 0.4 < base.curves[method]["5"]["mean"] < 1.0, (method, base.curves[method]["5"])
    rng = np.random.default_rng(9)
    for corrupted in (rng.permutation(yte), rng.integers(0, 3, yte.size), np.full(yte.size, 2)):
        res = fewshot_curve(Xtr, ytr, Xte, corrupted, **kwargs)
        _same_train_side(base, res)
        for method in METHODS:  # the test labels only score the predictions
            for k, entry in res.curves[method].items():
                assert entry["accuracies"] == [float(np.mean(p == corrupted)) for p in res.predictions[method][k]]


def test_fewshot_seed_picks_the_draw():
    X, y = blobs(240, d=6, sep=1.5, seed=4)
    Xtr, ytr, Xte, yte = X[:150], y[:150], X[150:], y[150:]
    kwargs = {"labels_per_class": (1,), "max_unlabelled": 100, "methods": METHODS, "m2": TINY_M2}
    a = fewshot_curve(Xtr, ytr, Xte, yte, seeds=(0, 1, 2, 3), **kwargs)
    _same_train_side(a, fewshot_curve(Xtr, ytr, Xte, yte, seeds=(0, 1, 2, 3), **kwargs))  # same seeds: same run
    one = fewshot_curve(Xtr, ytr, Xte, yte, seeds=(2,), **kwargs)
    later = fewshot_curve(Xtr, ytr, Xte, yte, seeds=(4, 5, 6, 7), **kwargs)
    for method in METHODS:
        accs = a.curves[method]["1"]["accuracies"]
        assert a.curves[method]["1"]["std"] > 0, method  # different seeds, different draws, different scores
        assert len(set(accs)) > 1
        assert one.curves[method]["1"]["accuracies"] == [accs[2]]  # a seed's draw does not depend on its place
        assert later.curves[method]["1"]["accuracies"] != accs


def test_label_spreading_reaches_isolated_labelled_rows():
    # one labelled row per blob and otherwise unlabelled rows: spreading must label every blob
    X, y = blobs(300, d=8, seed=0)
    res = fewshot_curve(X[:200], y[:200], X[200:], y[200:], labels_per_class=(1,), seeds=(0, 1, 2, 3),
                        methods=("label_spreading", "self_training"))
    assert res.curves["label_spreading"]["1"]["mean"] == 1.0
    assert res.curves["self_training"]["1"]["mean"] == 1.0


def test_fewshot_too_few_rows_is_a_clear_error(sep_data):
    Xtr, ytr, Xte, yte = sep_data
    with pytest.raises(ConfigError, match=r"labels_per_class: 100 labels per class requested but class \d has only"):
        fewshot_curve(Xtr, ytr, Xte, yte, labels_per_class=(1, 100))
    with pytest.raises(ConfigError, match="methods"):
        fewshot_curve(Xtr, ytr, Xte, yte, labels_per_class=(1,), methods=("svm",))
    with pytest.raises(ConfigError, match=r"m2: unknown setting\(s\) \['depth'\]"):
        fewshot_curve(Xtr, ytr, Xte, yte, labels_per_class=(1,), methods=("m2",), m2={"depth": 3})
    with pytest.raises(ConfigError, match="m2: expected an M2Config or a dict"):
        fewshot_curve(Xtr, ytr, Xte, yte, labels_per_class=(1,), methods=("m2",), m2=[3])
    with pytest.raises(ConfigError, match="M2 steps"):
        fewshot_curve(Xtr, ytr, Xte, yte, labels_per_class=(1,), methods=("m2",), m2={"steps": 0})


def test_m2_runs_only_when_named_and_gets_the_draw_seed(sep_data):
    from cvae_features.semisup import M2Config, fit_m2

    Xtr, ytr, Xte, yte = sep_data
    assert fewshot_curve(Xtr, ytr, Xte, yte, labels_per_class=(1,), seeds=1).methods == list(DEFAULT_METHODS)
    assert "m2" not in DEFAULT_METHODS and "m2" in METHODS
    res = fewshot_curve(Xtr, ytr, Xte, yte, labels_per_class=(2,), seeds=(3,), methods=("m2",), m2=TINY_M2,
                        max_unlabelled=50)
    lab = draw_labelled(ytr, 2, 3)
    rest = np.setdiff1d(np.arange(ytr.size), lab)
    unl = np.sort(np.random.default_rng([3, 2]).choice(rest, 50, replace=False))
    prep = FeaturePrep("l2").fit(Xtr)
    expected = fit_m2(prep.transform(Xtr[lab]), ytr[lab], prep.transform(Xtr[unl]), M2Config(**TINY_M2),
                      seed=3).predict(prep.transform(Xte))
    np.testing.assert_array_equal(res.predictions["m2"]["2"][0], expected)
    assert res.curves["m2"]["2"]["n_unlabelled"] == [50] and res.settings["m2"] == M2Config(**TINY_M2).to_dict()
    assert "m2" not in fewshot_curve(Xtr, ytr, Xte, yte, labels_per_class=(1,), seeds=1,
                                     methods=("knn",)).settings


# -- anomaly ----------------------------------------------------------------------------

def _anomaly_data(seed=0):
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=(300, 4))
    test = np.vstack([rng.normal(size=(100, 4)), rng.normal(size=(50, 4)) + 8.0])
    is_anomaly = np.r_[np.zeros(100, int), np.ones(50, int)]
    return normal, test, is_anomaly


def test_far_anomalies_are_found():
    normal, test, is_anomaly = _anomaly_data()
    res = anomaly_probe(normal, test, is_anomaly, seed=0)
    assert set(res.scores) == {"knn", "mahalanobis", "gmm"}
    for name, s in res.scores.items():
        assert s["auroc"] > 0.99 and s["aupr"] > 0.99 and s["test_tpr"] == 1.0
        assert res.test_scores[name].shape == (150,)
    swapped = anomaly_probe(normal, test, 1 - is_anomaly, seed=0)
    for s in swapped.scores.values():
        assert s["auroc"] < 0.01
    assert res.n_fit + res.n_heldout == 300 and res.n_test_anomalies == 50


def test_threshold_is_calibrated_on_heldout_normal_rows():
    rng = np.random.default_rng(2)
    normal = rng.normal(size=(2000, 3))
    fresh_normal = rng.normal(size=(4000, 3))
    res = anomaly_probe(normal, fresh_normal, scores=("knn", "mahalanobis"), fpr=0.1, heldout_fraction=0.5,
                        gmm_components=1, seed=0)
    for name, s in res.scores.items():
        assert abs(s["heldout_fpr"] - 0.1) < 0.005
        assert abs(np.mean(res.test_scores[name] > s["threshold"]) - 0.1) < 0.03  # unseen normal rows
        assert "auroc" not in s  # no test labels, no AUROC
    assert res.summary() == {}


def test_extra_scores_and_frame():
    normal, test, is_anomaly = _anomaly_data()
    extra_n = {"neg_elbo": np.linalg.norm(normal, axis=1)}
    extra_t = {"neg_elbo": np.linalg.norm(test, axis=1)}
    res = anomaly_probe(normal, test, is_anomaly, scores=("knn",), extra_normal=extra_n, extra_test=extra_t)
    assert res.scores["neg_elbo"]["auroc"] > 0.99
    frame = res.scores_frame(keys=[f"r{i}" for i in range(150)])
    assert list(frame.columns) == ["key", "knn", "flag_knn", "neg_elbo", "flag_neg_elbo", "is_anomaly"]
    assert frame["flag_knn"].sum() == res.scores["knn"]["flagged"]
    d = res.to_dict()
    assert "test_scores" not in d and len(d["scores"]["knn"]["roc"]["fpr"]) <= 200
    json.dumps(d)
    with pytest.raises(ConfigError, match="extra_test"):
        anomaly_probe(normal, test, is_anomaly, extra_normal=extra_n, extra_test={})


def test_anomaly_scores_function():
    normal, test, _ = _anomaly_data()
    s = anomaly_scores(normal, test, scores=("knn",), k=3)
    assert list(s) == ["knn"] and s["knn"][:100].max() < s["knn"][100:].min()
    with pytest.raises(ConfigError, match="X_test: expected 4 features"):
        anomaly_scores(normal, test[:, :2])


def test_one_class_protocol(sep_data):
    Xtr, ytr, Xte, yte = sep_data
    res = one_class_protocol(Xtr, ytr, Xte, yte, gmm_components=1,
                             extra_test={"const": np.zeros(len(yte))})
    assert res.classes == [0, 1, 2]
    assert set(res.auroc) == {"knn", "mahalanobis", "gmm", "const"}
    for name in ("knn", "mahalanobis", "gmm"):
        assert set(res.auroc[name]) == {0, 1, 2} and res.mean_auroc[name] > 0.99
    assert res.mean_auroc["const"] == 0.5
    assert res.n_fit_per_class == {c: int((ytr == c).sum()) for c in range(3)}


@pytest.fixture(scope="module")
def digits_600():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X[:600].astype(np.float32), y[:600]


def test_umap_gmm_clusters_digits_better_than_kmeans_and_repeatably(digits_600):
    pytest.importorskip("umap", reason="umap-gmm needs umap-learn: pip install -e '.[dev]' installs it")
    from cvae_features.probes.cluster import UmapGmm, fit_clusters

    X, y = digits_600
    res = cluster_probe(X, y, methods=("kmeans", "umap-gmm"), seed=0)
    km, ug = res.methods["kmeans"], res.methods["umap-gmm"]
    # measured here: k-means NMI 0.79 / ACC 0.84, UMAP + GMM NMI 0.88 / ACC 0.90 (N2D's gain, on digits)
    assert ug["nmi"] > 0.85 and ug["acc"] > 0.85 and ug["nmi"] > km["nmi"] + 0.05
    assert sum(ug["cluster_sizes"]) == 600 and len(ug["cluster_sizes"]) == 10
    again = cluster_probe(X, y, methods=("umap-gmm",), seed=0)
    assert np.array_equal(again.assignments["umap-gmm"], res.assignments["umap-gmm"])  # seeded: the same clusters
    # the recipe's settings: as many UMAP dimensions as clusters, 20 neighbours, min_dist 0, full covariances
    Xp = FeaturePrep("l2").fit_transform(X)
    est = fit_clusters(Xp, 10, "umap-gmm", seed=0)
    assert isinstance(est, UmapGmm) and est.embedding_.shape == (600, 10)
    assert (est.umap_.n_neighbors, est.umap_.min_dist, est.mixture_.covariance_type) == (20, 0.0, "full")
    assert np.array_equal(est.predict(Xp), res.assignments["umap-gmm"])  # the fitted rows: their embedding
    assert np.mean(est.predict(Xp.copy()) == est.predict(Xp)) > 0.9  # other rows: embedded by UMAP's transform


def test_umap_gmm_on_tiny_inputs(digits_600):
    pytest.importorskip("umap", reason="umap-gmm needs umap-learn: pip install -e '.[dev]' installs it")
    X, y = digits_600
    rows = np.concatenate([np.flatnonzero(y == 0)[:3], np.flatnonzero(y == 1)[:3]])
    res = cluster_probe(X[rows], y[rows], methods=("umap-gmm",), seed=0)  # 6 rows, 2 clusters: fewer than 20
    assert sorted(res.methods["umap-gmm"]["cluster_sizes"]) == [3, 3] and res.methods["umap-gmm"]["acc"] == 1.0


def test_umap_gmm_without_umap_learn_names_the_extra(monkeypatch, digits_600):
    import sys

    from cvae_features.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "umap", None)  # as if umap-learn were not installed: import fails
    X, y = digits_600
    with pytest.raises(MissingExtraError, match=r'^the umap-gmm cluster method needs umap-learn, which is not '
                                                r'installed \(.*\): pip install "cvae-features\[umap\]"$'):
        cluster_probe(X, y, methods=("kmeans", "umap-gmm"))
    assert cluster_probe(X[:60], y[:60], methods=("kmeans",)).methods["kmeans"]["acc"] > 0.5  # the others run


def test_groups_do_not_take_umap_gmm(digits_600):
    from cvae_features.groups import group_rows

    with pytest.raises(ConfigError, match=r"method: expected one of \['kmeans', 'gmm'\], got 'umap-gmm'"):
        group_rows(digits_600[0], k=3, method="umap-gmm")


# -- the entry points written out (benchmarks/mutation.py, group 'entry') -----------------------------------------

def _fake_clock(monkeypatch, step=0.125):
    """Every timed block takes exactly ``step`` seconds (``timed`` reads the clock twice)."""
    import itertools
    from types import SimpleNamespace

    ticks = itertools.count(0.0, step)
    monkeypatch.setattr("cvae_features.probes._common.time", SimpleNamespace(perf_counter=lambda: next(ticks)))


@pytest.mark.parametrize("solver", ["lbfgs", "preconditioned"])
@pytest.mark.parametrize("cv", [None, 3])
def test_linear_probe_is_its_selection_loop_written_out(cv, solver, monkeypatch):
    from sklearn.metrics import confusion_matrix, f1_score

    from cvae_features.probes._common import _balanced_accuracy, selection_splits
    from cvae_features.probes.linear import _fit_logistic

    _fake_clock(monkeypatch)
    X, y = noisy(300, seed=3)
    y = np.where(y == 2, 7, y)  # class ids 0, 1, 7
    Xtr, ytr, Xte, yte = X[:200], y[:200].copy(), X[200:], y[200:].copy()
    yte[:3] = 4  # a test class the model never predicts: macro F1 counts it as 0
    preps, Cs = ("none", "l2", "standardize"), (3, 0.05, 0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the scores are computed without warnings (absent classes included)
        res = linear_probe(Xtr, ytr, Xte, yte, preprocessings=preps, Cs=Cs, cv=cv, val_fraction=0.35,
                           max_select_rows=150, max_iter=4, solver=solver, seed=5)
    splits, selection = selection_splits(ytr, cv=cv, val_fraction=0.35, max_rows=150, seed=5)
    scores = {}
    for p in preps:
        for c in (0.05, 0.3, 3.0):
            scores[f"{p}/C={c:g}"] = []
    for fit, val in splits:
        for p in preps:
            prep = FeaturePrep(p).fit(Xtr[fit])
            model = None
            for c in (0.05, 0.3, 3.0):  # increasing C, each fit warm-started from the last
                model = _fit_logistic(prep.transform(Xtr[fit]), ytr[fit], c, 4, model, solver, 5)
                scores[f"{p}/C={c:g}"].append(float(np.mean(model.predict(prep.transform(Xtr[val])) == ytr[val])))
    expected = {key: float(np.mean(v)) for key, v in scores.items()}
    assert list(res.cv_scores.items()) == list(expected.items())
    best = max(expected, key=expected.get)
    assert f"{res.preprocessing}/C={res.C:g}" == best and isinstance(res.C, float)
    prep = FeaturePrep(res.preprocessing).fit(Xtr)
    start = None
    if solver == "preconditioned":  # the refit starts where the chosen setting's (last) selection fit ended
        prep_fit = FeaturePrep(res.preprocessing).fit(Xtr[splits[-1][0]])
        last = None
        for c in (0.05, 0.3, 3.0):
            last = _fit_logistic(prep_fit.transform(Xtr[splits[-1][0]]), ytr[splits[-1][0]], c, 4, last, solver, 5)
            if c == res.C:
                start = (last.coef_.copy(), last.intercept_.copy(), last.classes_)
    model = _fit_logistic(prep.transform(Xtr), ytr, res.C, 4, solver=solver, seed=5, start=start)
    pred = model.predict(prep.transform(Xte))
    classes = [0, 1, 4, 7]
    assert res.classes == classes
    assert res.accuracy == float(np.mean(pred == yte))
    assert res.balanced_accuracy == _balanced_accuracy(yte, pred)
    assert res.macro_f1 == float(f1_score(yte, pred, average="macro", labels=classes, zero_division=0))
    assert res.confusion_matrix == confusion_matrix(yte, pred, labels=classes).tolist()
    assert res.selection == dict(selection, solver=solver) and res.selection["selection_seed"] == 5
    assert (res.n_train, res.n_test, res.seed, res.converged) == (200, 100, 5, False)  # 4 iterations: not converged
    assert res.timings == {"select_s": 0.125, "fit_s": 0.125, "predict_s": 0.125}
    assert linear_probe(Xtr, ytr, Xte, yte, Cs=(1.0,), max_iter=1000).converged


def test_linear_probe_refuses_cs_and_fractions_out_of_range(sep_data):
    Xtr, ytr, Xte, yte = sep_data
    for Cs in ((), (1.0, 0.0), (-1.0,)):
        with pytest.raises(ConfigError, match=r"^Cs: expected one or more positive numbers"):
            linear_probe(Xtr, ytr, Xte, yte, Cs=Cs)
    assert linear_probe(Xtr, ytr, Xte, yte, Cs=(0.5,), preprocessings=("l2",)).C == 0.5
    for probe in (linear_probe, knn_probe):
        with pytest.raises(ConfigError, match=r"^val_fraction: "):
            probe(Xtr, ytr, Xte, yte, val_fraction=1.0)


@pytest.mark.parametrize("cv", [None, 3])
def test_knn_probe_is_its_selection_written_out(cv, monkeypatch):
    from cvae_features.probes._common import _balanced_accuracy, selection_splits
    from cvae_features.probes.knn import _geometry, nearest_neighbours, vote

    _fake_clock(monkeypatch)
    X, y = noisy(300, seed=4)
    y = y * 2 + 3  # class ids 3, 5, 7
    Xtr, ytr, Xte, yte = X[:200], y[:200], X[200:], y[200:]
    metrics, weights = ("cosine", "centered_cosine", "euclidean"), ("distance", "uniform")
    res = knn_probe(Xtr, ytr, Xte, yte, ks=(9, 1, 4, 4), metrics=metrics, weights=weights, cv=cv,
                    val_fraction=0.3, max_select_rows=160, n_jobs=1, seed=2)
    classes, y_idx = np.unique(ytr, return_inverse=True)
    splits, selection = selection_splits(y_idx, cv=cv, val_fraction=0.3, max_rows=160, seed=2)
    scores = {f"{m}/{w}/k={k}": [] for m in metrics for w in weights for k in (1, 4, 9)}
    for fit, val in splits:
        for m in metrics:
            ref, query = _geometry(m, Xtr[fit], Xtr[val])
            dist, idx = nearest_neighbours(ref, query, 9)
            for w in weights:
                for k in (1, 4, 9):
                    pred = vote(y_idx[fit][idx], dist, k, w, 3)
                    scores[f"{m}/{w}/k={k}"].append(float(np.mean(pred == y_idx[val])))
    expected = {key: float(np.mean(v)) for key, v in scores.items()}
    assert list(res.cv_scores.items()) == list(expected.items())
    assert f"{res.metric}/{res.weights}/k={res.k}" == max(expected, key=expected.get)
    ref, query = _geometry(res.metric, Xtr, Xte)
    dist, idx = nearest_neighbours(ref, query, res.k)
    pred = classes[vote(y_idx[idx], dist, res.k, res.weights, 3)]
    assert res.accuracy == float(np.mean(pred == yte)) and res.balanced_accuracy == _balanced_accuracy(yte, pred)
    assert res.selection == dict(selection, ks_tried=[1, 4, 9])
    assert (res.n_train, res.n_test, res.seed) == (200, 100, 2)
    assert res.timings == {"select_s": 0.125, "predict_s": 0.125}


def test_knn_probe_tries_the_ks_up_to_the_reference_rows_while_choosing(sep_data):
    from cvae_features.probes._common import selection_splits

    Xtr, ytr, Xte, yte = sep_data
    splits, _ = selection_splits(ytr, cv=None, val_fraction=0.2, max_rows=20_000, seed=0)
    n_ref = splits[0][0].size
    res = knn_probe(Xtr, ytr, Xte, yte, ks=(1, n_ref, n_ref + 1))
    assert res.selection["ks_tried"] == [1, n_ref] and f"euclidean/uniform/k={n_ref}" in res.cv_scores
    assert knn_probe(Xtr, ytr, Xte, yte, ks=(n_ref,)).k == n_ref
    with pytest.raises(ConfigError, match=rf"^ks: the smallest k \({n_ref + 1}\) exceeds the {n_ref} reference rows"):
        knn_probe(Xtr, ytr, Xte, yte, ks=(n_ref + 1,))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_fewshot_curve_is_its_draws_and_methods_written_out(monkeypatch):
    from cvae_features.probes.registry import get_fewshot_method

    _fake_clock(monkeypatch)
    X, y = blobs(260, d=5, sep=1.5, seed=7)
    y = np.array([0, 2, 5])[y]  # class ids with gaps
    Xtr, ytr, Xte, yte = X[:200], y[:200].copy(), X[200:], y[200:].copy()
    ytr[:4] = -1  # unknown training rows: never drawn, possibly unlabelled rows
    yte[:5] = -1  # unknown test rows: left out of the score
    smallest = int(min(np.sum(ytr == c) for c in (0, 2, 5)))
    methods = ("self_training", "logistic", "label_spreading", "knn")
    kw = dict(C=0.3, knn_neighbors=3, spreading_neighbors=4, spreading_alpha=0.6, max_unlabelled=50, max_iter=5)
    res = fewshot_curve(Xtr, ytr, Xte, yte, labels_per_class=(smallest, 1), seeds=(3, 1), methods=methods,
                        n_jobs=1, **kw)
    prep = FeaturePrep("l2").fit(Xtr)
    Ztr, Zte, y_known = prep.transform(Xtr), prep.transform(Xte[5:]), yte[5:]
    params = {"C": 0.3, "max_iter": 5, "knn_neighbors": 3, "spreading_neighbors": 4, "spreading_alpha": 0.6,
              "n_jobs": 1, "m2": None}
    assert res.labels_per_class == [1, smallest] and res.seeds == [3, 1] and res.methods == list(methods)
    for k in (1, smallest):
        preds, counts, n_unl = {m: [] for m in methods}, [], []
        for seed in (3, 1):
            lab = draw_labelled(ytr, k, seed)
            counts.append({0: k, 2: k, 5: k})
            rest = np.setdiff1d(np.arange(200), lab)
            unl = np.sort(np.random.default_rng([seed, k]).choice(rest, min(50, rest.size), replace=False))
            n_unl.append(int(unl.size))
            for m in methods:
                spec = get_fewshot_method(m)
                preds[m].append(spec.predict(Ztr[lab], ytr[lab], Ztr[unl] if spec.uses_unlabelled else None, Zte,
                                             dict(params, seed=seed)))
        for m in methods:
            accs = [float(np.mean(p == y_known)) for p in preds[m]]
            assert res.curves[m][str(k)] == {
                "mean": float(np.mean(accs)), "std": float(np.std(accs)), "accuracies": accs, "seeds": [3, 1],
                "labelled_per_class": counts,
                "n_unlabelled": n_unl if m in ("label_spreading", "self_training") else None, "seconds": 0.25}, (m, k)
            for got, want in zip(res.predictions[m][str(k)], preds[m], strict=True):
                np.testing.assert_array_equal(got, want)
    assert 0 < res.curves["logistic"]["1"]["std"] and res.curves["knn"]["1"]["mean"] < 1.0  # the task is not trivial
    assert res.timings == {m: 0.5 for m in methods}
    assert (res.n_train, res.n_test) == (200, 55)
    assert res.settings == {
        "preprocessing": "l2 (centred on all training rows, unit norm)", "C": 0.3, "knn_neighbors": 3,
        "knn_metric": "cosine", "spreading_neighbors": 4, "spreading_alpha": 0.6, "spreading_graph": "symmetric k-NN",
        "max_unlabelled": 50, "self_training": "class-balanced, 5 rounds of unlabelled/10 pseudo-labels",
        "draws": "per seed and class one permutation of the training rows; first k labelled (nested)"}


def test_fewshot_curve_checks_its_settings_at_their_boundaries(sep_data):
    Xtr, ytr, Xte, yte = sep_data
    few = {"labels_per_class": (1,), "seeds": 1, "methods": ("knn",)}
    for bad, message in (({"C": 0.0}, "^C: expected a positive number, got 0.0"),
                         ({"spreading_alpha": 0.0}, r"^spreading_alpha: expected a number in \(0, 1\)"),
                         ({"spreading_alpha": 1.0}, r"^spreading_alpha: expected a number in \(0, 1\)"),
                         ({"knn_neighbors": 0}, "^knn_neighbors"), ({"spreading_neighbors": 0}, "^spreading_neighbors"),
                         ({"seeds": ()}, "^seeds: expected at least one seed"),
                         ({"m2": {"depth": 3}}, r"^m2: unknown setting\(s\) \['depth'\]")):
        with pytest.raises(ConfigError, match=message):
            fewshot_curve(Xtr, ytr, Xte, yte, **dict(few, **bad))
    res = fewshot_curve(Xtr, ytr, Xte, yte, C=1e-9, spreading_alpha=1e-9, knn_neighbors=1, spreading_neighbors=1,
                        **dict(few, methods=("knn", "label_spreading")))
    assert res.settings["C"] == 1e-9 and res.settings["spreading_alpha"] == 1e-9
    res = fewshot_curve(Xtr, ytr, Xte, yte, spreading_alpha=1 - 1e-9, seeds=(4,), labels_per_class=(1,),
                        methods=("label_spreading",))
    assert res.seeds == [4]
    two = ytr < 2
    assert fewshot_curve(Xtr[two], ytr[two], Xte, yte, **few).methods == ["knn"]  # two classes are enough
    with pytest.raises(DataTooSmall, match="^the training rows hold 1 class"):
        fewshot_curve(Xtr[ytr == 0], ytr[ytr == 0], Xte, yte, **few)
    with pytest.raises(ConfigError, match="^y_test: expected at least one test row with a known label"):
        fewshot_curve(Xtr, ytr, Xte, np.full(yte.size, -1), **few)
    y_gap = np.where(ytr == 1, 4, ytr)  # classes 0, 2, 4: class ids 1 and 3 hold no rows
    y_gap[np.flatnonzero(y_gap == 2)[:70]] = -1
    n2 = int(np.sum(y_gap == 2))
    assert fewshot_curve(Xtr, y_gap, Xte, yte, **dict(few, labels_per_class=(n2,))).labels_per_class == [n2]
    with pytest.raises(ConfigError, match=rf"^labels_per_class: {n2 + 1} labels per class requested but class 2 "
                                          rf"has only {n2} training rows"):
        fewshot_curve(Xtr, y_gap, Xte, yte, **dict(few, labels_per_class=(n2 + 1,)))
    y0 = ytr.copy()
    y0[np.flatnonzero(y0 == 0)[5:]] = -1  # class 0, the first, is the smallest: 5 rows
    with pytest.raises(ConfigError, match=r"^labels_per_class: 7 labels per class requested but class 0 has only 5 "):
        fewshot_curve(Xtr, y0, Xte, yte, **dict(few, labels_per_class=(6, 7)))  # the largest is named


def test_cluster_probe_is_its_methods_and_scores_written_out(monkeypatch):
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

    from cvae_features.probes.cluster import fit_clusters

    _fake_clock(monkeypatch)
    X, y = blobs(90, d=4, sep=2.0, seed=11)
    y = y.copy()
    y[:7] = -1  # clustered, not scored
    res = cluster_probe(X, y, methods=("gmm", "kmeans"), preprocessing="standardize", n_init=3,
                        max_silhouette_rows=40, seed=4)
    Xp = FeaturePrep("standardize").fit_transform(X)
    sil = np.sort(np.random.default_rng(4).choice(90, 40, replace=False))
    assert res.silhouette_rows == 40 and (res.n_clusters, res.n_rows, res.n_labelled, res.seed) == (3, 90, 83, 4)
    assert res.preprocessing == "standardize" and list(res.methods) == ["gmm", "kmeans"]
    for name in ("gmm", "kmeans"):
        pred = fit_clusters(Xp, 3, name, n_init=3, seed=4).predict(Xp)
        sizes = np.bincount(pred, minlength=3)
        t, p = y[7:], pred[7:]
        assert res.methods[name] == {
            "cluster_sizes": sizes.tolist(), "n_empty": int((sizes == 0).sum()),
            "silhouette": float(silhouette_score(Xp[sil], pred[sil])), "acc": cluster_accuracy(t, p),
            "nmi": float(normalized_mutual_info_score(t, p)), "ari": float(adjusted_rand_score(t, p))}
        np.testing.assert_array_equal(res.assignments[name], pred)
        assert 0 < res.methods[name]["ari"] < 1  # overlapping blobs: the scores are not at their ends
    assert res.timings == {"gmm_s": 0.125, "kmeans_s": 0.125}
    # all of few enough rows: the silhouette on every row; labels all unknown: nothing scored
    res = cluster_probe(X[:30], np.full(30, -1), n_clusters=3, methods=("kmeans",), max_silhouette_rows=30)
    assert res.silhouette_rows == 30 and res.n_labelled == 0 and "acc" not in res.methods["kmeans"]
    assert res.methods["kmeans"]["silhouette"] == float(silhouette_score(FeaturePrep("l2").fit_transform(X[:30]),
                                                                         res.assignments["kmeans"]))


def test_cluster_probe_silhouette_needs_two_to_n_minus_one_clusters_among_its_rows():
    X, _ = blobs(12, d=3, k=2, sep=20.0, seed=1)
    res = cluster_probe(X, None, n_clusters=2, methods=("kmeans",), max_silhouette_rows=3, seed=0)
    sil = np.sort(np.random.default_rng(0).choice(12, 3, replace=False))
    distinct = np.unique(res.assignments["kmeans"][sil]).size
    assert (res.methods["kmeans"]["silhouette"] is None) == (distinct != 2)
    for seed in range(40):  # a subsample of 2 rows: never a silhouette, of 1 or 2 clusters
        res = cluster_probe(X, None, n_clusters=2, methods=("kmeans",), max_silhouette_rows=2, seed=seed)
        assert res.methods["kmeans"]["silhouette"] is None and res.silhouette_rows == 2
    found = set()
    for seed in range(40):  # 3 rows: a silhouette when they hold 2 clusters, none when 1
        res = cluster_probe(X, None, n_clusters=2, methods=("kmeans",), max_silhouette_rows=3, seed=seed)
        sil = np.sort(np.random.default_rng(seed).choice(12, 3, replace=False))
        distinct = np.unique(res.assignments["kmeans"][sil]).size
        found.add(distinct)
        assert (res.methods["kmeans"]["silhouette"] is None) == (distinct == 1)
    assert found == {1, 2}
    with pytest.raises(ConfigError, match=r"^n_clusters: expected an integer >= 2, got 1"):
        cluster_probe(X, None, n_clusters=1)
    with pytest.raises(ConfigError, match=r"^n_clusters: expected an integer >= 2, got True"):
        cluster_probe(X, None, n_clusters=True)
    with pytest.raises(ConfigError, match=r"^n_clusters: expected an integer >= 2, got 2.5"):
        cluster_probe(X, None, n_clusters=2.5)
    assert cluster_probe(X, None, n_clusters=2.0, methods=("kmeans",)).n_clusters == 2


def test_anomaly_scores_fit_the_scorer_with_its_settings():
    from cvae_features.probes.anomaly import AnomalyScorer

    normal, test, _ = _anomaly_data(3)
    got = anomaly_scores(normal[:60], test, scores=("gmm", "knn"), k=2, gmm_components=3, preprocessing="l2",
                         seed=9)
    want = AnomalyScorer(("gmm", "knn"), k=2, gmm_components=3, preprocessing="l2", seed=9).fit(normal[:60]).score(test)
    assert list(got) == ["knn", "gmm"]  # in the order of SCORES
    got, want = anomaly_scores(normal, test), AnomalyScorer().fit(normal).score(test)  # the defaults are the scorer's
    assert list(got) == list(want) == ["knn", "mahalanobis", "gmm"]
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    with pytest.raises(ConfigError, match="^X_normal: "):
        anomaly_scores(np.full((5, 4), np.nan), test)


def test_anomaly_probe_is_its_held_out_thresholds_written_out(monkeypatch):
    from sklearn.metrics import average_precision_score, roc_auc_score

    from cvae_features.probes._common import stratified_split
    from cvae_features.probes.anomaly import AnomalyScorer, _roc_points

    _fake_clock(monkeypatch)
    rng = np.random.default_rng(12)
    normal = rng.normal(size=(70, 3))
    # 21 rows held out: the 0.8 quantile of their scores is one of them (20 * 0.8 = 16), and the test rows hold
    # copies of them, so scores equal to the threshold are seen (not flagged: above it only)
    fit, held = stratified_split(np.zeros(70, dtype=np.int64), 0.3, 6)
    test = np.vstack([normal[held], rng.normal(size=(19, 3)), rng.normal(size=(20, 3)) + 1.5])
    labels = np.r_[np.zeros(40, int), np.ones(20, int)]
    extra_n = {"ext": rng.normal(size=70)}
    extra_t = {"ext": np.r_[extra_n["ext"][held], rng.normal(size=19), rng.normal(size=20) + 1]}
    res = anomaly_probe(normal, test, labels.astype(bool), scores=("mahalanobis", "knn", "gmm"), extra_normal=extra_n,
                        extra_test=extra_t, fpr=0.2, heldout_fraction=0.3, k=3, gmm_components=2,
                        preprocessing="standardize", normal_class=7, seed=6)
    scorer = AnomalyScorer(("mahalanobis", "knn", "gmm"), k=3, gmm_components=2, preprocessing="standardize",
                           seed=6).fit(normal[fit])
    h, t = scorer.score(normal[held]), scorer.score(test)
    h["ext"], t["ext"] = extra_n["ext"][held], extra_t["ext"]
    assert list(res.scores) == ["knn", "mahalanobis", "gmm", "ext"]
    for name, s in t.items():
        threshold = float(np.quantile(h[name], 0.8))
        flag = s > threshold
        assert res.scores[name] == {
            "threshold": threshold, "heldout_fpr": float(np.mean(h[name] > threshold)), "flagged": int(flag.sum()),
            "auroc": float(roc_auc_score(labels, s)), "aupr": float(average_precision_score(labels, s)),
            "test_fpr": float(flag[labels == 0].mean()), "test_tpr": float(flag[labels == 1].mean()),
            "roc": _roc_points(labels, s)}, name
        assert threshold in h[name] and threshold in s  # a held-out row and its copy sit at the threshold
        np.testing.assert_array_equal(res.test_scores[name], s)
        assert 0 < res.scores[name]["test_fpr"] < res.scores[name]["test_tpr"] < 1
    np.testing.assert_array_equal(res.is_anomaly, labels)
    assert res.settings == {"k": 3, "gmm_components": 2, "gmm_covariance": "full", "preprocessing": "standardize",
                            "heldout_fraction": 0.3, "mahalanobis_covariance": "Ledoit-Wolf"}
    assert (res.target_fpr, res.n_fit, res.n_heldout, res.n_test, res.n_test_anomalies) == (0.2, 49, 21, 60, 20)
    assert (res.normal_class, res.seed) == ("7", 6) and res.timings == {"fit_s": 0.125, "score_s": 0.125}
    res = anomaly_probe(normal, test, np.r_[np.zeros(59, int), 1], scores=("knn",), seed=6)  # one anomaly
    assert res.scores["knn"]["test_tpr"] in (0.0, 1.0) and res.n_test_anomalies == 1
    # test labels all of one kind: no AUROC; no labels: no counts
    for one_kind in (np.zeros(60, int), np.ones(60, int)):
        res = anomaly_probe(normal, test, one_kind, scores=("knn",), seed=6)
        assert set(res.scores["knn"]) == {"threshold", "heldout_fpr", "flagged"}
        assert res.n_test_anomalies == int(one_kind.sum())
    res = anomaly_probe(normal, test, scores=("knn",))
    assert res.n_test_anomalies is None and res.is_anomaly is None and res.normal_class is None
    with pytest.raises(ConfigError, match=r"^is_anomaly: expected 0/1 \(or booleans\), got values above 1"):
        anomaly_probe(normal, test, np.r_[labels[:-1], 2], scores=("knn",))


def test_anomaly_probe_needs_rows_for_the_scores_it_fits():
    rng = np.random.default_rng(0)
    test = rng.normal(size=(10, 3))
    # k=4 for 'knn' alone: 5 normal rows leave 4 to fit; gmm_components alone counts without 'knn'
    assert anomaly_probe(rng.normal(size=(5, 3)), test, scores=("knn",), k=4, gmm_components=9).n_fit == 4
    with pytest.raises(DataTooSmall, match=r"^4 normal row\(s\) are too few: the scores need 4 rows to fit on "
                                           r"\(k=4, gmm_components=9\) besides the 20% held out .* at least 5 normal"):
        anomaly_probe(rng.normal(size=(4, 3)), test, scores=("knn",), k=4, gmm_components=9)
    assert anomaly_probe(rng.normal(size=(5, 3)), test, scores=("gmm",), k=9, gmm_components=4).n_fit == 4
    with pytest.raises(DataTooSmall, match=r"^4 normal row\(s\) are too few: the scores need 4 rows"):
        anomaly_probe(rng.normal(size=(4, 3)), test, scores=("gmm",), k=9, gmm_components=4)
    res = anomaly_probe(rng.normal(size=(5, 3)), test, k=1)  # the default 4 components need 4 rows to fit on
    assert (res.n_fit, res.settings["gmm_components"], res.seed) == (4, 4, 0)
    assert anomaly_probe(rng.normal(size=(3, 3)), test, scores=("mahalanobis",), k=9, gmm_components=9).n_fit == 2
    with pytest.raises(ConfigError, match=r"^fpr: "):
        anomaly_probe(rng.normal(size=(9, 3)), test, fpr=0.0)
    with pytest.raises(ConfigError, match=r"^heldout_fraction: "):
        anomaly_probe(rng.normal(size=(9, 3)), test, heldout_fraction=1.0)
    with pytest.raises(ConfigError, match=r"^extra_test: expected the same scores as extra_normal \['a'\], got \[\]"):
        anomaly_probe(rng.normal(size=(9, 3)), test, extra_normal={"a": np.zeros(9)}, extra_test={"a": None})


def test_one_class_protocol_is_each_class_fitted_on_its_own_rows_written_out(monkeypatch):
    from sklearn.metrics import roc_auc_score

    from cvae_features.probes.anomaly import AnomalyScorer

    _fake_clock(monkeypatch)
    X, y = blobs(150, d=3, k=5, sep=1.5, seed=13)
    Xtr, ytr, Xte, yte = X[:100], y[:100].copy(), X[100:], y[100:].copy()
    ytr[np.flatnonzero(ytr == 1)[2:]] = -1  # class 1: 2 training rows (k and gmm_components cut to 2)
    ytr[ytr == 4] = -1  # class 4: in the test rows only
    yte[yte == 3] = -1  # class 3: in the training rows only
    yte[:2] = -1
    extra = np.random.default_rng(0).normal(size=50)
    res = one_class_protocol(Xtr, ytr, Xte, yte, scores=("knn", "gmm"), extra_test={"ext": extra}, k=3,
                             gmm_components=3, preprocessing="l2", label_names=["zero", "one"], seed=2)
    keep = yte >= 0
    assert res.classes == [0, 1, 2] and res.class_names == ["zero", "one", "2"]
    assert res.n_fit_per_class == {0: int(np.sum(ytr == 0)), 1: 2, 2: int(np.sum(ytr == 2))}
    for c in (0, 1, 2):
        normal = Xtr[ytr == c]
        n = min(3, normal.shape[0])
        s = AnomalyScorer(("knn", "gmm"), k=n, gmm_components=n, preprocessing="l2", seed=2).fit(normal).score(
            Xte[keep])
        s["ext"] = extra[keep]
        for name in ("knn", "gmm", "ext"):
            assert res.auroc[name][c] == float(roc_auc_score(yte[keep] != c, s[name])), (name, c)
    assert list(res.auroc) == ["knn", "gmm", "ext"]
    assert res.mean_auroc == {name: float(np.mean(list(res.auroc[name].values()))) for name in res.auroc}
    assert res.settings == {"k": 3, "gmm_components": 3, "preprocessing": "l2"}
    assert (res.n_test, res.seed, res.timings) == (int(keep.sum()), 2, {"total_s": 0.125})
    res = one_class_protocol(Xtr, ytr, Xte, yte, scores=("knn",))
    assert res.class_names is None and res.seed == 0
    assert res.settings == {"k": 5, "gmm_components": 4, "preprocessing": "none"}  # the defaults


def test_one_class_protocol_names_the_classes_it_cannot_fit():
    X, y = blobs(60, d=3, k=3, sep=4.0, seed=1)
    ytr = y.copy()
    ytr[np.flatnonzero(ytr == 1)[1:]] = -1
    ytr[np.flatnonzero(ytr == 2)[1:]] = -1
    with pytest.raises(DataTooSmall, match=r"^the one-class protocol fits each class on its own training rows and "
                                           r"needs at least 2 per class; class 'b' \(id 1\) has 1, id 2 has 1$"):
        one_class_protocol(X, ytr, X, y, label_names=["a", "b"])
    with pytest.raises(DataTooSmall, match=r"class id 1 has 1, id 2 has 1$"):
        one_class_protocol(X, ytr, X, y)
    with pytest.raises(DataTooSmall, match=r"^the test rows must hold at least two classes"):
        one_class_protocol(X, y, X[y == 0], y[y == 0])


def _nan_at(X):
    X = np.array(X, dtype=float)
    X[1, 0] = np.nan
    return X


_X, _Y = blobs(60, d=4, seed=21)
_XT, _YT = blobs(30, d=4, seed=22)
_BAD_INPUTS = [  # (probe, arguments, start of the error): every input and setting is named in its error
    (linear_probe, (_X, _Y, _XT, _YT, {"preprocessings": ("whiten",)}), "preprocessings: "),
    (linear_probe, (_X, _Y, _XT, _YT, {"val_fraction": 0.0}), "val_fraction: "),
    (knn_probe, (_X, _Y, _XT, _YT, {"ks": (1, 0)}), "ks: "),
    (knn_probe, (_X, _Y, _XT, _YT, {"metrics": ("manhattan",)}), "metrics: "),
    (knn_probe, (_X, _Y, _XT, _YT, {"weights": ("heavy",)}), "weights: "),
    (knn_probe, (_X, _Y, _XT, _YT, {"val_fraction": 1.0}), "val_fraction: "),
    (fewshot_curve, (_X, _Y, _XT, _YT, {"labels_per_class": (0,)}), "labels_per_class: "),
    (fewshot_curve, (_X, _Y, _XT, _YT, {"methods": ("svm",)}), "methods: "),
    (fewshot_curve, (_nan_at(_X), _Y, _XT, _YT, {}), "X_train: "),
    (fewshot_curve, (_X, _Y, _nan_at(_XT), _YT, {}), "X_test: "),
    (fewshot_curve, (_X, _Y, _XT[:, :3], _YT, {}), "X_test: expected 4 features like X_train, got 3"),
    (fewshot_curve, (_X, _Y[1:], _XT, _YT, {}), "y_train: "),
    (fewshot_curve, (_X, _Y, _XT, _YT[1:], {}), "y_test: "),
    (cluster_probe, (_X, None, {"n_clusters": 2, "methods": ("dbscan",)}), "methods: "),
    (cluster_probe, (_X, None, {"n_clusters": 2, "preprocessing": "whiten"}), "preprocessing: "),
    (cluster_probe, (_nan_at(_X), None, {"n_clusters": 2}), "X: "),
    (cluster_probe, (_X, _Y[1:], {}), "y: "),
    (anomaly_scores, (_nan_at(_X), _XT, {}), "X_normal: "),
    (anomaly_scores, (_X, _nan_at(_XT), {}), "X_test: "),
    (anomaly_scores, (_X, _XT[:, :3], {}), "X_test: expected 4 features"),
    (anomaly_probe, (_X, _XT, None, {"fpr": 1.0}), "fpr: "),
    (anomaly_probe, (_X, _XT, None, {"heldout_fraction": 0.0}), "heldout_fraction: "),
    (anomaly_probe, (_nan_at(_X), _XT, None, {}), "X_normal: "),
    (anomaly_probe, (_X, _nan_at(_XT), None, {}), "X_test: "),
    (anomaly_probe, (_X, _XT[:, :3], None, {}), "X_test: expected 4 features"),
    (anomaly_probe, (_X, _XT, None, {"scores": ("lof",)}), "scores: "),
    (anomaly_probe, (_X, _XT, None, {"k": 0}), "k: "),
    (anomaly_probe, (_X, _XT, None, {"gmm_components": 0}), "gmm_components: "),
    (anomaly_probe, (_X, _XT, None, {"extra_normal": {"a": np.zeros(3)}, "extra_test": {"a": np.zeros(30)}}),
     "extra_normal['a']: "),
    (anomaly_probe, (_X, _XT, None, {"extra_normal": {"a": np.zeros(60)}, "extra_test": {"a": np.zeros(3)}}),
     "extra_test['a']: "),
    (anomaly_probe, (_X, _XT, _YT[1:] > 0, {}), "is_anomaly: "),
    (one_class_protocol, (_nan_at(_X), _Y, _XT, _YT, {}), "X_train: "),
    (one_class_protocol, (_X, _Y, _nan_at(_XT), _YT, {}), "X_test: "),
    (one_class_protocol, (_X, _Y, _XT[:, :3], _YT, {}), "X_test: expected 4 features"),
    (one_class_protocol, (_X, _Y[1:], _XT, _YT, {}), "y_train: "),
    (one_class_protocol, (_X, _Y, _XT, _YT[1:], {}), "y_test: "),
    (one_class_protocol, (_X, _Y, _XT, _YT, {"extra_test": {"a": np.zeros(3)}}), "extra_test['a']: "),
]


@pytest.mark.parametrize("probe, args, start", _BAD_INPUTS,
                         ids=[f"{p.__name__}-{s.split(':')[0]}-{i}" for i, (p, _, s) in enumerate(_BAD_INPUTS)])
def test_every_input_of_a_probe_is_named_in_its_error(probe, args, start):
    with pytest.raises(ConfigError) as err:
        probe(*args[:-1], **args[-1])
    assert str(err.value).startswith(start), str(err.value)


def test_the_selection_caps_by_default_at_10000_rows_for_the_linear_and_20000_for_the_knn_probe():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20_001, 2)), np.arange(20_001) % 2
    Xte, yte = rng.normal(size=(10, 2)), np.arange(10) % 2
    res = knn_probe(X, y, Xte, yte, ks=(1,), metrics=("euclidean",), weights=("uniform",))
    # a stratified subsample of at most 20000 rows (19999: rounded per class), not all 20001
    assert res.selection["selection_rows"] == 19_999 and res.seed == 0 and res.selection["selection_seed"] == 0
    assert knn_probe(X[:20_000], y[:20_000], Xte, yte, ks=(1,), metrics=("euclidean",),
                     weights=("uniform",)).selection["selection_rows"] == 20_000
    res = linear_probe(X[:10_001], y[:10_001], Xte, yte, Cs=(1.0,), preprocessings=("none",))
    assert res.selection["selection_rows"] < 10_001 and res.seed == 0 and res.selection["selection_seed"] == 0
    assert linear_probe(X[:10_000], y[:10_000], Xte, yte, Cs=(1.0,),
                        preprocessings=("none",)).selection["selection_rows"] == 10_000


def test_fewshot_curve_hands_a_method_its_defaults_and_at_most_10000_unlabelled_rows(monkeypatch):
    from cvae_features.probes import registry

    calls = []

    def spy(Z_lab, y_lab, Z_unl, Z_test, params):
        calls.append((Z_lab.shape, Z_unl.shape, dict(params)))
        return np.zeros(Z_test.shape[0], dtype=np.int64)

    monkeypatch.setitem(registry._FEWSHOT, "spy", registry.FewShotMethod("spy", spy, True, "records its inputs", False))
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(10_004, 2)), np.arange(10_004) % 2
    res = fewshot_curve(X, y, X[:6], y[:6], labels_per_class=(1,), seeds=(3,), methods=("spy",))
    assert calls == [((2, 2), (10_000, 2), {"C": 1.0, "max_iter": 1000, "knn_neighbors": 1, "spreading_neighbors": 10,
                                            "spreading_alpha": 0.9, "n_jobs": None, "m2": None, "seed": 3})]
    assert res.curves["spy"]["1"]["n_unlabelled"] == [10_000] and res.settings["max_unlabelled"] == 10_000
    assert res.settings["spreading_alpha"] == 0.9 and res.methods == ["spy"]
    calls.clear()
    fewshot_curve(X[:10_002], y[:10_002], X[:6], y[:6], labels_per_class=(1,), seeds=(3,), methods=("spy",))
    assert calls[0][1] == (10_000, 2)  # every row not drawn
    # 'm2' named without settings: its default settings (a stand-in for it here: no networks trained)
    from cvae_features.semisup import M2Config

    monkeypatch.setitem(registry._FEWSHOT, "m2", registry.FewShotMethod("m2", spy, True, "stand-in", False))
    calls.clear()
    res = fewshot_curve(X[:40], y[:40], X[:6], y[:6], labels_per_class=(1,), seeds=(0,), methods=("m2",))
    assert calls[0][2]["m2"] == M2Config() and res.settings["m2"] == M2Config().to_dict()


def test_linear_probe_fits_with_1000_iterations_by_default(monkeypatch, sep_data):
    import cvae_features.probes.linear as linear

    seen = []
    real = linear._fit_logistic

    def spy(X, y, C, max_iter, model=None, solver="lbfgs", seed=0, start=None):
        seen.append((max_iter, solver, seed, start))
        return real(X, y, C, max_iter, model, solver, seed, start)

    monkeypatch.setattr(linear, "_fit_logistic", spy)
    Xtr, ytr, Xte, yte = sep_data
    assert linear_probe(Xtr, ytr, Xte, yte, Cs=(1.0,), preprocessings=("l2",)).converged
    assert seen == [(1000, "lbfgs", 0, None)] * 2  # the choice and the refit; narrow features: scikit-learn's lbfgs


def test_linear_probe_scores_every_class_it_knows_also_one_absent_from_the_test_rows(sep_data):
    Xtr, ytr, Xte, yte = sep_data
    far = np.random.default_rng(3).normal(size=(4, 6)) + 200.0  # class 9: known, never predicted, never tested
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # F1 of a class without rows or predictions: 0, and no warning
        res = linear_probe(np.vstack([Xtr, far]), np.r_[ytr, [9] * 4], Xte, yte, Cs=(1.0,), preprocessings=("none",))
    assert res.classes == [0, 1, 2, 9] and res.accuracy == 1.0
    assert res.macro_f1 == 0.75  # F1 1, 1, 1 and 0
    assert res.confusion_matrix[3] == [0, 0, 0, 0] and [row[3] for row in res.confusion_matrix] == [0, 0, 0, 0]
    assert len(res.confusion_matrix) == 4


def test_cluster_probe_defaults_reach_the_clusterer_and_the_silhouette_subsample(monkeypatch):
    import cvae_features.probes.cluster as cluster

    calls = []

    class Halves:  # a stand-in clusterer: no k-means on 5001 rows
        def predict(self, Xp):
            return (Xp[:, 0] > 0).astype(np.int64)

    def spy(Xp, n_clusters, method, **kwargs):
        calls.append((n_clusters, method, kwargs))
        return Halves()

    monkeypatch.setattr(cluster, "fit_clusters", spy)
    X = np.random.default_rng(0).normal(size=(5001, 2))
    res = cluster_probe(X, None, n_clusters=2, methods=("kmeans",))
    assert calls == [(2, "kmeans", {"n_init": 10, "seed": 0})]
    assert res.silhouette_rows == 5000 and res.seed == 0 and res.preprocessing == "l2"
    sil = np.sort(np.random.default_rng(0).choice(5001, 5000, replace=False))
    Xp = FeaturePrep("l2").fit_transform(X)
    from sklearn.metrics import silhouette_score

    assert res.methods["kmeans"]["silhouette"] == float(silhouette_score(Xp[sil], Halves().predict(Xp)[sil]))
    calls.clear()
    cluster_probe(X[:50], None, n_clusters=3, methods=("gmm",), n_init=3, seed=7)
    assert calls == [(3, "gmm", {"n_init": 3, "seed": 7})]


def test_the_prior_method_counts_every_component_of_the_prior_also_empty_ones():
    import torch

    class Prior:  # anything with assign(codes) -> component ids; 5 components, of which the rows use 3
        n_components, dim = 5, 2

        def assign(self, codes):
            return torch.where(codes[:, 0] > 0, 3, 0) + (codes[:, 1] > 0).long() * (codes[:, 0] <= 0).long()

    X = np.random.default_rng(1).normal(size=(40, 2))
    y = (X[:, 0] > 0).astype(np.int64)  # 2 classes: n_clusters 2
    res = cluster_probe(X, y, methods=("prior", "kmeans"), prior=Prior())
    pred = np.where(X[:, 0] > 0, 3, (X[:, 1] > 0).astype(np.int64))
    np.testing.assert_array_equal(res.assignments["prior"], pred)
    entry = res.methods["prior"]
    assert entry["cluster_sizes"] == np.bincount(pred, minlength=5).tolist() and len(entry["cluster_sizes"]) == 5
    assert entry["n_empty"] == 2 and res.methods["kmeans"]["n_empty"] == 0
    assert len(res.methods["kmeans"]["cluster_sizes"]) == 2 and res.n_clusters == 2
    for bad in (None, object(), type("NoCall", (), {"assign": 3})()):
        with pytest.raises(ConfigError, match="^the 'prior' cluster method needs the mixture prior"):
            cluster_probe(X, y, methods=("kmeans", "prior"), prior=bad)


def test_anomaly_probe_refuses_marks_that_are_not_0_or_1_instead_of_cutting_them():
    rng = np.random.default_rng(0)
    normal, test = rng.normal(size=(60, 3)), rng.normal(size=(6, 3))
    with pytest.raises(ConfigError, match=r"^is_anomaly: expected integer class labels, got non-integer values$"):
        anomaly_probe(normal, test, np.array([0, 0.5, 1, 0, 1, 0]), scores=("knn",))
    as_bools = anomaly_probe(normal, test, np.array([False, True, True, False, True, False]), scores=("knn",))
    as_ints = anomaly_probe(normal, test, np.array([0, 1, 1, 0, 1, 0]), scores=("knn",))
    assert as_bools.to_dict() | {"timings": None} == as_ints.to_dict() | {"timings": None}


# --------------------------------------------------------------------------- the cluster group's survivors

def test_fit_clusters_hands_its_settings_to_kmeans_and_the_diagonal_gmm():
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    from cvae_features.probes.cluster import fit_clusters, gmm_reg_covar

    Xp, _ = blobs(30, d=3, sep=2.0, seed=2)
    est = fit_clusters(Xp, 3)  # the defaults: k-means, 10 restarts, seed 0
    assert isinstance(est, KMeans) and (est.n_clusters, est.n_init, est.random_state) == (3, 10, 0)
    np.testing.assert_array_equal(est.cluster_centers_, KMeans(3, n_init=10, random_state=0).fit(Xp).cluster_centers_)
    est = fit_clusters(Xp, 2, "kmeans", n_init=2, seed=5)
    assert (est.n_clusters, est.n_init, est.random_state) == (2, 2, 5)
    est = fit_clusters(Xp, 3, "gmm", n_init=2, seed=5)
    assert isinstance(est, GaussianMixture)
    assert (est.n_components, est.covariance_type, est.reg_covar, est.random_state) == (3, "diag", gmm_reg_covar(Xp), 5)
    direct = GaussianMixture(3, covariance_type="diag", reg_covar=gmm_reg_covar(Xp), random_state=5).fit(Xp)
    np.testing.assert_array_equal(est.means_, direct.means_)
    cols = np.column_stack([np.r_[0.0, 0.2].repeat(5), np.r_[0.1, 0.7].repeat(5)])  # variances 0.01 and 0.09
    assert gmm_reg_covar(cols) == pytest.approx(1e-5)  # a total variance below 1 is scaled too
    with pytest.raises(ConfigError, match=r"^method: expected one of \['kmeans', 'gmm', 'umap-gmm', 'prior'\], "
                                          r"got 'dbscan'$"):
        fit_clusters(Xp, 3, "dbscan")
    with warnings.catch_warnings():  # four distinct rows for five clusters: scikit-learn's warning stays inside
        warnings.simplefilter("error")
        assert fit_clusters(np.repeat(Xp[:4], 3, axis=0), 5).n_clusters == 5


def test_check_methods_names_the_option_and_asks_for_umap_only_for_umap_gmm(monkeypatch):
    import sys

    from cvae_features.errors import MissingExtraError
    from cvae_features.probes.cluster import check_methods

    assert check_methods(["gmm", "kmeans"]) == ("gmm", "kmeans") and check_methods("prior") == ("prior",)
    with pytest.raises(ConfigError, match=r"^methods: expected one of \['kmeans', 'gmm', 'umap-gmm', 'prior'\], "
                                          r"got 'dbscan'$"):
        check_methods(("kmeans", "dbscan"))
    with pytest.raises(ConfigError, match=r"^cluster methods: expected one of"):
        check_methods(("dbscan",), "cluster methods")
    monkeypatch.setitem(sys.modules, "umap", None)  # umap-learn missing: refused only when umap-gmm is asked for
    assert check_methods(("kmeans", "gmm", "prior")) == ("kmeans", "gmm", "prior")
    with pytest.raises(MissingExtraError, match="umap-gmm cluster method needs umap-learn"):
        check_methods(("kmeans", "umap-gmm"))


def test_cluster_summary_lists_the_scores_each_method_has():
    from cvae_features.probes.cluster import ClusterProbeResult

    res = ClusterProbeResult(n_clusters=2, preprocessing="l2", n_rows=4, n_labelled=4, silhouette_rows=4, seed=0,
                             methods={"kmeans": {"cluster_sizes": [2, 2], "acc": 0.5, "nmi": 0.25, "ari": 0.125,
                                                 "silhouette": None},
                                      "gmm": {"cluster_sizes": [4, 0], "silhouette": 0.75}})
    assert res.summary() == {"kmeans_acc": 0.5, "kmeans_nmi": 0.25, "kmeans_ari": 0.125, "gmm_silhouette": 0.75}


def test_umap_gmm_is_the_n2d_recipe_written_out_on_tiny_inputs():
    umap = pytest.importorskip("umap", reason="umap-gmm needs umap-learn: pip install -e '.[dev]' installs it")
    from sklearn.mixture import GaussianMixture

    from cvae_features.probes.cluster import UmapGmm, fit_clusters

    X, _ = blobs(12, d=4, k=3, sep=6.0, seed=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = UmapGmm(3).fit(X)  # the defaults: 20 neighbours (here all 11 others), min_dist 0, seed 0
    assert not [w for w in caught if "n_jobs" in str(w.message)]  # one job asked for: UMAP has nothing to override
    settings = dict(n_components=3, n_neighbors=11, min_dist=0.0, random_state=0, n_jobs=1, init="spectral")
    assert {name: getattr(est.umap_, name) for name in settings} == settings
    np.testing.assert_array_equal(est.embedding_, umap.UMAP(**settings).fit_transform(X))
    gmm = est.mixture_
    assert (gmm.n_components, gmm.covariance_type, gmm.reg_covar, gmm.random_state) == (3, "full", 1e-6, 0)
    direct = GaussianMixture(3, covariance_type="full", reg_covar=1e-6, random_state=0).fit(est.embedding_)
    np.testing.assert_array_equal(gmm.means_, direct.means_)
    # predict: the fitted rows read their embedding, other rows are embedded by UMAP's transform first
    seen, mixture_predict = [], gmm.predict
    gmm.predict = lambda Z: seen.append(Z) or mixture_predict(Z)
    np.testing.assert_array_equal(est.predict(X), mixture_predict(est.embedding_))
    assert seen[-1] is est.embedding_
    other = X[:4] + 0.5
    np.testing.assert_array_equal(est.predict(other), mixture_predict(est.umap_.transform(other)))
    np.testing.assert_array_equal(seen[-1], est.umap_.transform(other))
    # fewer rows: at least 2 neighbours, a spectral start only with more rows than clusters + 1
    six = X[:6]
    assert (UmapGmm(2, n_neighbors=1).fit(six).umap_.n_neighbors, UmapGmm(4).fit(six).umap_.init) == (2, "spectral")
    assert UmapGmm(5).fit(six).umap_.init == "random"
    est = UmapGmm(2, n_neighbors=3, min_dist=0.25, seed=7).fit(six)
    assert (est.umap_.n_neighbors, est.umap_.min_dist, est.umap_.random_state, est.mixture_.random_state) == \
        (3, 0.25, 7, 7)
    est = fit_clusters(six, 2, "umap-gmm", seed=4)
    assert isinstance(est, UmapGmm) and (est.n_clusters, est.seed, est.n_neighbors, est.min_dist) == (2, 4, 20, 0.0)
