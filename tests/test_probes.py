"""Probes on generated data: known answers, honest selection (no test-label leakage), clear errors."""

import json

import numpy as np
import pytest

from cvae_features.errors import ConfigError
from cvae_features.probes import (FeaturePrep, anomaly_probe, anomaly_scores, cluster_accuracy, cluster_probe,
                                  draw_labelled, fewshot_curve, knn_probe, linear_probe, one_class_protocol)
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
