"""Extraction into the feature store, through the library and the ``cvae extract`` / ``cvae info`` commands."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from _images import write_class_folder, write_image_zoo
from cvae_cli.main import cli
from cvae_features.data import Preprocess, load_images, open_source
from cvae_features.errors import ConfigError, DataError, StoreError
from cvae_features.extraction import extract, fit_pca
from cvae_features.model import ConvVAE
from cvae_features.resolve import load_model
from cvae_features.store import FeatureStore
from cvae_features.transformer import VAEFeatureExtractor

SIZE = 12


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder with classes circle, square (5 gray images each) and zoo (every good and bad kind of file)."""
    root = tmp_path_factory.mktemp("imgs") / "images"
    labelled = write_class_folder(root, per_class=5, size=(SIZE, SIZE))
    zoo = write_image_zoo(root / "zoo")
    (root / "zoo" / "zero.jpg").write_bytes(b"")  # one more bad file, so the CLI shortens the list
    zoo["bad"]["zero.jpg"] = "empty file"
    good = sorted(list(labelled) + [f"zoo/{name}" for name in zoo["good"]])
    bad = {f"zoo/{name}": reason for name, reason in zoo["bad"].items()}
    return root, good, bad


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A small model saved as a run directory (random weights are enough to compare paths bit for bit)."""
    torch.manual_seed(0)
    model = ConvVAE(image_size=SIZE, channels=1, latent_dim=4, widths=(8, 8))
    run = tmp_path_factory.mktemp("run")
    model.save(run)
    return run


def _decoded(root, size=SIZE, channels=1):
    src = open_source(root)
    pre = Preprocess(size, channels)
    imgs, rows, _ = load_images(src, pre, workers=0)
    return src, imgs, rows


def _run(args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def test_cli_extract_folder_with_bad_files(images, model_path, tmp_path):
    root, good, bad = images
    out = tmp_path / "feats.h5"
    result = _run(["extract", root, "-o", out, "--model", model_path, "--no-progress", "--batch-size", 8,
                   "--scores"])
    assert result.exit_code == 0, result.output
    assert f"{len(good)} rows written" in result.output and f"{len(bad)} skipped" in result.output
    assert result.output.count("  skipped zoo/") == 5 and f"and {len(bad) - 5} more" in result.output
    with FeatureStore(out) as s:
        assert s.keys == good  # one row per good image, in sorted key order
        assert s.n_rows == len(good) and s.dim == 4 and s.is_complete
        skipped = dict(s.skipped.values.tolist())
        assert set(skipped) == set(bad)
        for key, reason in bad.items():
            assert reason in skipped[key], (key, skipped[key])
        assert s.label_names == ["circle", "square", "zoo"]
        assert s.labels.tolist() == [0] * 5 + [1] * 5 + [2] * (len(good) - 10)
        assert s.extras == ["recon_error", "neg_elbo"] and not s.has_model
        assert s.model_fingerprint == ConvVAE.from_state(*_state(model_path)).fingerprint()
    info = _run(["info", out, "--json", "--skipped"])
    assert info.exit_code == 0, info.output
    summary = json.loads(info.output)
    assert summary["n_rows"] == len(good) and summary["n_skipped"] == len(bad) and summary["complete"]
    assert summary["label_counts"] == {"circle": 5, "square": 5, "zoo": len(good) - 10}
    assert {k for k, _ in summary["skipped"]} == set(bad)
    text = _run(["info", out])
    assert text.exit_code == 0, text.output
    assert f"rows:        {len(good)} x 4 (vae features), complete" in text.output
    assert "fingerprint only" in text.output


def _state(run_dir):
    payload = torch.load(run_dir / "model.pt", weights_only=True)
    return payload["config"], payload["state_dict"]


def test_features_equal_model_embed(images, model_path, tmp_path):
    root, good, _ = images
    res = extract(root, tmp_path / "f.h5", model=model_path, batch_size=7, workers=0, progress=False, logvar=True,
                  scores=True)
    assert (res.n_rows, res.n_new, res.complete, res.trained) == (len(good), len(good), True, False)
    model = ConvVAE.from_state(*_state(model_path))
    src, imgs, rows = _decoded(root)
    with FeatureStore(res.path) as s:
        assert s.keys == [src.keys[r] for r in rows]
        np.testing.assert_allclose(s.features, model.embed(imgs).numpy(), rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            out = model.eval()(imgs)
        np.testing.assert_allclose(s.extra("recon_error"), out.recon_per_sample.numpy(), rtol=1e-4)
        np.testing.assert_allclose(s.extra("neg_elbo"), (out.recon_per_sample + out.kl_per_sample).numpy(),
                                   rtol=1e-4)
        np.testing.assert_allclose(s.extra("logvar"), out.logvar.numpy(), rtol=1e-4, atol=1e-5)


def test_transformer_features_equal_extracted(images, model_path, tmp_path):
    root, _, _ = images
    out = tmp_path / "f.h5"
    result = _run(["extract", root, "-o", out, "--model", model_path, "--no-progress", "--workers", 0, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["feature_kind"] == "vae" and summary["complete"] and not summary["trained"]
    assert summary["n_rows"] == summary["n_new"] > 0 and summary["path"] == str(out)
    _, imgs, _ = _decoded(root)
    X = imgs.numpy().transpose(0, 2, 3, 1)  # channels last, uint8
    feats = VAEFeatureExtractor(model=model_path).fit(X).transform(X)
    with FeatureStore(out) as s:
        np.testing.assert_allclose(feats, s.features, rtol=1e-5, atol=1e-6)


def test_auto_trained_model_is_carried(images, tmp_path):
    root, good, _ = images
    out = tmp_path / "auto.h5"
    result = _run(["extract", root, "-o", out, "--epochs", 1, "--dim", 3, "--no-progress",
                   "--workers", 0])
    assert result.exit_code == 0, result.output
    assert "no --model given: training a VAE first (latent 3, 1 epoch, input" in result.stderr
    assert (tmp_path / "auto.run" / "model.pt").exists()
    with FeatureStore(out) as s:
        assert s.has_model and s.dim == 3 and s.extras == [] and s.n_rows == len(good)
        model = load_model(s.path)
        assert model.fingerprint() == s.model_fingerprint
        size = s.preprocess.size
        src, imgs, rows = _decoded(root, size=size, channels=model.config.channels)
        np.testing.assert_allclose(s.features, model.embed(imgs).numpy(), rtol=1e-5, atol=1e-5)
    # the store now serves as --model: same features for the same images
    again = tmp_path / "again.h5"
    assert _run(["extract", root, "-o", again, "--model", out, "--no-progress", "--workers", 0]).exit_code == 0
    with FeatureStore(out) as a, FeatureStore(again) as b:
        np.testing.assert_array_equal(a.features, b.features)
        assert b.model_fingerprint == a.model_fingerprint and not b.has_model


class _Stop(Exception):
    pass


def _stop_after(k):
    def callback(progress):
        if progress.batch + 1 == k:
            raise _Stop(f"stopped after {k} batches")
    return callback


def test_interrupted_then_resumed_equals_uninterrupted(images, model_path, tmp_path):
    root, good, bad = images
    full = extract(root, tmp_path / "full.h5", model=model_path, batch_size=4, workers=0, progress=False,
                   scores=True)
    part = tmp_path / "part.h5"
    with pytest.raises(_Stop):
        extract(root, part, model=model_path, batch_size=4, workers=0, progress=False, scores=True,
                callback=_stop_after(3))
    with FeatureStore(part) as s:
        assert not s.is_complete and s.n_rows + s.n_skipped == 12 and s.n_pending == len(good) + len(bad) - 12
        first_rows = s.n_rows
    info = _run(["info", part])
    assert "INCOMPLETE" in info.output and "--resume" in info.output
    res = extract(root, part, model=model_path, batch_size=4, workers=0, progress=False, resume=True,
                  scores=True)
    assert res.complete and res.n_new == len(good) - first_rows
    with FeatureStore(full.path) as a, FeatureStore(part) as b:
        np.testing.assert_array_equal(a.features, b.features)
        assert a.keys == b.keys
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.extra("neg_elbo"), b.extra("neg_elbo"))
        assert a.skipped.equals(b.skipped) and b.is_complete
    # resuming a complete store does nothing
    assert extract(root, part, model=model_path, workers=0, progress=False, resume=True).n_new == 0


def test_resume_and_update_refuse_another_model(images, model_path, tmp_path):
    root, _, _ = images
    out = tmp_path / "f.h5"
    extract(root, out, model=model_path, workers=0, progress=False)
    torch.manual_seed(1)
    other = ConvVAE(image_size=SIZE, channels=1, latent_dim=4, widths=(8, 8))
    for flag in ("resume", "update"):
        with pytest.raises(StoreError, match=r"was written by model [0-9a-f]{16}, not [0-9a-f]{16}; use --overwrite"):
            extract(root, out, model=other, workers=0, progress=False, **{flag: True})
    with pytest.raises(StoreError, match="holds vae features, not raw"):
        extract(root, out, features="raw", workers=0, progress=False, resume=True)


def test_update_adds_only_new_files(images, model_path, tmp_path):
    root = tmp_path / "images"
    shutil.copytree(images[0], root)
    out = tmp_path / "f.h5"
    first = extract(root, out, model=model_path, workers=0, progress=False)
    with FeatureStore(out) as s:
        before = s.features.copy()
    Image.new("L", (SIZE, SIZE), 77).save(root / "circle" / "zz_new.png")
    (root / "triangle").mkdir()
    Image.new("L", (SIZE, SIZE), 200).save(root / "triangle" / "t0.png")
    res = extract(root, out, model=model_path, workers=0, progress=False, update=True)
    assert res.n_new == 2 and res.n_new_skipped == 0 and res.n_rows == first.n_rows + 2 and res.complete
    with FeatureStore(out) as s:
        np.testing.assert_array_equal(s.features[: first.n_rows], before)
        assert s.keys[-2:] == ["circle/zz_new.png", "triangle/t0.png"]
        assert s.label_names == ["circle", "square", "zoo", "triangle"]
        assert s.labels[-2:].tolist() == [0, 3]
        assert s.n_skipped == first.n_skipped  # bad files are not retried
    assert extract(root, out, model=model_path, workers=0, progress=False, update=True).n_new == 0


def test_existing_store_is_refused_without_a_flag(images, model_path, tmp_path):
    root, _, _ = images
    out = tmp_path / "f.h5"
    extract(root, out, model=model_path, workers=0, progress=False)
    with pytest.raises(StoreError, match="already exists: use --resume .* --update .* --overwrite"):
        extract(root, out, model=model_path, workers=0, progress=False)
    result = _run(["extract", root, "-o", out, "--model", model_path, "--no-progress"])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "already exists" in result.output
    with pytest.raises(ConfigError, match="resume and overwrite exclude each other"):
        extract(root, out, model=model_path, resume=True, overwrite=True)
    not_a_store = tmp_path / "notes.h5"
    not_a_store.write_text("mine")
    with pytest.raises(StoreError, match="not a cvae feature store; refusing"):
        extract(root, not_a_store, model=model_path, overwrite=True)
    res = extract(root, out, model=model_path, workers=0, progress=False, overwrite=True, compression="gzip")
    with FeatureStore(out) as s:
        assert s.attrs["compression"] == "gzip" and s.n_rows == res.n_rows


def test_empty_or_missing_source_is_one_line(tmp_path, model_path):
    (tmp_path / "empty").mkdir()
    for source in (tmp_path / "empty", tmp_path / "missing"):
        result = _run(["extract", source, "-o", tmp_path / "f.h5", "--model", model_path, "--no-progress"])
        assert result.exit_code != 0
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "f.h5").exists()
    bad = _run(["info", tmp_path / "missing.h5"])
    assert bad.exit_code == 1 and bad.output == f"Error: feature store not found: {tmp_path / 'missing.h5'}\n"


def test_raw_and_pca_features(images, tmp_path):
    root, good, _ = images
    raw = extract(root, tmp_path / "raw.h5", features="raw", workers=0, progress=False)
    with FeatureStore(raw.path) as s:
        pre = s.preprocess
        assert s.feature_kind == "raw" and s.model_fingerprint is None and s.extras == []
        assert s.dim == pre.channels * pre.size * pre.size
        src, imgs, _ = _decoded(root, pre.size, pre.channels)
        expected = imgs.reshape(len(imgs), -1).numpy().astype(np.float32) / 255
        np.testing.assert_array_equal(s.features, expected)
        X = s.features
    pca = extract(root, tmp_path / "pca.h5", features="pca", dim=5, workers=0, progress=False)
    from sklearn.decomposition import PCA

    ref = PCA(5).fit(X.astype(np.float64))
    with FeatureStore(pca.path) as s:
        assert s.feature_kind == "pca" and s.dim == 5 and s.model_fingerprint == pca.model_fingerprint
        basis = s.pca
        np.testing.assert_allclose(basis["explained_variance"], ref.explained_variance_, rtol=1e-6)
        np.testing.assert_allclose(np.abs(basis["components"] @ ref.components_.T), np.eye(5), atol=1e-6)
        np.testing.assert_allclose(s.features, (X - basis["mean"]) @ basis["components"].T, rtol=1e-4, atol=1e-5)
        feats = s.features
    # the pca store transforms new data with the same basis (features kind taken from the store)
    again = _run(["extract", root, "-o", tmp_path / "pca2.h5", "--model", tmp_path / "pca.h5", "--no-progress",
                  "--workers", 0])
    assert again.exit_code == 0, again.output
    with FeatureStore(tmp_path / "pca2.h5") as s:
        assert s.feature_kind == "pca" and s.model_fingerprint == pca.model_fingerprint
        np.testing.assert_array_equal(s.features, feats)
    with pytest.raises(ConfigError, match="features='pca' needs dim"):
        extract(root, tmp_path / "p3.h5", features="pca", workers=0, progress=False)


def test_incremental_pca_path_matches_exact(images, monkeypatch):
    root, _, _ = images
    src = open_source(root)
    pre = Preprocess(SIZE, 1)
    exact = fit_pca(src, pre, 3, batch_size=4, workers=0)
    monkeypatch.setattr(sys.modules["cvae_features.featurizers"], "PCA_COVARIANCE_MAX_FEATURES", 0)
    approx = fit_pca(src, pre, 3, batch_size=4, workers=0)
    np.testing.assert_allclose(approx["mean"], exact["mean"], atol=1e-9)
    np.testing.assert_allclose(np.abs(approx["components"] @ exact["components"].T), np.eye(3), atol=1e-3)


def test_max_bad_stops_and_keeps_rows(images, model_path, tmp_path):
    root, good, bad = images
    out = tmp_path / "f.h5"
    result = _run(["extract", root, "-o", out, "--model", model_path, "--max-bad", 1, "--batch-size", 8,
                   "--no-progress", "--workers", 0])
    assert result.exit_code == 1 and "more than max_bad=1" in result.output and result.output.count("\n") == 1
    with FeatureStore(out) as s:
        assert 0 < s.n_rows < len(good) and s.n_skipped > 1 and not s.is_complete
        kept = s.n_rows
    # the rows stay; --resume finishes the rest
    res = extract(root, out, model=model_path, workers=0, progress=False, resume=True)
    assert res.complete and res.n_rows == len(good) and res.n_rows > kept
    with pytest.raises(DataError, match="more than max_bad=0"):
        extract(root, tmp_path / "g.h5", model=model_path, workers=0, progress=False, max_bad=0)


def test_builtin_source_with_default_workers(model_path, tmp_path):
    # digits: in-memory rows resized to the model's 12x12 input; keys name the data set
    res = extract("digits:test", tmp_path / "d.h5", model=model_path, progress=False, batch_size=512)
    with FeatureStore(res.path) as s:
        assert s.keys[0].startswith("digits:test/") and s.has_labels and len(s.label_names) == 10
        assert s.source_spec == "digits:test"
        assert s.n_rows == res.n_rows > 300 and s.n_skipped == 0


def test_auto_training_plan_is_the_benchmarked_default_on_a_fashion_mnist_sized_set(tmp_path):
    from cvae_features.data import ArraySource
    from cvae_features.extraction import plan_auto_training
    from cvae_features.model import VAEConfig
    from cvae_features.training import TrainConfig

    pixels = np.zeros((60_000, 1, 28, 28), dtype=np.uint8)
    big = ArraySource(pixels)
    plan = plan_auto_training(big, tmp_path / "f.h5", estimate=False)
    assert plan.model_config == VAEConfig() and plan.train_config == TrainConfig()
    # smaller sets see as many images in total (clamped), larger ones fewer epochs
    small = plan_auto_training(ArraySource(pixels[:6_000]), tmp_path / "f.h5", estimate=False).train_config.epochs
    assert small == min(10 * TrainConfig().epochs, 60)
    half = plan_auto_training(ArraySource(pixels[:30_000]), tmp_path / "f.h5", estimate=False).train_config.epochs
    assert half == min(2 * TrainConfig().epochs, 60)
    assert plan_auto_training(ArraySource(pixels[:20]), tmp_path / "f.h5", estimate=False).train_config.epochs == 60
    assert plan_auto_training(ArraySource(pixels[:20]), tmp_path / "f.h5", dim=7, estimate=False).model_config.latent_dim == 7


def test_auto_training_plans_epochs_rounded_up_and_clamped_from_5_to_60(tmp_path):
    from cvae_features.data import ArraySource
    from cvae_features.extraction import plan_auto_training
    from cvae_features.training import TrainConfig

    pixels = np.zeros((480_000, 1, 8, 8), dtype=np.uint8)  # zeros: pages the plan never reads stay unmapped
    passes = 60_000 * TrainConfig().epochs
    for n, epochs in ((70_000, 18), (passes // 18 + 1, 18), (50_000, 24), (480_000, 5), (19_999, 60), (1, 60)):
        assert plan_auto_training(ArraySource(pixels[:n]), tmp_path / "f.h5", estimate=False).train_config == (
            TrainConfig(epochs=epochs)), n


def test_auto_training_takes_given_configs_and_is_recorded_whole(tmp_path):
    from cvae_features.autotrain import auto_run_dir, plan_auto_training
    from cvae_features.data import ArraySource
    from cvae_features.model import VAEConfig
    from cvae_features.training import TrainConfig

    assert auto_run_dir(str(tmp_path / "a.b.h5")) == tmp_path / "a.b.run" and auto_run_dir("f") == Path("f.run")
    src = ArraySource(np.zeros((50, 1, 12, 12), dtype=np.uint8))
    plan = plan_auto_training(src, tmp_path / "s.h5", estimate=False)
    assert plan.run_dir == tmp_path / "s.run" and plan.n_images == 50 and np.isnan(plan.estimated_seconds)
    assert plan.preprocess == Preprocess(12, 1) and plan.model_config == VAEConfig(image_size=12)
    # the source's own size and channels unless the config asks for others than the defaults; dim wins over
    # latent_dim
    for given, dim, size, channels, latent in (
            ({"image_size": 28, "channels": 1, "latent_dim": 9}, None, 12, 1, 9),
            ({"image_size": 16, "channels": 3}, None, 16, 3, 256),
            (VAEConfig(latent_dim=5, beta=2.0), 7, 12, 1, 7),
            ([("latent_dim", 4)], None, 12, 1, 4)):
        plan = plan_auto_training(src, tmp_path / "s.h5", dim=dim, model_config=given, estimate=False)
        assert plan.preprocess == Preprocess(size, channels), given
        assert (plan.model_config.image_size, plan.model_config.channels, plan.model_config.latent_dim) == (
            size, channels, latent), given
    assert plan_auto_training(src, tmp_path / "s.h5", model_config=VAEConfig(beta=2.0),
                              estimate=False).model_config.beta == 2.0
    colour = ArraySource(np.zeros((50, 3, 12, 12), dtype=np.uint8))  # the default channels asked: the source's 3
    assert plan_auto_training(colour, tmp_path / "s.h5", model_config={"channels": 1},
                              estimate=False).preprocess == Preprocess(12, 3)
    tcfg = TrainConfig(epochs=2, batch_size=16)
    assert plan_auto_training(src, tmp_path / "s.h5", train_config=tcfg, estimate=False).train_config is tcfg
    assert plan_auto_training(src, tmp_path / "s.h5", train_config={"epochs": 2, "batch_size": 16},
                              estimate=False).train_config == tcfg
    plan = plan_auto_training(src, tmp_path / "s.h5", model_config={"latent_dim": 2, "widths": [4, 4]},
                              train_config=tcfg)
    assert 0 < plan.estimated_seconds < 60
    assert plan.to_dict() == {"run_dir": str(tmp_path / "s.run"), "model_config": plan.model_config.to_dict(),
                              "train_config": tcfg.to_dict(), "preprocess": Preprocess(12, 1).to_dict(),
                              "n_images": 50, "estimated_seconds": plan.estimated_seconds}


def test_auto_training_opens_the_source_in_the_given_data_dir(tmp_path, fake_fashion_dir, monkeypatch):
    from cvae_features.autotrain import plan_auto_training
    from cvae_features.data import builtin
    from cvae_features.errors import SourceNotFoundError

    monkeypatch.setattr(builtin, "SYSTEM_DATA_DIR", str(tmp_path / "system"))  # found nowhere else
    monkeypatch.setenv("CVAE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CVAE_NO_DOWNLOAD", "1")
    plan = plan_auto_training("fashion-mnist:test", tmp_path / "s.h5", data_dir=fake_fashion_dir[0], estimate=False)
    assert plan.n_images == 10 and plan.preprocess == Preprocess(28, 1)
    with pytest.raises(SourceNotFoundError, match="fashion-mnist:test: files .* not found in "):
        plan_auto_training("fashion-mnist:test", tmp_path / "s.h5", estimate=False)

def test_the_training_time_estimate_is_the_second_of_two_timed_steps_scaled_to_the_run(monkeypatch):
    import time

    from cvae_features import model as model_module
    from cvae_features.autotrain import _estimate_training_seconds
    from cvae_features.model import VAEConfig
    from cvae_features.training import TrainConfig

    made = []

    class Recorded(ConvVAE):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(model_module, "ConvVAE", Recorded)
    mcfg = VAEConfig(image_size=8, channels=1, latent_dim=3, widths=(4,))
    for n, b in ((5, 5), (100, 16), (0, 1)):
        readings = iter([10.0, 13.0, 20.0, 22.5])  # steps of 3 s (the first, with one-off costs) and 2.5 s
        monkeypatch.setattr(time, "perf_counter", lambda: next(readings))
        torch.manual_seed(4)
        seconds = _estimate_training_seconds(mcfg, TrainConfig(epochs=3, batch_size=16), n)
        monkeypatch.undo()
        monkeypatch.setattr(model_module, "ConvVAE", Recorded)
        assert type(seconds) is float and seconds == pytest.approx(2.5 / b * n * 3 * 1.15 + n * 2e-4, rel=1e-12)
        after = torch.random.get_rng_state()
        # the two steps written out: Adam at 1e-4 on a random uint8 batch of b images; the steps' draws are forked
        # off the global generator
        torch.manual_seed(4)
        model = ConvVAE(mcfg)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        x = torch.randint(0, 256, (b, 1, 8, 8), dtype=torch.uint8)
        with torch.random.fork_rng():
            for _ in range(2):
                loss = model(x).loss
                opt.zero_grad()
                loss.backward()
                opt.step()
        assert torch.equal(torch.random.get_rng_state(), after)
        got = made.pop().state_dict()
        assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())


def test_training_for_extraction_resumes_only_a_run_with_a_checkpoint(tmp_path, monkeypatch):
    import time

    from cvae_features import training
    from cvae_features.autotrain import plan_auto_training, train_for_extraction
    from cvae_features.data import ArraySource

    calls = []
    real = training.train

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train", spy)
    src = ArraySource(np.random.default_rng(0).integers(0, 256, (40, 1, 8, 8), dtype=np.uint8))
    plan = plan_auto_training(src, tmp_path / "s.h5", model_config={"latent_dim": 2, "widths": [4]},
                              train_config={"epochs": 1, "batch_size": 16, "val_fraction": 0.25}, estimate=False)
    common = dict(model_config=plan.model_config, train_config=plan.train_config, preprocess=plan.preprocess,
                  progress=False, data_dir=tmp_path / "d")
    for resume, overwrite, resumed, replaced in ((True, False, False, False),  # nothing to resume yet
                                                 (True, True, True, False),  # a checkpoint: resumed, not replaced
                                                 (False, True, False, True)):
        start = time.perf_counter()
        model, seconds, n = train_for_extraction(src, plan, resume=resume, overwrite=overwrite, progress=False,
                                                 data_dir=tmp_path / "d")
        assert 0 < seconds <= time.perf_counter() - start and n == 40  # 30 trained on, 10 validated on
        assert calls.pop() == ((src, plan.run_dir), dict(common, resume=resumed, overwrite=replaced))
        assert (plan.run_dir / "checkpoint.pt").exists()
        assert model.config == plan.model_config and model.fingerprint() == load_model(plan.run_dir).fingerprint()


def test_bad_device_is_refused_before_a_store_is_created(tmp_path):
    out = tmp_path / "raw.h5"
    for features in ("raw", "vae"):  # vae: refused before a model is trained
        with pytest.raises(ConfigError, match="device='bogus'"):
            extract("digits", out, features=features, device="bogus", progress=False)
        assert not out.exists() and not (tmp_path / "raw.run").exists()
