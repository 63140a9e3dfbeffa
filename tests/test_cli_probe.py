"""`cvae probe` end to end on real HDF5 stores written by the store module."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cvae_cli.main import cli
from cvae_features.store import StoreWriter

from _stores import pca_fields

PRE = {"size": 8, "channels": 1, "resize": "crop"}
NAMES = ["shirt", "shoe", "bag"]


def _blobs(n, seed, d=6):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(3, d)) * 10  # same classes in every store
    y = np.arange(n) % 3
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def make_store(path, X, y, *, names=NAMES, extras=None, complete=True, kind="raw", basis_scale=1.0):
    """Write a raw-feature store; ``complete=False`` leaves two planned rows pending."""
    n = len(X)
    keys = [f"img/{i:04d}.png" for i in range(n + (0 if complete else 2))]
    pca = None
    if kind == "pca":
        pca = {"mean": np.zeros(64), "components": basis_scale * np.eye(X.shape[1], 64),
               "explained_variance": np.ones(X.shape[1])}
    with StoreWriter.create(path, feature_kind=kind, dim=X.shape[1], preprocess=PRE, source="generated",
                            plan_keys=keys, label_names=names if (y >= 0).any() else [],
                            extras=tuple(extras or ()), **pca_fields(pca, PRE)) as w:
        w.write_batch(np.arange(n), X, y, extras=extras)
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    Xtr, ytr = _blobs(150, 0)
    Xte, yte = _blobs(60, 1)
    return {
        "train": make_store(root / "train.h5", Xtr, ytr,
                            extras={"recon_error": np.linalg.norm(Xtr, axis=1).astype(np.float32)}),
        "test": make_store(root / "test.h5", Xte, yte,
                           extras={"recon_error": np.linalg.norm(Xte, axis=1).astype(np.float32)}),
        "other": make_store(root / "pixels.h5", Xtr[:, :4] * 2, ytr),
        "unlabelled": make_store(root / "unlabelled.h5", Xtr, np.full(150, -1)),
        "incomplete": make_store(root / "partial.h5", Xte, yte, complete=False),
        "narrow": make_store(root / "narrow.h5", Xte[:, :4], yte),
        "pca": make_store(root / "pca.h5", Xte, yte, kind="pca"),
        "pca_train": make_store(root / "pca_train.h5", Xtr, ytr, kind="pca", basis_scale=2.0),
    }


def invoke(*args):
    return CliRunner().invoke(cli, ["probe", *map(str, args)])


FAST = ("--labels-per-class", "1,3", "--seeds", "2")


def test_table_with_test_store(stores):
    result = invoke(stores["train"], "--test", stores["test"], *FAST)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "train: 150 train / 60 test rows, dim 6" in out
    header = next(line for line in out.splitlines() if line.startswith("probe"))
    assert header.split() == ["probe", "metric", "train"]
    acc = next(line for line in out.splitlines() if line.startswith("linear"))
    assert acc.split() == ["linear", "accuracy", "1.0000"]
    for metric in ("kmeans_acc", "label_spreading@3", "knn_mean_auroc"):
        assert metric in out
    assert "recon_error_mean_auroc" not in out
    assert "note: anomaly: recon_error left out of the one-class protocol" in result.stderr


def test_json_records_every_task(stores):
    result = invoke(stores["train"], "--test", stores["test"], *FAST, "--json", "--seed", "1")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    recs = {r["probe"]: r for r in data["stores"]["train"]}
    assert list(recs) == ["linear", "knn", "cluster", "fewshot", "one_class"]
    assert recs["linear"]["accuracy"] == 1.0 and recs["knn"]["accuracy"] == 1.0
    assert recs["cluster"]["methods"]["kmeans"]["acc"] == 1.0
    assert recs["fewshot"]["labels_per_class"] == [1, 3] and recs["fewshot"]["seeds"] == [0, 1]
    assert recs["one_class"]["classes"] == [0, 1, 2]
    assert data["meta"]["seed"] == 1 and data["meta"]["runs"]["train"]["split"] is None


def test_split_when_no_test_store_and_report_dir(stores, tmp_path):
    out = tmp_path / "rep"
    result = invoke(stores["train"], "--task", "linear,anomaly", "--normal-class", "shoe", "--fpr", "0.1",
                    "-o", out)
    assert result.exit_code == 0, result.output
    assert "split 120/30 of" in result.output
    data = json.loads((out / "report.json").read_text())
    split = data["meta"]["runs"]["train"]["split"]
    assert split == {"from": str(stores["train"]), "test_fraction": 0.2, "seed": 0, "stratified": True,
                     "n_train": 120, "n_test": 30}
    anomaly = data["stores"]["train"][1]
    assert anomaly["probe"] == "anomaly" and anomaly["target_fpr"] == 0.1
    assert anomaly["n_fit"] + anomaly["n_heldout"] == 40  # the 'shoe' rows of the 120 training rows
    assert anomaly["scores"]["knn"]["auroc"] == 1.0 and "recon_error" in anomaly["scores"]
    files = {p.name for p in out.iterdir()}
    assert {"report.json", "results.csv", "report.txt", "confusion_train.png", "roc_train.png",
            "map_train.png", "anomaly_scores_train.csv"} <= files
    assert all((out / f).stat().st_size > 0 for f in files)
    scores = (out / "anomaly_scores_train.csv").read_text().splitlines()
    assert scores[0].startswith("key,knn,flag_knn") and len(scores) == 31 and scores[1].startswith("img/")


def test_compare_side_by_side(stores):
    result = invoke(stores["train"], "--test", stores["test"], "--task", "linear,knn",
                    "--compare", stores["other"], "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert list(data["stores"]) == ["train", "pixels"]
    assert data["meta"]["runs"]["pixels"]["split"]["n_test"] == 30
    table = invoke(stores["train"], "--test", stores["test"], "--task", "linear",
                   "--compare", stores["other"]).output
    assert next(line for line in table.splitlines() if line.startswith("probe")).split() == \
        ["probe", "metric", "train", "pixels"]


def test_unlabelled_store_runs_unsupervised_parts(stores):
    result = invoke(stores["unlabelled"], "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    recs = data["stores"]["unlabelled"]
    assert [r["probe"] for r in recs] == ["cluster", "anomaly"]
    assert recs[0]["n_clusters"] == 10 and "acc" not in recs[0]["methods"]["kmeans"]
    assert "auroc" not in recs[1]["scores"]["knn"] and recs[1]["n_test_anomalies"] is None
    notes = " ".join(data["meta"]["notes"])
    assert "linear, knn, fewshot: skipped, these tasks need labels and TRAIN has none" in notes
    assert "note: linear, knn, fewshot: skipped" in result.stderr


def test_refusals_are_one_line(stores):
    cases = [
        ((stores["incomplete"],), "incomplete (2 planned rows pending)"),
        ((stores["train"], "--test", stores["narrow"]), "feature width 4 differs from TRAIN's 6"),
        ((stores["train"], "--test", stores["pca"]), "feature kind 'pca' differs from TRAIN's 'raw'"),
        ((stores["pca_train"], "--test", stores["pca"]), "model fingerprint"),
        ((stores["train"], "--task", "linear,svm"), "--task: expected 'all' or some of"),
        ((stores["train"], "--normal-class", "hat", "--task", "anomaly"), "--normal-class: expected one of"),
        ((stores["train"], "--labels-per-class", "1,500", "--task", "fewshot"), "500 labels per class requested"),
        ((stores["train"].parent / "missing.h5",), "missing.h5"),
        ((stores["train"], "--task", "cluster", "--cluster-methods", "kmeans,dbscan"),
         "cluster methods: expected one of ['kmeans', 'gmm', 'umap-gmm', 'prior'], got 'dbscan'"),
        ((stores["train"], "--task", "fewshot,linear", "--fewshot-methods", "knn,svm"),
         "few-label methods: expected one of ['logistic', 'knn', 'label_spreading', 'self_training', 'm2'], "
         "got 'svm'"),
    ]
    for args, message in cases:
        result = invoke(*args)
        assert result.exit_code != 0, args
        assert message in result.output, result.output
        assert "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_label_names_are_matched_between_stores(tmp_path, stores):
    Xte, yte = _blobs(60, 1)
    # the same classes stored in another order: ids differ, names agree
    order = ["bag", "shirt", "shoe"]
    remap = np.array([order.index(n) for n in NAMES])
    path = make_store(tmp_path / "reordered.h5", Xte, remap[yte], names=order)
    result = invoke(stores["train"], "--test", path, "--task", "linear", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["stores"]["train"][0]["accuracy"] == 1.0


def test_normal_store_and_labelled_test_store(tmp_path):
    # a store of normal rows only (no labels) and a test store with 'good' and 'defect' rows
    rng = np.random.default_rng(4)
    normal = make_store(tmp_path / "good.h5", rng.normal(size=(80, 5)).astype(np.float32), np.full(80, -1))
    X = np.vstack([rng.normal(size=(30, 5)), rng.normal(size=(10, 5)) + 6]).astype(np.float32)
    y = np.r_[np.zeros(30, int), np.ones(10, int)]
    test = make_store(tmp_path / "check.h5", X, y, names=["good", "defect"])
    result = invoke(normal, "--test", test, "--task", "anomaly", "--normal-class", "good", "--json")
    assert result.exit_code == 0, result.output
    rec = json.loads(result.stdout)["stores"]["good"][0]
    assert rec["n_fit"] + rec["n_heldout"] == 80 and rec["n_test_anomalies"] == 10
    assert rec["scores"]["mahalanobis"]["auroc"] > 0.99
    plain = invoke(normal, "--test", test, "--task", "anomaly", "--json")
    assert plain.exit_code == 0, plain.output
    assert "name the normal test class with --normal-class" in plain.stderr


def test_compare_test_without_compare_is_a_usage_error(stores):
    result = invoke(stores["train"], "--compare-test", stores["test"], "--task", "linear")
    assert result.exit_code == 2, result.output  # click's usage-error code, before any probe runs
    assert result.output.strip() == "Error: --compare-test needs --compare OTHER.h5 (the store it is the test store of)"


def test_fewshot_methods_option_picks_the_methods(stores):
    result = invoke(stores["train"], "--test", stores["test"], "--task", "fewshot", "--fewshot-methods",
                    "knn,logistic", "--labels-per-class", "1,2", "--seeds", "2", "--json")
    assert result.exit_code == 0, result.output
    (rec,) = json.loads(result.stdout)["stores"]["train"]
    assert rec["methods"] == ["knn", "logistic"] and list(rec["curves"]) == ["knn", "logistic"]
    assert rec["curves"]["knn"]["2"]["seeds"] == [0, 1]
    default = invoke(stores["train"], "--test", stores["test"], "--task", "fewshot", "--labels-per-class", "1",
                     "--seeds", "1", "--json")
    (rec,) = json.loads(default.stdout)["stores"]["train"]
    assert rec["methods"] == ["logistic", "knn", "label_spreading", "self_training"]  # m2 only when named


def test_cluster_methods_option_runs_umap_gmm(stores):
    pytest.importorskip("umap", reason="umap-gmm needs umap-learn: pip install -e '.[dev]' installs it")
    result = invoke(stores["train"], "--test", stores["test"], "--task", "cluster", "--cluster-methods",
                    "umap-gmm,kmeans", "--json")
    assert result.exit_code == 0, result.output
    (rec,) = json.loads(result.stdout)["stores"]["train"]
    assert list(rec["methods"]) == ["umap-gmm", "kmeans"]  # as asked, in that order
    for m in rec["methods"].values():
        assert m["acc"] == 1.0 and sorted(m["cluster_sizes"]) == [20, 20, 20]  # three far-apart blobs
