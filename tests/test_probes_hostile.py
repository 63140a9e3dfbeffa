"""`cvae probe` on hostile inputs: numeric class names, tiny stores, a test store that is the training store
again, class names that do not match. Real HDF5 stores written by the store module, real scikit-learn."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from cvae_cli.main import cli
from cvae_features.probes import DataTooSmall, anomaly_probe, cluster_probe
from test_cli_probe import make_store

NUMERIC = ["1", "2", "3"]


def invoke(*args):
    return CliRunner().invoke(cli, ["probe", *map(str, args)])


def _classes(counts, seed, d=5):
    """Well-separated classes with ``counts[i]`` rows of class id i (the same centres in every store)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(7).normal(size=(len(counts), d)) * 10
    y = np.repeat(np.arange(len(counts)), counts)
    return (centres[y] + rng.normal(size=(y.size, d))).astype(np.float32), y


def _one_line_error(result, *needles):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    for needle in needles:
        assert needle in result.output, result.output


@pytest.fixture(scope="module")
def numeric(tmp_path_factory):
    """Classes named "1", "2", "3" (ids 0, 1, 2) with different row counts, so the normal rows tell which won."""
    root = tmp_path_factory.mktemp("numeric")
    X, y = _classes([12, 18, 24], 0)
    Xt, yt = _classes([6, 6, 6], 1)
    return make_store(root / "train.h5", X, y, names=NUMERIC), make_store(root / "test.h5", Xt, yt, names=NUMERIC)


# -- 1. --normal-class: names win, an index needs index:N -------------------------------

@pytest.mark.parametrize("spec, name, n_normal", [("1", "1", 12), ("2", "2", 18), ("index:0", "1", 12),
                                                  ("index:2", "3", 24)])
def test_normal_class_is_a_name_and_index_is_explicit(numeric, spec, name, n_normal):
    train, test = numeric
    result = invoke(train, "--test", test, "--task", "anomaly", "--normal-class", spec, "--json")
    assert result.exit_code == 0, result.output
    rec = json.loads(result.stdout)["stores"]["train"][0]
    assert rec["normal_class"] == name
    assert rec["n_fit"] + rec["n_heldout"] == n_normal  # the rows of the class *named* `name`
    assert rec["n_test_anomalies"] == 12


def test_bare_number_that_is_no_class_name_is_refused(numeric):
    train, test = numeric
    # before: '0' silently picked id 0 (the class named "1")
    _one_line_error(invoke(train, "--test", test, "--task", "anomaly", "--normal-class", "0"),
                    "--normal-class", "'1', '2', '3'", "index:N", "got '0'")
    _one_line_error(invoke(train, "--test", test, "--task", "anomaly", "--normal-class", "index:3"),
                    "index:0 .. index:2")


def test_table_and_report_name_the_normal_class(numeric, tmp_path):
    train, test = numeric
    result = invoke(train, "--test", test, "--task", "anomaly", "--normal-class", "2", "-o", tmp_path / "rep")
    assert result.exit_code == 0, result.output
    assert "anomaly: normal class '2'" in result.stdout
    assert "anomaly: normal class '2'" in (tmp_path / "rep" / "report.txt").read_text()
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert data["stores"]["train"][0]["normal_class"] == "2"


# -- 2. stores too small for some probes: skip them with the reason, run the rest -----------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    X2, y2 = _classes([2, 2, 2], 2)
    X5, y5 = _classes([5, 5, 5], 3)
    X5t, y5t = _classes([5, 5, 5], 4)
    return {"2": make_store(root / "two.h5", X2, y2, names=NUMERIC),
            "5": make_store(root / "five.h5", X5, y5, names=NUMERIC),
            "5test": make_store(root / "five_test.h5", X5t, y5t, names=NUMERIC)}


def test_three_classes_of_two_images(tiny):
    # split: 1 training and 1 test row per class
    result = invoke(tiny["2"], "--json", "--seeds", "2")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    data = json.loads(result.stdout)
    assert [r["probe"] for r in data["stores"]["two"]] == ["fewshot"]
    reasons = {s["task"]: s["reason"] for s in data["skipped"]}
    assert set(reasons) == {"linear", "knn", "cluster", "anomaly"}
    assert "at least one class needs 2 training rows" in reasons["linear"] == reasons["knn"]
    assert "3 rows are too few for 3 clusters" in reasons["cluster"]
    assert "at least 2 rows per cluster (6)" in reasons["cluster"]
    assert "needs at least 2 per class" in reasons["anomaly"] and "'1' (id 0) has 1" in reasons["anomaly"]
    skipped_lines = [line for line in result.stderr.splitlines() if ": skipped, " in line]
    assert len(skipped_lines) == 4  # one line per skipped probe
    assert all(s["store"] == "two" for s in data["skipped"])


def test_three_classes_of_five_images(tiny, tmp_path):
    # split: 4 training and 1 test row per class; clustering 3 test rows into 3 clusters is refused
    result = invoke(tiny["5"], "--seeds", "2", "-o", tmp_path / "rep")
    assert result.exit_code == 0, result.output
    assert "note: cluster: skipped, on the test rows, 3 rows are too few for 3 clusters" in result.stderr
    for probe in ("linear", "knn", "fewshot", "one_class"):
        assert any(line.startswith(probe) for line in result.stdout.splitlines()), probe
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert [s["task"] for s in report["skipped"]] == ["cluster"]
    assert "skipped: five cluster: on the test rows" in (tmp_path / "rep" / "report.txt").read_text()
    # with a 15-row test store every probe runs
    full = invoke(tiny["5"], "--test", tiny["5test"], "--seeds", "2", "--json")
    assert full.exit_code == 0, full.output
    data = json.loads(full.stdout)
    assert data["skipped"] == [] and len(data["stores"]["five"]) == 5


def test_no_probe_can_run_is_one_line_and_non_zero(tiny):
    _one_line_error(invoke(tiny["2"], "--task", "linear,cluster"), "no probe could run",
                    "linear: every class has at most 1", "cluster: on the test rows")
    # a normal class with too few rows for the default k=5
    _one_line_error(invoke(tiny["5"], "--test", tiny["5test"], "--task", "anomaly", "--normal-class", "3"),
                    "normal class '3'", "at least 6 normal rows are needed")


def test_library_minimums_are_exact():
    rng = np.random.default_rng(0)
    normal, test = rng.normal(size=(6, 3)), rng.normal(size=(10, 3))
    assert anomaly_probe(normal, test, seed=0).n_fit == 5  # 6 rows: 5 to fit k=5, 1 held out
    with pytest.raises(DataTooSmall, match="at least 6 normal rows"):
        anomaly_probe(normal[:5], test)
    assert anomaly_probe(normal[:3], test, k=1, gmm_components=1).n_fit == 2
    with pytest.raises(DataTooSmall, match="at least 3 normal rows"):
        anomaly_probe(normal[:2], test, k=1, gmm_components=1)
    X, y = _classes([3, 3, 3], 5)
    assert cluster_probe(X[::3][:3].repeat(2, axis=0), None, n_clusters=3).n_clusters == 3  # 6 rows: enough
    with pytest.raises(DataTooSmall, match="5 rows are too few for 3 clusters"):
        cluster_probe(X[:5], None, n_clusters=3)
    with pytest.raises(DataTooSmall, match="1 labelled class"):
        cluster_probe(X, np.zeros(9, dtype=int))
    # a silhouette subsample of 3 rows in 3 clusters has no silhouette (it used to raise)
    res = cluster_probe(X, y, max_silhouette_rows=3, methods=("kmeans",))
    assert res.methods["kmeans"]["silhouette"] is None or -1 <= res.methods["kmeans"]["silhouette"] <= 1


# -- 3. the test store is the training store again; class names that do not match ------------

@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    X, y = _classes([20, 20, 20], 6)
    Xt, yt = _classes([8, 8, 8], 7)
    return root, X, y, Xt, yt, make_store(root / "train.h5", X, y, names=["shirt", "shoe", "bag"])


def test_test_store_equal_to_train_is_refused(pair):
    root, X, y, *_, train = pair
    _one_line_error(invoke(train, "--test", train, "--task", "linear"), "is the TRAIN store itself")
    copy = shutil.copy(train, root / "copy.h5")
    _one_line_error(invoke(train, "--test", copy, "--task", "linear"),
                    "all 60 rows are TRAIN rows too (same keys and features)")
    # a subset of the training rows (same keys, same features) is the same thing
    subset = make_store(root / "subset.h5", X[:30], y[:30], names=["shirt", "shoe", "bag"])
    _one_line_error(invoke(train, "--test", subset, "--task", "linear"), "all 30 rows are TRAIN rows too")
    # and --compare-test the same as --compare
    _one_line_error(invoke(train, "--compare", copy, "--compare-test", copy, "--task", "linear"),
                    "is the TRAIN store itself")


def test_some_test_rows_from_train_are_a_warning(pair):
    root, X, y, Xt, yt, train = pair
    mixed = make_store(root / "mixed.h5", np.vstack([X[:5], Xt[5:]]), np.r_[y[:5], yt[5:]],
                       names=["shirt", "shoe", "bag"])
    result = invoke(train, "--test", mixed, "--task", "linear", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["warnings"] == ["5 of 24 TEST rows are TRAIN rows too (same key and "
                                                     "features); their scores flatter the features"]
    assert "warning: 5 of 24 TEST rows are TRAIN rows too" in result.stderr


def test_disjoint_class_names_warn(pair, tmp_path):
    root, *_, Xt, yt, train = pair
    other = make_store(root / "animals.h5", Xt, yt, names=["cat", "dog", "cow"])
    result = invoke(train, "--test", other, "--task", "linear", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["stores"]["train"][0]["accuracy"] == 0.0
    (warning,) = data["warnings"]
    assert "TEST class names ['cat', 'dog', 'cow'] share none with TRAIN's ['shirt', 'shoe', 'bag']" in warning
    assert f"warning: {warning}" in result.stderr
    rep = invoke(train, "--test", other, "--task", "linear", "-o", tmp_path / "rep")
    assert rep.exit_code == 0, rep.output
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["warnings"] == [warning]
    assert f"warning: {warning}" in (tmp_path / "rep" / "report.txt").read_text()


def test_partly_different_class_names_warn(pair):
    root, *_, Xt, yt, train = pair
    other = make_store(root / "hat.h5", Xt, yt, names=["shirt", "shoe", "hat"])
    result = invoke(train, "--test", other, "--task", "linear", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["warnings"] == [
        "TEST and TRAIN class names differ: only in TEST ['hat'] (those rows can only be misclassified); "
        "only in TRAIN ['bag']"]
    same = invoke(train, "--test", make_store(root / "same.h5", Xt, yt, names=["shirt", "shoe", "bag"]),
                  "--task", "linear", "--json")
    assert json.loads(same.stdout)["warnings"] == [] and "warning" not in same.stderr
