"""The probe registries: a probe or few-label method registered in a test runs everywhere, then leaves no trace."""

import csv
import json
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
from click.testing import CliRunner

from cvae_cli.main import cli
from cvae_features import report
from cvae_features.errors import ConfigError
from cvae_features.probes import (FewShotMethod, ProbeSpec, draw_labelled, fewshot_curve, fewshot_methods,
                                  get_fewshot_method, get_probe, probe_names, probe_stores, register_fewshot_method,
                                  register_probe, unregister_fewshot_method, unregister_probe)
from cvae_features.probes._common import FeaturePrep, ResultRecord
from cvae_features.store import StoreWriter

BUILTIN_TASKS = ("linear", "knn", "cluster", "fewshot", "anomaly")
BUILTIN_METHODS = ("logistic", "knn", "label_spreading", "self_training", "m2")
DEFAULT_METHODS = BUILTIN_METHODS[:4]  # m2 runs when named


def make_store(path, X, y, names=("a", "b", "c")):
    keys = [f"img/{i:04d}.png" for i in range(len(X))]
    with StoreWriter.create(path, feature_kind="raw", dim=X.shape[1], source="generated", plan_keys=keys,
                            preprocess={"size": 8, "channels": 1, "resize": "crop"},
                            label_names=list(names) if (y >= 0).any() else []) as w:
        w.write_batch(np.arange(len(X)), X, y)
    return path


def blobs(n, seed, d=4):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(7).normal(size=(3, d)) * 10
    y = np.arange(n) % 3
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


@dataclass
class MeanNormResult(ResultRecord):
    probe = "mean-norm"
    mean_norm_train: float
    mean_norm_test: float
    norm_cv: float  # std / mean of the test norms: NaN when every test row is zero

    def summary(self):
        return {"mean_norm": self.mean_norm_test, "norm_cv": self.norm_cv}


def _run_mean_norm(data, ctx):
    train, test = np.linalg.norm(data.X_train, axis=1), np.linalg.norm(data.X_test, axis=1)
    with np.errstate(invalid="ignore"):
        cv = float(test.std() / test.mean())
    ctx.note(f"mean-norm: {test.size} test rows")
    return MeanNormResult(float(train.mean()), float(test.mean()), cv)


def _plot_mean_norm(items, out, context):
    paths = []
    for store, rec in items:
        path = out / f"mean_norm_{report.file_label(store)}.txt"
        path.write_text(f"{rec.mean_norm_test:.6f}\n")
        paths.append(path)
    return paths


@pytest.fixture
def mean_norm():
    """A 'mean-norm' probe registered for one test, unregistered after it (the registry stays as it was)."""
    spec = register_probe("mean-norm", _run_mean_norm, needs_labels=False, plots=_plot_mean_norm,
                          table_lines=lambda rec, where: [f"mean-norm{where}: {rec.mean_norm_test:.2f}"],
                          description="mean Euclidean norm of the feature rows")
    yield spec
    unregister_probe("mean-norm")
    assert probe_names() == BUILTIN_TASKS


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("reg")
    Xtr, ytr = blobs(90, 0)
    Xte, yte = blobs(30, 1)
    return {"train": make_store(root / "train.h5", Xtr, ytr), "test": make_store(root / "test.h5", Xte, yte),
            "zero": make_store(root / "zero.h5", np.zeros((30, 4), np.float32), np.full(30, -1)),
            "X": (Xtr, Xte)}


def test_builtins_are_registered():
    assert probe_names() == BUILTIN_TASKS and fewshot_methods() == BUILTIN_METHODS
    assert fewshot_methods(default_only=True) == DEFAULT_METHODS and not get_fewshot_method("m2").default
    assert [get_probe(t).needs_labels for t in BUILTIN_TASKS] == [True, True, False, True, False]
    assert get_probe("anomaly").records == ("anomaly", "one_class") and get_probe("knn").records == ("knn",)


def test_registered_probe_runs_in_the_suite_and_the_report(mean_norm, stores, tmp_path):
    assert isinstance(mean_norm, ProbeSpec) and probe_names() == BUILTIN_TASKS + ("mean-norm",)
    run = probe_stores([("feats", stores["train"], stores["test"])], "linear,mean-norm", seed=0)
    Xtr, Xte = stores["X"]
    linear, rec = run.results["feats"]
    assert linear.probe == "linear" and rec.probe == "mean-norm"
    expected = np.linalg.norm(Xte, axis=1).mean()
    assert rec.mean_norm_train == pytest.approx(np.linalg.norm(Xtr, axis=1).mean(), rel=1e-6)
    assert rec.mean_norm_test == pytest.approx(expected, rel=1e-6)
    assert run.meta["tasks"] == ["linear", "mean-norm"] and "mean-norm: 30 test rows" in run.notes

    written = report.write_report(run.results, tmp_path, meta=run.meta, **run.report_inputs())
    assert tmp_path / "mean_norm_feats.txt" in written
    assert float((tmp_path / "mean_norm_feats.txt").read_text()) == pytest.approx(expected, rel=1e-5)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["stores"]["feats"][1]["mean_norm_test"] == pytest.approx(expected, rel=1e-6)
    with (tmp_path / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["store", "probe", "metric", "value", "std"]
    row = next(r for r in rows if r["probe"] == "mean-norm" and r["metric"] == "mean_norm")
    assert float(row["value"]) == pytest.approx(expected, rel=1e-6) and row["std"] == ""
    text = (tmp_path / "report.txt").read_text()
    assert f"mean-norm: {expected:.2f}" in text and "mean_norm" in text


def test_all_runs_registered_probe_last_and_labels_are_checked(mean_norm, stores):
    run = probe_stores([("zero", stores["zero"], None)], "all")
    assert [r.probe for r in run.results["zero"]][-1] == "mean-norm"
    assert run.meta["tasks"][-1] == "mean-norm"
    register_probe("needs-y", lambda data, ctx: pytest.fail("must not run"), needs_labels=True,
                   description="a probe that needs labels")
    try:
        run = probe_stores([("zero", stores["zero"], None)], "needs-y,mean-norm")
    finally:
        unregister_probe("needs-y")
    assert run.skipped == [{"store": "zero", "task": "needs-y", "reason": "needs labels and TRAIN has none"}]
    assert [r.probe for r in run.results["zero"]] == ["mean-norm"]


def test_cli_task_option_takes_a_registered_probe(mean_norm, stores):
    help_text = CliRunner().invoke(cli, ["probe", "--help"]).output
    assert "mean-norm (mean Euclidean norm of the feature rows)" in " ".join(help_text.split())
    result = CliRunner().invoke(cli, ["probe", str(stores["train"]), "--test", str(stores["test"]),
                                      "--task", "mean-norm", "--json"])
    assert result.exit_code == 0, result.output
    recs = json.loads(result.stdout)["stores"]["train"]
    assert [r["probe"] for r in recs] == ["mean-norm"]
    assert recs[0]["mean_norm_test"] == pytest.approx(np.linalg.norm(stores["X"][1], axis=1).mean(), rel=1e-6)


def test_an_unregistered_probe_is_refused_in_one_line(stores):
    result = CliRunner().invoke(cli, ["probe", str(stores["train"]), "--task", "mean-norm"])
    assert result.exit_code == 1
    assert result.output.strip() == ("Error: --task: expected 'all' or some of linear,knn,cluster,fewshot,anomaly, "
                                     "got mean-norm")


def test_registration_is_checked(mean_norm):
    with pytest.raises(ConfigError, match="probe 'mean-norm' is registered already"):
        register_probe("mean-norm", _run_mean_norm, needs_labels=False, description="again")
    for name in ("all", "Bad Name", "a,b", ""):
        with pytest.raises(ConfigError, match="probe name: expected lowercase"):
            register_probe(name, _run_mean_norm, needs_labels=False, description="x")
    with pytest.raises(ConfigError, match="one-line description"):
        register_probe("two-lines", _run_mean_norm, needs_labels=False, description="a\nb")
    with pytest.raises(ConfigError, match="expected one of linear, knn"):
        unregister_probe("nope")
    replaced = register_probe("mean-norm", _run_mean_norm, needs_labels=True, description="replaced",
                              replace=True)
    assert get_probe("mean-norm") is replaced and replaced.needs_labels
    assert probe_names() == BUILTIN_TASKS + ("mean-norm",)


# --------------------------------------------------------------------------- few-label methods

def _nearest_mean(Z_lab, y_lab, Z_unl, Z_test, params):
    from sklearn.neighbors import NearestCentroid

    assert Z_unl is None  # it said it uses no unlabelled rows
    return NearestCentroid().fit(Z_lab, y_lab).predict(Z_test)


@pytest.fixture
def nearest_mean():
    method = register_fewshot_method("nearest_mean", _nearest_mean, uses_unlabelled=False,
                                     description="nearest class mean of the labelled rows")
    yield method
    unregister_fewshot_method("nearest_mean")
    assert fewshot_methods() == BUILTIN_METHODS


def test_registered_fewshot_method_appears_in_the_curve(nearest_mean, stores):
    from sklearn.neighbors import NearestCentroid

    assert isinstance(nearest_mean, FewShotMethod)
    (Xtr, ytr), (Xte, yte) = blobs(90, 0), blobs(30, 1)
    noise = np.random.default_rng(3)  # overlapping classes, so each draw of labelled rows scores differently
    Xtr, Xte = Xtr + noise.normal(scale=8, size=Xtr.shape), Xte + noise.normal(scale=8, size=Xte.shape)
    res = fewshot_curve(Xtr, ytr, Xte, yte, labels_per_class=(1, 3), seeds=3)
    assert res.methods == list(DEFAULT_METHODS) + ["nearest_mean"]
    prep = FeaturePrep("l2").fit(Xtr)
    for k in (1, 3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NearestCentroid's variance with one row a class
            expected = [float(np.mean(NearestCentroid().fit(prep.transform(Xtr[lab]), ytr[lab])
                                      .predict(prep.transform(Xte)) == yte))
                        for lab in (draw_labelled(ytr, k, s) for s in range(3))]
        curve = res.curves["nearest_mean"][str(k)]
        assert len(set(expected)) == 3 and curve["accuracies"] == pytest.approx(expected)
        assert curve["mean"] == pytest.approx(np.mean(expected)) and curve["n_unlabelled"] is None
    assert res.curves["label_spreading"]["1"]["n_unlabelled"] == [87, 87, 87]


def test_registered_fewshot_method_reaches_the_report(nearest_mean, stores, tmp_path):
    run = probe_stores([("feats", stores["train"], stores["test"])], "fewshot", labels_per_class=(1, 2), seeds=2)
    report.write_report(run.results, tmp_path, meta=run.meta)
    data = json.loads((tmp_path / "report.json").read_text())
    assert list(data["stores"]["feats"][0]["curves"]) == list(DEFAULT_METHODS) + ["nearest_mean"]
    metrics = {r["metric"] for r in data["summary"]}
    assert {"nearest_mean@1", "nearest_mean@2"} <= metrics and (tmp_path / "fewshot.png").stat().st_size > 0


def test_unlabelled_rows_reach_methods_that_use_them():
    seen = []

    def spy(Z_lab, y_lab, Z_unl, Z_test, params):
        seen.append((Z_lab.shape, Z_unl.shape, params["C"], params["seed"]))
        return np.full(Z_test.shape[0], y_lab[0])

    register_fewshot_method("spy", spy, uses_unlabelled=True, description="records what it is given", default=False)
    try:
        assert "spy" in fewshot_methods() and "spy" not in fewshot_methods(default_only=True)
        Xtr, ytr = blobs(60, 0)
        res = fewshot_curve(Xtr, ytr, *blobs(30, 1), labels_per_class=(2,), seeds=(4, 7), methods=("spy",), C=0.5,
                            max_unlabelled=20)
        assert "spy" not in fewshot_curve(Xtr, ytr, *blobs(30, 1), labels_per_class=(2,), seeds=1).methods
    finally:
        unregister_fewshot_method("spy")
    assert seen == [((6, 4), (20, 4), 0.5, 4), ((6, 4), (20, 4), 0.5, 7)]  # each draw's seed
    assert res.curves["spy"]["2"]["n_unlabelled"] == [20, 20]
    assert res.curves["spy"]["2"]["mean"] == pytest.approx(1 / 3)


def test_fewshot_method_errors_are_one_line(nearest_mean):
    Xtr, ytr = blobs(60, 0)
    with pytest.raises(ConfigError, match="methods: expected one of .*nearest_mean.*, got 'svm'"):
        fewshot_curve(Xtr, ytr, *blobs(30, 1), labels_per_class=(1,), seeds=1, methods=("svm",))
    register_fewshot_method("short", lambda *a: np.zeros(3, int), uses_unlabelled=False, description="wrong shape")
    try:
        with pytest.raises(ConfigError, match=r"'short': predict returned shape \(3,\), expected \(30,\)"):
            fewshot_curve(Xtr, ytr, *blobs(30, 1), labels_per_class=(1,), seeds=1, methods=("short",))
    finally:
        unregister_fewshot_method("short")
    with pytest.raises(ConfigError, match="few-label method 'knn' is registered already"):
        register_fewshot_method("knn", _nearest_mean, uses_unlabelled=False, description="x")


def test_the_cluster_hooks_pass_the_test_rows_the_counts_methods_and_seed_and_note_the_default_count():
    from cvae_features.probes import DataTooSmall, cluster_probe
    from cvae_features.probes._builtin import _check_cluster, _run_cluster
    from cvae_features.probes.registry import ProbeContext
    from cvae_features.probes.suite import ProbeData

    X_train, y_train = blobs(9, seed=1)
    X_test, y_test = blobs(30, seed=2)

    def data(y):
        return ProbeData(X_train=X_train, y_train=y_train, X_test=X_test, y_test=y, label_names=["a", "b", "c"],
                         keys_test=[])

    def same(rec, want):  # all but the timings
        return {**rec.to_dict(), "timings": None} == {**want.to_dict(), "timings": None}

    ctx = ProbeContext(seed=3)
    rec = _run_cluster(data(y_test), ctx)  # the test labels' 3 classes, the default methods
    want = cluster_probe(X_test, y_test, methods=("kmeans", "gmm"), seed=3)
    assert same(rec, want) and ctx.notes == [] and (rec.n_clusters, rec.n_rows) == (3, 30)
    ctx = ProbeContext(seed=4, n_clusters=4, cluster_methods=("gmm",))
    rec = _run_cluster(data(y_test), ctx)
    assert same(rec, cluster_probe(X_test, y_test, n_clusters=4, methods=("gmm",), seed=4))
    unlabelled = np.full(30, -1)
    ctx = ProbeContext(cluster_methods=("kmeans",))
    rec = _run_cluster(data(unlabelled), ctx)  # no test labels: 10 clusters, noted
    assert (rec.n_clusters, rec.n_labelled, list(rec.methods)) == (10, 0, ["kmeans"])
    assert ctx.notes == ["cluster: no test labels, so 10 clusters and no ACC/NMI/ARI (set the count with --clusters)"]
    ctx = ProbeContext(n_clusters=3, cluster_methods=("kmeans",))
    assert _run_cluster(data(unlabelled), ctx).n_clusters == 3 and ctx.notes == []
    with pytest.raises(DataTooSmall, match=r"^on the test rows, 30 rows are too few for 16 clusters"):
        _run_cluster(data(y_test), ProbeContext(n_clusters=16))
    # the 'prior' method asks the stores for their model's prior: these features come from no store
    for hook in (_check_cluster, _run_cluster):
        with pytest.raises(ConfigError, match="^cluster method 'prior': the features come from no store"):
            hook(data(y_test), ProbeContext(cluster_methods=("kmeans", "prior")))
    assert _check_cluster(data(y_test), ProbeContext()) is None
    assert _check_cluster(data(y_test), ProbeContext(cluster_methods=("gmm", "kmeans"))) is None
    with pytest.raises(ConfigError, match=r"^cluster methods: expected one of \['kmeans', 'gmm', 'umap-gmm', "
                                          r"'prior'\], got 'dbscan'$"):
        _check_cluster(data(y_test), ProbeContext(cluster_methods=("kmeans", "dbscan")))


def test_the_decorator_forms_pass_every_setting_through_and_replace_when_asked():
    from cvae_features.probes.registry import probe_for_record

    def check(data, ctx):
        pass

    def plots(items, out, context):
        return []

    def lines(record, where):
        return []

    decorate = register_probe("deco", needs_labels=1, description="decorated", records=["deco", "deco_extra"],
                              check=check, plots=plots, table_lines=lines)
    try:
        assert decorate(_run_mean_norm) is _run_mean_norm
        spec = get_probe("deco")
        assert (spec.name, spec.run, spec.description, spec.records, spec.check, spec.plots, spec.table_lines) == (
            "deco", _run_mean_norm, "decorated", ("deco", "deco_extra"), check, plots, lines)
        assert spec.needs_labels is True
        assert probe_for_record("deco_extra") is spec and probe_for_record("one_class") is get_probe("anomaly")
        assert probe_for_record("no-such-record") is None
        register_probe("deco", needs_labels=0, description="again", replace=True)(_plot_mean_norm)
        spec = get_probe("deco")
        assert (spec.run, spec.needs_labels, spec.description, spec.records, spec.check, spec.plots,
                spec.table_lines) == (_plot_mean_norm, False, "again", ("deco",), None, None, None)
    finally:
        unregister_probe("deco")
    assert probe_names() == BUILTIN_TASKS

    decorate = register_fewshot_method("deco_m", uses_unlabelled=1, description="decorated method", default=0)
    try:
        assert decorate(_nearest_mean) is _nearest_mean
        method = get_fewshot_method("deco_m")
        assert (method.name, method.predict, method.description) == ("deco_m", _nearest_mean, "decorated method")
        assert method.uses_unlabelled is True and method.default is False
        assert "deco_m" in fewshot_methods() and "deco_m" not in fewshot_methods(default_only=True)
        register_fewshot_method("deco_m", uses_unlabelled=0, description="again", default=1, replace=True)(blobs)
        method = get_fewshot_method("deco_m")
        assert (method.predict, method.uses_unlabelled, method.description, method.default) == (
            blobs, False, "again", True)
        assert fewshot_methods(default_only=True) == DEFAULT_METHODS + ("deco_m",)
        assert register_fewshot_method("deco_m", make_store, uses_unlabelled=False, description="thrice",
                                       replace=True) is get_fewshot_method("deco_m")
        assert get_fewshot_method("deco_m").predict is make_store
    finally:
        unregister_fewshot_method("deco_m")
    assert fewshot_methods() == BUILTIN_METHODS


def test_descriptions_of_blanks_only_and_names_that_cannot_be_looked_up_are_refused():
    for description in ("   ", "", None):
        with pytest.raises(ConfigError, match="expected a one-line description"):
            register_probe("blank", _run_mean_norm, needs_labels=False, description=description)
        with pytest.raises(ConfigError, match="expected a one-line description"):
            register_fewshot_method("blank", _nearest_mean, uses_unlabelled=False, description=description)
    with pytest.raises(ConfigError, match=r"probe: expected one of linear, knn, cluster, fewshot, anomaly, got \['x'\]"):
        get_probe(["x"])
    with pytest.raises(ConfigError, match=r"methods: expected one of logistic, knn, .*, m2, got \['x'\]"):
        get_fewshot_method(["x"])
    assert "blank" not in probe_names() and "blank" not in fewshot_methods()
