"""Report: table, JSON, CSV and PNG files from real probe results on generated data."""

import csv
import json

import numpy as np
import pytest

from cvae_features import report
from cvae_features.errors import ConfigError
from cvae_features.probes import anomaly_probe, cluster_probe, fewshot_curve, linear_probe

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _data(seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 5)) * 10
    y = np.arange(240) % 3
    X = centres[y] + rng.normal(size=(240, 5))
    return X[:160], y[:160], X[160:], y[160:]


def _records(seed):
    Xtr, ytr, Xte, yte = _data(seed)
    return [
        linear_probe(Xtr, ytr, Xte, yte, Cs=(1.0,), preprocessings=("none",)),
        cluster_probe(Xte, yte, methods=("kmeans",)),
        fewshot_curve(Xtr, ytr, Xte, yte, labels_per_class=(1, 3), seeds=2, methods=("logistic", "knn")),
        anomaly_probe(Xtr[ytr == 0], Xte, (yte != 0).astype(int), scores=("knn",)),
    ]


@pytest.fixture(scope="module")
def results():
    return {"vae": _records(0), "raw": _records(1)}


def test_table_has_one_row_per_metric_and_one_column_per_store(results):
    table = report.format_table(results, title="probes")
    lines = table.splitlines()
    assert lines[0] == "probes"
    assert lines[1].split() == ["probe", "metric", "vae", "raw"]
    acc_line = next(line for line in lines if " accuracy " in f" {line} " and "balanced" not in line)
    assert acc_line.split()[:2] == ["linear", "accuracy"]
    assert acc_line.split()[2:] == [f"{results['vae'][0].accuracy:.4f}", f"{results['raw'][0].accuracy:.4f}"]
    few = next(line for line in lines if "logistic@3" in line)
    mean, std = results["vae"][2].curves["logistic"]["3"]["mean"], results["vae"][2].curves["logistic"]["3"]["std"]
    assert f"{mean:.4f} ± {std:.4f}" in few
    assert sum("kmeans_nmi" in line for line in lines) == 1
    # a single store (a plain list) gets the default column name
    assert report.format_table(results["vae"]).splitlines()[0].split() == ["probe", "metric", "features"]
    assert "(no results)" in report.format_table([])


def test_missing_metric_shows_a_dash(results):
    table = report.format_table({"a": results["vae"][:1], "b": results["raw"][1:2]})
    line = next(line for line in table.splitlines() if "macro_f1" in line)
    assert line.split()[-1] == "-"


def test_json_and_csv(results, tmp_path):
    path = report.write_json(results, tmp_path / "r.json", meta={"seed": np.int64(3)})
    data = json.loads(path.read_text())
    assert data["meta"] == {"seed": 3}
    assert list(data["stores"]) == ["vae", "raw"]
    assert [r["probe"] for r in data["stores"]["vae"]] == ["linear", "cluster", "fewshot", "anomaly"]
    assert data["stores"]["vae"][0]["accuracy"] == results["vae"][0].accuracy
    assert data["stores"]["vae"][2]["curves"]["knn"]["1"]["labelled_per_class"][0] == {"0": 1, "1": 1, "2": 1}
    with report.write_csv(results, tmp_path / "r.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert set(rows[0]) == {"store", "probe", "metric", "value", "std"}
    assert len(rows) == len(report.summary_rows(results)) == len(data["summary"])
    lin = [r for r in rows if r["store"] == "raw" and r["metric"] == "accuracy" and r["probe"] == "linear"]
    assert float(lin[0]["value"]) == pytest.approx(results["raw"][0].accuracy) and lin[0]["std"] == ""
    few = [r for r in rows if r["metric"] == "knn@3" and r["store"] == "vae"][0]
    assert float(few["std"]) == pytest.approx(results["vae"][2].curves["knn"]["3"]["std"])


def _is_png(path):
    return path.exists() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_plots(results, tmp_path):
    rec = results["vae"]
    assert _is_png(report.plot_confusion(rec[0], tmp_path / "cm.png", label_names=["a", "b", "c"]))
    assert _is_png(report.plot_fewshot(rec[2], tmp_path / "few.png"))
    assert _is_png(report.plot_fewshot({"vae": rec[2], "raw": results["raw"][2]}, tmp_path / "few2.png"))
    assert _is_png(report.plot_roc(rec[3], tmp_path / "roc.png"))
    X, y = np.random.default_rng(0).normal(size=(60, 5)), np.arange(60) % 3
    assert _is_png(report.plot_feature_map(X, y, tmp_path / "map.png", label_names=["a", "b", "c"]))
    assert _is_png(report.plot_feature_map(X, None, tmp_path / "map_tsne.png", method="tsne", max_points=40))


def test_feature_map_coordinates():
    X = np.random.default_rng(0).normal(size=(100, 4))
    X[:, 2] *= 10  # the first principal axis
    coords, rows = report.feature_map(X, max_points=30, seed=1)
    assert coords.shape == (30, 2) and rows.shape == (30,) and np.all(np.diff(rows) > 0)
    assert np.var(coords[:, 0]) > np.var(coords[:, 1])
    with pytest.raises(ConfigError, match="method"):
        report.feature_map(X, method="umap")


def test_write_report(results, tmp_path):
    X, y = np.random.default_rng(0).normal(size=(50, 5)), np.arange(50) % 3
    written = report.write_report(results, tmp_path / "out", meta={"a": 1},
                                  feature_maps={"vae": (X, y), "raw": (X, None)},
                                  test_keys={"vae": [f"k{i}" for i in range(80)]})
    names = sorted(p.name for p in written)
    assert names == sorted(["report.json", "results.csv", "report.txt", "confusion_vae.png", "confusion_raw.png",
                            "roc_vae.png", "roc_raw.png", "anomaly_scores_vae.csv", "anomaly_scores_raw.csv",
                            "fewshot.png", "map_vae.png", "map_raw.png"])
    for p in written:
        assert p.stat().st_size > 0
        if p.suffix == ".png":
            assert _is_png(p)
    scores = list(csv.DictReader((tmp_path / "out" / "anomaly_scores_vae.csv").open()))
    assert len(scores) == 80 and scores[0]["key"] == "k0" and set(scores[0]) == {"key", "knn", "flag_knn",
                                                                                  "is_anomaly"}
    assert "key" not in list(csv.DictReader((tmp_path / "out" / "anomaly_scores_raw.csv").open()))[0]
    assert (tmp_path / "out" / "report.txt").read_text() == report.format_table(results) + "\n"
    assert report.file_label("my store/v1 (test)") == "my_store_v1_test"


def test_skipped_warnings_and_normal_class_reach_every_output(tmp_path):
    Xtr, ytr, Xte, yte = _data(2)
    rec = anomaly_probe(Xtr[ytr == 1], Xte, (yte != 1).astype(int), scores=("knn",), normal_class="shoe")
    skipped = [{"store": "vae", "task": "cluster", "reason": "on the test rows, 3 rows are too few for 3 clusters"}]
    warnings = ["TEST and TRAIN class names differ: only in TRAIN ['bag']"]
    lines = report.format_table({"vae": [rec]}, footer=report.footer_lines(skipped, warnings)).splitlines()
    assert lines[-3:] == ["anomaly: normal class 'shoe'; test rows of every other class are anomalies",
                          "skipped: vae cluster: on the test rows, 3 rows are too few for 3 clusters",
                          "warning: TEST and TRAIN class names differ: only in TRAIN ['bag']"]
    data = report.to_json({"vae": [rec]}, skipped=skipped, warnings=warnings)
    assert data["skipped"] == skipped and data["warnings"] == warnings
    assert data["stores"]["vae"][0]["normal_class"] == "shoe"
    assert report.to_json([])["skipped"] == [] and report.to_json([])["warnings"] == []
    report.write_report({"vae": [rec]}, tmp_path, skipped=skipped, warnings=warnings)
    assert json.loads((tmp_path / "report.json").read_text())["warnings"] == warnings
    assert (tmp_path / "report.txt").read_text().splitlines()[-3:] == lines[-3:]
