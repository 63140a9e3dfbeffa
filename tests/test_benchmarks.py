"""The benchmark scripts (benchmarks/fashion_mnist.py, one_class.py, _common.py) on the digits data set, tiny."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


common = _load("_common")


def test_config_overrides_keep_defaults_unless_given():
    import argparse

    p = argparse.ArgumentParser()
    common.add_config_options(p)
    model, train = common.config_overrides(p.parse_args([]))
    assert (model, train) == ({}, {})
    model, train = common.config_overrides(p.parse_args(["--latent-dim", "16", "--no-batch-norm", "--epochs", "4",
                                                         "--train-seed", "3"]),
                                           preset_train={"epochs": 9, "batch_size": 32})
    assert model == {"latent_dim": 16, "batch_norm": False}
    assert train == {"epochs": 4, "batch_size": 32, "seed": 3}  # the command line wins over presets


def test_write_results_and_formatting(tmp_path):
    record = {"a": np.float32(0.5), "per_class": {3: np.int64(7)}, "nan": float("nan")}
    json_path, md_path = common.write_results(tmp_path / "sub" / "res", record, "# title\n")
    assert json.loads(json_path.read_text()) == {"a": 0.5, "per_class": {"3": 7}, "nan": None}
    assert md_path.read_text() == "# title\n" and md_path.name == "res.md"
    assert common.md_table(["x", "y"], [[1, "b"]]) == ["| x | y |", "|---|---|", "| 1 | b |"]
    assert common.pct(0.8766) == "87.7" and common.pct(None) == "-" and common.pct(float("nan")) == "-"
    assert common.pct_std(0.5, 0.01) == "50.0 ± 1.0"
    assert common.results_stem("fm", True) == common.RESULTS / "fm_quick"


def test_one_class_digits_two_classes_and_reuse(tmp_path):
    oc = _load("one_class")
    argv = ["--dataset", "digits", "--classes", "0,8", "--epochs", "3", "--out-dir", str(tmp_path / "work"),
            "--out", str(tmp_path / "oc"), "--no-progress"]
    assert oc.main(argv) == 0
    rec = json.loads((tmp_path / "oc.json").read_text())
    assert rec["data"]["classes"] == [0, 8] and rec["data"]["n_test"] == 450
    assert set(rec["auroc"]) == set(oc.SCORES)
    for name, per in rec["auroc"].items():
        assert set(per) == {"0", "8"} and all(0.0 <= v <= 1.0 for v in per.values())
        assert rec["mean_auroc"][name] == pytest.approx(np.mean(list(per.values())))
    assert rec["mean_auroc"]["raw_knn"] > 0.9  # digits are easy for raw k-NN: a sanity check of the labels
    assert rec["train_config"]["epochs"] == 3 and rec["train_config"]["batch_size"] == 32  # preset + override
    assert rec["per_class"]["0"]["ocsvm"]["gamma_resolved"] > 0
    from cvae_features.demo import DEMO_MODEL

    # the digits preset is the demo's model, chosen on digits:train
    assert {k: rec["model_config"][k] for k in ("latent_dim", "beta")} == {"latent_dim": DEMO_MODEL.latent_dim,
                                                                           "beta": DEMO_MODEL.beta}
    # the target is assessed on the score fixed in advance, not on the best column
    assert rec["primary_score"] == oc.PRIMARY_SCORE == "latent_mahalanobis" and rec["target_met"] is None
    md = (tmp_path / "oc.md").read_text()
    assert "| class | VAE −ELBO |" in md and "**mean**" in md and "Primary cvae score, fixed before the run" in md

    # --reuse: the finished runs and complete stores are taken as they are, so the numbers repeat exactly
    assert oc.main(argv + ["--reuse"]) == 0
    again = json.loads((tmp_path / "oc.json").read_text())
    assert again["auroc"] == rec["auroc"]
    assert all(t["reused_run"] for t in again["training"].values())


def test_fashion_mnist_script_on_digits(tmp_path):
    fm = _load("fashion_mnist")
    argv = ["--train-source", "digits:train", "--test-source", "digits:test", "--epochs", "2", "--latent-dim", "8",
            "--labels-per-class", "1,5", "--seeds", "2", "--cluster-seeds", "1", "--out-dir", str(tmp_path / "work"),
            "--out", str(tmp_path / "fm"), "--no-progress"]
    assert fm.main(argv) == 0
    rec = json.loads((tmp_path / "fm.json").read_text())
    assert rec["model_config"]["latent_dim"] == 8 and rec["overrides"]["model"] == {"latent_dim": 8}
    assert rec["extraction"]["pca_train"]["dim"] == 8 and rec["extraction"]["raw_train"]["dim"] == 64
    assert rec["extraction"]["pca_test"]["model_fingerprint"] == rec["extraction"]["pca_train"]["model_fingerprint"]
    for kind in ("vae", "pca", "raw"):
        assert set(rec["probes"][kind]) == {"linear", "knn", "cluster", "fewshot"}
        assert rec["probes"][kind]["linear"]["n_train"] == 1347 and rec["probes"][kind]["linear"]["n_test"] == 450
        assert rec["probes"][kind]["fewshot"]["labels_per_class"] == [1, 5]
    assert rec["probes"]["raw"]["linear"]["accuracy"] > 0.9
    linear = next(r for r in rec["table"] if r["probe"] == "linear")
    assert linear["raw"] == rec["probes"]["raw"]["linear"]["accuracy"] and linear["target"] == 88.0
    assert set(rec["stage_seconds"]) >= {"train VAE", "extract VAE", "probe raw", "cluster over seeds"}
    for kind in ("vae", "pca", "raw"):  # the clustering over seeds: every method, one value per seed
        assert set(rec["cluster_seeds"][kind]) == {"kmeans", "gmm", "umap-gmm"}
        assert all(len(v) == 1 for m in rec["cluster_seeds"][kind].values() for v in m.values())
    umap_acc = next(r for r in rec["table"] if r["probe"].startswith("UMAP + GMM") and r["metric"] == "ACC")
    assert umap_acc["raw"] == rec["cluster_seeds"]["raw"]["umap-gmm"]["acc"][0] and umap_acc["target"] == 68.0
    md = (tmp_path / "fm.md").read_text()
    assert "| linear | test accuracy |" in md and "Resolved train config" in md


def test_tuning_script_scores_on_a_validation_split_of_train_only(tmp_path):
    tuning = _load("fashion_mnist_tuning")
    argv = ["--source", "digits:train", "--name", "tiny", "--epochs", "2", "--latent-dim", "8", "--beta", "0.5", "--widths", "16",
            "--out-dir", str(tmp_path / "work"), "--results-dir", str(tmp_path / "tuning"), "--no-progress"]
    tuning.main(argv)
    rec = json.loads((tmp_path / "tuning" / "tiny.json").read_text())
    assert rec["source"] == "digits:train" and rec["n_train"] == 1347
    assert rec["model_config"]["widths"] == [16] and rec["overrides"]["model"]["latent_dim"] == 8
    v = rec["validation"]
    assert 0.5 < v["linear"]["accuracy"] <= 1 and 0.5 < v["knn"]["accuracy"] <= 1
    assert set(v["cluster"]) == {"l2", "standardize", "none"}
    assert set(v["fewshot10"]) == {"logistic", "label_spreading"}
    md = (tmp_path / "tuning.md").read_text()
    assert "| `tiny` | 8 | 0.5 | 16 |" in md and "test split was not read" in md
    with pytest.raises(SystemExit):
        tuning.parse_args([])  # --name is required
    # a second training seed of the same setting: the summary states how far apart the seeds land
    other = dict(rec, name="tiny_seed1", train_config=dict(rec["train_config"], seed=1),
                 validation=dict(v, linear=dict(v["linear"], accuracy=v["linear"]["accuracy"] - 0.012)))
    (tmp_path / "tuning" / "tiny_seed1.json").write_text(json.dumps(other))
    tuning.main(["--summarize", "--results-dir", str(tmp_path / "tuning")])
    md = (tmp_path / "tuning.md").read_text()
    assert "- `tiny` (seed 0), `tiny_seed1` (seed 1), the same validation split: " in md and "linear differs by 1.2, k-NN by 0.0" in md


def test_inpainting_script_records_every_mask(tmp_path):
    from cvae_features.show import MASKS
    from cvae_features.training import TrainConfig, train

    run = tmp_path / "run"
    train("digits:train", run, model_config={"latent_dim": 6, "widths": [16]},
          train_config=TrainConfig(epochs=2, batch_size=64, device="cpu", seed=0), progress=False)
    bench = _load("inpainting")
    assert bench.main(["--model", str(run), "--source", "digits:test", "--name", "t", "--n", "40",
                       "--out", str(tmp_path / "inp")]) == 0
    rec = json.loads((tmp_path / "inp.json").read_text())
    assert [r["mask"] for r in rec["rows"]] == list(MASKS) and rec["n_images"] == 40
    for r in rec["rows"]:
        assert r["hidden_pixels"] == {"right": 32, "bottom": 32, "centre": 16}[r["mask"]]
        for key in ("mse_grey", "mse_rounds", "mse_inpaint"):
            assert 0.0 < r[key] < 1.0
    assert "| right | 32 |" in (tmp_path / "inp.md").read_text()


def _digits_store(path, X, y, kind):
    from cvae_features.data import Preprocess
    from cvae_features.store import StoreWriter

    keys = [f"d/{i:04d}" for i in range(len(y))]
    with StoreWriter.create(path, feature_kind=kind, dim=X.shape[1], preprocess=Preprocess(8, 1),
                            source="digits", plan_keys=keys, label_names=[str(c) for c in range(10)]) as w:
        w.write_batch(np.arange(len(y)), X.astype(np.float32), y)


def test_m2_script_chooses_on_training_rows_and_writes_the_readme_table(tmp_path):
    from sklearn.datasets import load_digits

    m2 = _load("fashion_mnist_m2")
    X, y = load_digits(return_X_y=True)
    for kind in ("vae", "pca", "raw"):  # three small stores with the digits' pixels: the script only reads them
        _digits_store(tmp_path / f"{kind}_train.h5", X[:1200], y[:1200], "raw")
        _digits_store(tmp_path / f"{kind}_test.h5", X[1200:], y[1200:], "raw")
    m2.main(["--quick", "--stores", str(tmp_path), "--validation-rows", "300", "--m2-steps", "20",
             "--out", str(tmp_path / "m2")])
    rec = json.loads((tmp_path / "m2.json").read_text())
    s = rec["settings"]
    assert s["split"] == {"validation_rows": 300, "labelled": 100, "unlabelled": 800, "labels_per_class": 10,
                          "seed": 0}
    assert [g["change"] for g in s["grid"]] == list(m2.GRID[:2]) and all(g["config"]["steps"] == 20 for g in s["grid"])
    best = max(g["val_accuracy"] for g in s["grid"])
    assert s["chosen"] == next(g["config"] for g in s["grid"] if g["val_accuracy"] == best)
    for kind in ("vae", "pca", "raw"):
        curves = rec["curves"][kind]
        assert curves["methods"] == list(m2.METHODS) and curves["settings"]["m2"] == s["chosen"]
        assert 0.5 < curves["curves"]["label_spreading"]["10"]["mean"] <= 1
    header, rows = m2.test_table(rec)
    assert header[2:5] == ["VAE μ", "PCA", "raw pixels"] and [r[:2] for r in rows] == [
        [10, "logistic regression"], [10, "label spreading"], [10, "M2"]]
    assert rows[0][-1].startswith("≥ 82 (") and "(kept)" in (tmp_path / "m2.md").read_text()


def test_m2_images_script_on_digits(tmp_path):
    script = _load("fashion_mnist_m2_images")
    script.main(["--train-source", "digits:train", "--test-source", "digits:test", "--max-train-images", "400",
                 "--labels-per-class", "3", "--epochs", "6", "--latent-dim", "4", "--widths", "8",
                 "--labelled-per-batch", "8", "--out-dir", str(tmp_path / "work"), "--out", str(tmp_path / "img")])
    rec = json.loads((tmp_path / "img.json").read_text())
    assert rec["n_train"] == 400 and rec["n_labelled"] == 30 and rec["n_test"] == 450
    assert rec["model_config"]["n_classes"] == 10 and rec["train_config"]["labelled_per_batch"] == 8
    labels = (tmp_path / "work" / "labels.csv").read_text().splitlines()
    assert labels[0] == "key,label" and len(labels) == 31 and labels[1].startswith("digits:train/")
    # chance is 0.1; 0.47 and 0.45 when written (30 labels, 6 epochs): a wrong class order would fall to chance
    assert rec["test_accuracy"] > 0.3 and rec["unlabelled_train_accuracy"] > 0.3
    assert "| test split (450) |" in (tmp_path / "img.md").read_text()


def test_fashion_mnist_vade_on_fake_files(tmp_path):
    from _images import write_fake_mnist

    vade = _load("fashion_mnist_vade")
    folder = tmp_path / "fmnist"
    write_fake_mnist(folder, n_train=60, n_test=30)
    argv = ["--data-dir", str(folder), "--epochs", "2", "--seeds", "2", "--pretrain-epochs", "1", "--batch-size",
            "16", "--widths", "4,4,4", "--out-dir", str(tmp_path / "work"), "--out", str(tmp_path / "v"),
            "--no-progress"]
    assert vade.main(argv) == 0
    rec = json.loads((tmp_path / "v.json").read_text())
    assert rec["model_overrides"]["pretrain_steps"] == 4  # 54 training rows (6 validate) in batches of 16
    assert [s["seed"] for s in rec["seeds"]] == [0, 1] and rec["n_train"] == 60 and rec["n_test"] == 30
    seeds, summary = rec["seeds"], rec["summary"]
    chosen = min(seeds, key=lambda s: s["best_val_loss"])
    assert summary["selected_seed"] == chosen["seed"]
    for side in ("test", "train"):
        for m in vade.METHODS:
            values = [s[side][m]["acc"] for s in seeds]
            assert summary[side][m]["acc"]["mean"] == pytest.approx(np.mean(values))
            assert summary[side][m]["acc"]["std"] == pytest.approx(np.std(values))
            assert summary[side][m]["acc"]["selected"] == chosen[side][m]["acc"]
    assert sum(rec["seeds"][0]["test"]["prior"]["cluster_sizes"]) == 30
    text = (tmp_path / "v.md").read_text()
    assert "VaDE prior, argmax p(c\\|μ)" in text and "mean ± std over 2 seeds" in text


def test_train_seeds_script_trains_once_per_seed_and_averages_over_them(tmp_path):
    from cvae_features import FeatureStore
    from cvae_features.probes import cluster_probe

    ts = _load("train_seeds")
    argv = ["--train-seeds", "0,1", "--train-source", "digits:train", "--test-source", "digits:test", "--epochs", "1",
            "--latent-dim", "4", "--labels-per-class", "1", "--seeds", "1", "--cluster-seeds", "1",
            "--out-dir", str(tmp_path / "work"), "--out", str(tmp_path / "ts"), "--no-progress"]
    assert ts.main(argv) == 0
    rec = json.loads((tmp_path / "ts.json").read_text())
    s0, s1 = rec["per_seed"]
    assert (s0["train_seed"], s1["train_seed"]) == (0, 1) and s0["fingerprint"] != s1["fingerprint"]
    assert not s0["reused_run"] and not s1["reused_run"]
    for s in (s0, s1):  # the run's config holds the seed; the stores hold that run's model
        run = tmp_path / "work" / f"seed{s['train_seed']}"
        assert json.loads((run / "run" / "config.json").read_text())["train_config"]["seed"] == s["train_seed"]
        with FeatureStore(run / "vae_test.h5") as st:
            assert st.model_fingerprint == s["fingerprint"] and st.n_rows == 450
            X, y = st.features, st.labels
        got = cluster_probe(X, y, methods=("umap-gmm",), seed=0).methods["umap-gmm"]
        assert s["cluster"]["umap-gmm"]["acc"] == got["acc"] and s["cluster"]["umap-gmm"]["nmi"] == got["nmi"]
    linear = rec["table"][0]
    assert linear["probe"] == "linear" and linear["values"] == [s0["linear"], s1["linear"]]
    assert linear["mean"] == pytest.approx((s0["linear"] + s1["linear"]) / 2)
    assert linear["std"] == pytest.approx(abs(s0["linear"] - s1["linear"]) / 2)
    acc = {r["probe"]: r["mean"] for r in rec["table"] if r["metric"] == "ACC"}
    verdict = next(v for v in rec["verdicts"] if v["target"] == "clustering ACC")
    assert verdict["mean"] == max(acc.values()) and verdict["goal"] == 68.0
    assert verdict["met"] == (100 * verdict["mean"] >= 68.0) and verdict["gap"] == pytest.approx(100 * verdict["mean"] - 68)
    assert [v["target"] for v in rec["verdicts"]] == ["linear", "k-NN", "clustering ACC", "clustering NMI"]
    # --reuse finds both runs and stores: nothing is trained again, the numbers are the same
    assert ts.main(argv + ["--reuse"]) == 0
    again = json.loads((tmp_path / "ts.json").read_text())
    assert [s["reused_run"] for s in again["per_seed"]] == [True, True]
    assert again["table"] == rec["table"]
    assert "| linear | test accuracy |" in (tmp_path / "ts.md").read_text()


def test_probe_speed_script_on_fake_files(tmp_path):
    from _images import write_fake_mnist

    bench = _load("bench_probe_speed")
    folder = tmp_path / "fmnist"
    write_fake_mnist(folder, n_train=60, n_test=30)
    X, y, Xt, yt = bench.wide_rows(40, 20, 20, data_dir=folder)
    assert X.shape == (40, 1200) and Xt.shape == (20, 1200) and X.dtype == np.float32  # 3 x 20 x 20: wide
    assert np.bincount(y).tolist() == [4] * 10 and y.size == 40
    bench.main(["--n-train", "40", "--n-test", "20", "--size", "20", "--data-dir", str(folder),
                "--out", str(tmp_path / "ps")])
    rec = json.loads((tmp_path / "ps.json").read_text())
    old, new, knn = rec["linear"]["lbfgs"], rec["linear"]["auto"], rec["knn"]
    assert (old["selection"]["solver"], new["selection"]["solver"]) == ("lbfgs", "preconditioned")
    assert rec["columns"] == 1200 and rec["n_train"] == 40 and list(old["cv_scores"]) == list(new["cv_scores"])
    assert rec["speedup"] == pytest.approx((old["wall_s"] + knn["wall_s"]) / (new["wall_s"] + knn["wall_s"]))
    assert rec["linear_speedup"] == pytest.approx(old["wall_s"] / new["wall_s"])
    assert rec["same_choice"] == ((old["preprocessing"], old["C"]) == (new["preprocessing"], new["C"]))
    text = (tmp_path / "ps.md").read_text()
    verdict = "yes" if rec["speedup"] >= 4 else "no"
    assert f"| {rec['speedup']:.1f} x (" in text and text.rstrip().splitlines()[-2].endswith(f"| {verdict} |")
    assert text.rstrip().endswith("| yes |" if rec["same_choice"] else "| no |")
