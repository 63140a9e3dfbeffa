"""The training loop and its run directory: files, repeatability, exact resume, NaN guard, early stopping, CLI."""

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from sklearn.datasets import load_digits

from cvae_features.errors import ConfigError, DataError, TrainingError
from cvae_features.model import VAEConfig, load_model
from cvae_features.training import TrainConfig, TrainResult, train

RUN_FILES = ["model.pt", "checkpoint.pt", "config.json", "history.csv", "history.json", "reconstructions.png"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny 8x8 models run fastest on one thread, and stay fast on a busy shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    """The 1,797 digits as uint8 (n, 1, 8, 8), the same pixels the built-in source gives."""
    return (load_digits().images * 255 / 16).round().astype(np.uint8)[:, None]


def _run(images, run_dir, progress=False, callback=None, resume=False, model_config=None, **train_kw):
    return train(images, run_dir, model_config=model_config or {"latent_dim": 8},
                 train_config=dict(dict(epochs=3, batch_size=64), **train_kw), progress=progress,
                 callback=callback, resume=resume)


def _assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# -- TrainConfig ---------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, expected", [
    ("epochs", 0, "an integer from 1 to 100000"),
    ("epochs", 2.5, "an integer from 1 to 100000"),
    ("batch_size", 0, "an integer from 1 to 65536"),
    ("lr", 0.0, "a finite number > 0"),
    ("lr", float("inf"), "a finite number > 0"),
    ("weight_decay", -1e-3, ">= 0"),
    ("schedule", "linear", "'onecycle', 'cosine' or 'constant'"),
    ("beta_warmup_epochs", -1, ">= 0"),
    ("val_fraction", 1.0, ">= 0 and < 1"),
    ("patience", 0, "None or an integer from 1"),
    ("seed", -1, "an integer from 0"),
    ("device", "tpu", "'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ("amp", "yes", "None, True or False"),
    ("amp_dtype", "float8", "'bfloat16' or 'float16'"),
    ("grad_clip", 0, "None or a finite number > 0"),
    ("max_images", 0, "None or an integer from 1"),
])
def test_train_config_errors_name_parameter_value_and_range(field, value, expected):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{field: value})
    assert f"invalid {field}={value!r}" in str(info.value)
    assert expected in str(info.value)


def test_cli_help_states_the_library_defaults():
    cli, prefix = _cli()
    text = " ".join(CliRunner().invoke(cli, prefix + ["--help"]).output.split())
    for phrase in (f"Passes over the data (default {TrainConfig().epochs})",
                   f"Images per step (default {TrainConfig().batch_size})",
                   f"Width of the embedding (default {VAEConfig().latent_dim})",
                   f"Weight of the KL term (default {VAEConfig().beta})"):
        assert phrase in text
    from cvae_cli.main import cli as main_cli

    text = " ".join(CliRunner().invoke(main_cli, ["extract", "--help"]).output.split())
    assert f"latent width of the auto-trained model (default {VAEConfig().latent_dim})" in text


def test_train_config_round_trip_and_defaults():
    cfg = TrainConfig(epochs=5, lr=1e-3, schedule="cosine", patience=3, grad_clip=5, seed=np.int64(7))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.grad_clip == 5.0 and isinstance(cfg.seed, int)
    assert TrainConfig().batch_size == 128 and TrainConfig().lr == 2e-3
    with pytest.raises(ConfigError, match="unknown train config keys \\['epoch'\\]"):
        TrainConfig.from_dict({"epoch": 3})


# -- a run and its files --------------------------------------------------------------------------

def test_train_on_digits_writes_the_run_dir(tmp_path):
    run = tmp_path / "run"
    result = train("digits", run, train_config={"epochs": 3, "batch_size": 64}, progress=False)
    assert isinstance(result, TrainResult)
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    assert not (run / "skipped.csv").exists()
    assert (result.n_train, result.n_val, result.epochs_run, result.best_epoch) == (1617, 180, 3, 3)
    assert not result.stopped_early and result.skipped == []

    losses = [row["train_loss"] for row in result.history]
    val = [row["val_loss"] for row in result.history]
    assert losses[0] > losses[1] > losses[2]
    assert val[0] > val[1] > val[2]
    assert result.best_val_loss == val[2]
    for row in result.history:
        assert row["train_loss"] == pytest.approx(row["train_recon"] + row["beta"] * row["train_kl"], rel=1e-4)
        assert row["images_per_s"] > 0 and row["seconds"] > 0 and row["lr"] > 0

    # the image size and channels followed the data
    config = json.loads((run / "config.json").read_text())
    assert config["model_config"]["image_size"] == 8 and config["model_config"]["channels"] == 1
    assert config["preprocess"] == {"size": 8, "channels": 1, "resize": "crop"}
    assert config["train_config"]["epochs"] == 3 and config["train_config"]["lr"] == 2e-3
    assert config["source"]["description"].startswith("digits")
    assert config["source"]["spec"] == "digits:all"  # what open_source reopens
    assert config["source"]["n_train"] == 1617 and config["tool_version"]

    assert json.loads((run / "history.json").read_text()) == result.history
    with open(run / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["train_loss"]) for r in rows] == pytest.approx(losses)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]

    with Image.open(run / "reconstructions.png") as png:
        # 16 tiles of 8 px + 2 px gaps, two rows, scaled by 8 to reach 64 px tiles
        assert png.size == ((16 * 10 + 2) * 8, (2 * 8 + 6) * 8) and png.mode == "L"

    loaded = load_model(run)
    assert loaded.fingerprint() == result.model.fingerprint()
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 3 and ckpt["finished"] and ckpt["best_epoch"] == 3
    _assert_same_weights(ckpt["model"], result.model.state_dict())  # no validation gain lost: best = last


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, digits):
    a = _run(digits[:600], tmp_path / "a", epochs=2)
    b = _run(digits[:600], tmp_path / "b", epochs=2)
    c = _run(digits[:600], tmp_path / "c", epochs=2, seed=1)
    _assert_same_weights(a.model.state_dict(), b.model.state_dict())
    assert a.history[-1]["train_loss"] == b.history[-1]["train_loss"]
    assert a.model.fingerprint() != c.model.fingerprint()


def test_training_leaves_the_callers_random_state_alone(tmp_path, digits):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _run(digits[:200], tmp_path / "r", epochs=1)
    assert torch.equal(torch.rand(3), expected)


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_gives_exactly_the_uninterrupted_weights(tmp_path, digits):
    digits = digits[:600]  # 9 batches an epoch
    full = _run(digits, tmp_path / "full")

    def crash(epoch, batch_index, logs):
        if epoch == 2 and batch_index == 3:
            raise _Interrupt()

    run = tmp_path / "interrupted"
    with pytest.raises(_Interrupt):
        _run(digits, run, callback=crash)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and not ckpt["finished"] and len(ckpt["history"]) == 1

    resumed = train(digits, run, resume=True, progress=False)  # the recorded configs are used
    assert resumed.epochs_run == 3 and len(resumed.history) == 3
    _assert_same_weights(resumed.model.state_dict(), full.model.state_dict())
    last_full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    last_resumed = torch.load(run / "checkpoint.pt", weights_only=True)
    _assert_same_weights(last_resumed["model"], last_full["model"])
    for key in ("train_loss", "val_loss", "lr", "beta"):
        assert [r[key] for r in resumed.history] == [r[key] for r in full.history]


def test_resume_and_overwrite_rules(tmp_path, digits):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="cannot resume: .* holds no checkpoint.pt"):
        _run(digits, run, resume=True)
    first = _run(digits[:300], run, epochs=2)
    with pytest.raises(ConfigError, match="already holds a finished run: resume it .* or replace it"):
        _run(digits[:300], run, epochs=2)
    with pytest.raises(ConfigError, match="different train config: epochs=5 \\(checkpoint: 2\\)"):
        train(digits[:300], run, train_config={"epochs": 5}, resume=True, progress=False)
    with pytest.raises(ConfigError, match="different model config: latent_dim=16 \\(checkpoint: 8\\)"):
        train(digits[:300], run, model_config=VAEConfig(latent_dim=16), resume=True, progress=False)
    with pytest.raises(ConfigError, match="the data differ from the checkpoint's"):
        train(digits[:200], run, resume=True, progress=False)
    with pytest.raises(ConfigError, match="exclude each other"):
        train(digits[:300], run, resume=True, overwrite=True, progress=False)
    # resuming a finished run returns it without training again
    again = train(digits[:300], run, resume=True, progress=False)
    assert again.model.fingerprint() == first.model.fingerprint() and again.history == first.history
    # overwrite starts again (here with another seed)
    other = train(digits[:300], run, train_config={"epochs": 1, "seed": 5}, overwrite=True, progress=False)
    assert other.epochs_run == 1 and other.model.fingerprint() != first.model.fingerprint()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, digits):
    run, digits = tmp_path / "run", digits[:600]

    def poison(epoch, batch_index, logs):
        if epoch == 2 and batch_index == 1:
            with torch.no_grad():
                logs["model"].to_latent.weight.fill_(float("nan"))

    with pytest.raises(TrainingError) as info:
        _run(digits, run, callback=poison)
    message = str(info.value)
    # the poisoned weights first show in the loss of the next batch (1-based batch 3)
    assert message.startswith("loss became nan at epoch 2 batch 3;")
    assert f"the last good checkpoint (epoch 1) is kept in {run}; try a lower --lr" in message
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    model = load_model(run)
    _assert_same_weights(model.state_dict(), ckpt["model"])
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())
    # and the run resumes from there
    assert train(digits, run, resume=True, progress=False).epochs_run == 3


def test_huge_learning_rate_fails_cleanly_before_any_checkpoint(tmp_path, digits):
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"loss became (nan|inf) at epoch 1 batch \d+; no epoch had finished"):
        _run(digits, run, lr=1e9, schedule="constant")
    assert not (run / "checkpoint.pt").exists() and not (run / "model.pt").exists()
    # a run that never finished an epoch is no obstacle to starting again
    assert _run(digits[:300], run, epochs=1).epochs_run == 1


def test_early_stopping_keeps_the_best_validation_weights(tmp_path, digits):
    snapshots = {}

    def snapshot(epoch, batch_index, logs):
        if batch_index == logs["n_batches"] - 1:
            snapshots[epoch] = {k: v.clone() for k, v in logs["model"].state_dict().items()}

    # 20 training images and a high constant learning rate overfit within a few epochs
    result = _run(digits[:40], tmp_path / "run", callback=snapshot, epochs=40, batch_size=8, lr=1e-2,
                  schedule="constant", val_fraction=0.5, patience=2)
    val = [r["val_loss"] for r in result.history]
    assert result.stopped_early and result.epochs_run < 40
    assert result.best_epoch == result.epochs_run - 2
    assert val[result.best_epoch - 1] == min(val)
    assert all(v >= min(val) for v in val[result.best_epoch:])
    _assert_same_weights(result.model.state_dict(), snapshots[result.best_epoch])
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["finished"] and ckpt["stopped_early"]


def test_without_validation_the_last_weights_are_kept(tmp_path, digits):
    result = _run(digits[:256], tmp_path / "run", epochs=2, val_fraction=0.0, patience=3)
    assert result.n_val == 0 and result.best_epoch == 2 and result.best_val_loss is None
    assert all(r["val_loss"] is None for r in result.history)
    with open(tmp_path / "run" / "history.csv") as fh:
        assert next(csv.DictReader(fh))["val_loss"] == ""
    assert (tmp_path / "run" / "reconstructions.png").exists()


def test_beta_warmup_and_max_images(tmp_path, digits):
    result = _run(digits, tmp_path / "run", epochs=2, beta_warmup_epochs=4, max_images=500,
                  model_config={"beta": 2.0})
    assert result.n_train + result.n_val == 500
    assert [r["beta"] for r in result.history] == pytest.approx([0.5, 1.0])  # 2.0 * epoch / 4


def test_folder_source_records_skipped_files(tmp_path, digits):
    folder = tmp_path / "images"
    for label in (0, 1):
        (folder / str(label)).mkdir(parents=True)
    for i in range(24):
        Image.fromarray(digits[i, 0]).save(folder / str(i % 2) / f"img{i:02d}.png")
    (folder / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = train(folder, tmp_path / "run", train_config={"epochs": 1, "batch_size": 8, "workers": 0},
                   progress=False)
    assert result.n_train + result.n_val == 24
    assert result.skipped == [("1/broken.png", result.skipped[0][1])]
    with open(tmp_path / "run" / "skipped.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["key"] for r in rows] == ["1/broken.png"] and rows[0]["reason"]
    assert result.model.config.image_size == 8 and result.model.config.channels == 1


def test_in_memory_input_errors(tmp_path, digits):
    with pytest.raises(DataError, match="dtype torch.float32: expected uint8"):
        train(digits.astype(np.float32), tmp_path / "a", progress=False)
    with pytest.raises(DataError, match=r"shape \(5, 1, 8, 6\): expected \(n, C, S, S\)"):
        train(digits[:5, :, :, :6], tmp_path / "b", progress=False)
    with pytest.raises(ConfigError, match="image_size=28 does not match the images' image_size 8"):
        train(digits, tmp_path / "c", model_config={"image_size": 28}, progress=False)
    with pytest.raises(ConfigError, match="invalid latent_dim=0"):
        train(digits, tmp_path / "d", model_config={"latent_dim": 0}, progress=False)


def test_progress_bar_goes_to_stderr(tmp_path, digits, capsys, monkeypatch):
    import threading

    import tqdm

    # no tqdm monitor thread and no multiprocessing lock: a process forked from this one (mutmut's workers)
    # deadlocks on them
    monkeypatch.setattr(tqdm.std.tqdm, "monitor_interval", 0)
    monkeypatch.setattr(tqdm.std.tqdm, "_lock", threading.RLock(), raising=False)
    _run(digits[:200], tmp_path / "run", epochs=1, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "epoch 1/1" in captured.err and "img/s" in captured.err


# -- command line ------------------------------------------------------------------------------------

def _cli():
    try:
        from cvae_cli.main import cli
    except ImportError:  # a sibling command module is still being written
        from cvae_cli.train import train_command as cli
        return cli, []
    return cli, ["train"]


def test_cli_train_digits(tmp_path):
    cli, prefix = _cli()
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, prefix + ["digits", "-o", str(run), "--epochs", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "trained 2 epochs on 1617 images" in result.output
    config = json.loads((run / "config.json").read_text())
    # options left unset keep the library defaults
    assert config["train_config"] == TrainConfig(epochs=2).to_dict()
    assert config["model_config"] == VAEConfig(image_size=8).to_dict()

    result = CliRunner().invoke(cli, prefix + ["digits", "-o", str(tmp_path / "j"), "--epochs", "1", "--latent-dim",
                                               "4", "--val-fraction", "0", "--no-progress", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["epochs_run"] == 1 and summary["n_val"] == 0 and summary["best_val_loss"] is None
    assert summary["images_per_s"] > 0 and summary["run_dir"] == str(tmp_path / "j")
    assert load_model(tmp_path / "j").config.latent_dim == 4


@pytest.mark.parametrize("args, message", [
    (["{tmp}/missing"], "does not exist"),
    (["{tmp}/empty"], "holds no image files"),
    (["imagenet"], "neither an existing folder"),
    (["digits", "--lr", "-1"], "invalid lr=-1.0: expected a finite number > 0"),
    (["digits", "--val-fraction", "1.5"], "invalid val_fraction=1.5"),
    (["digits", "--epochs", "0"], "invalid epochs=0: expected an integer from 1 to 100000"),
    (["digits", "--likelihood", "poisson"], "invalid likelihood='poisson'"),
    (["digits", "--channels", "2"], "channels=2"),
    (["digits", "--resume"], "holds no checkpoint.pt"),
])
def test_cli_bad_input_is_one_line_and_nonzero(tmp_path, args, message):
    cli, prefix = _cli()
    (tmp_path / "empty").mkdir()
    args = [a.format(tmp=tmp_path) for a in args]
    result = CliRunner().invoke(cli, prefix + [args[0], "-o", str(tmp_path / "run"), "--no-progress", *args[1:]])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert message in lines[0]


def test_cli_refuses_an_existing_run(tmp_path):
    cli, prefix = _cli()
    run = str(tmp_path / "run")
    args = prefix + ["digits", "-o", run, "--epochs", "1", "--max-images", "200", "--no-progress"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "already holds a finished run" in result.output
    assert CliRunner().invoke(cli, args + ["--overwrite"]).exit_code == 0


def _interrupt_cli_train(monkeypatch, at_epoch):
    """Make the CLI's train() raise KeyboardInterrupt (as Ctrl-C would) at the first step of ``at_epoch``."""
    import importlib

    train_module = importlib.import_module("cvae_features.training")  # the package attribute is the function
    real = train_module.train

    def ctrl_c(epoch, batch_index, logs):
        if epoch == at_epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", lambda *a, **kw: real(*a, **{**kw, "callback": ctrl_c}))
    return lambda: monkeypatch.setattr(train_module, "train", real)


def _train_args(prefix, run, *extra):
    return prefix + ["digits", "-o", str(run), "--epochs", "2", "--max-images", "200", "--no-progress", *extra]


def test_cli_interrupt_in_the_first_epoch_says_to_rerun_without_resume(tmp_path, monkeypatch):
    cli, prefix = _cli()
    run = tmp_path / "run"
    restore = _interrupt_cli_train(monkeypatch, at_epoch=1)
    result = CliRunner().invoke(cli, _train_args(prefix, run))
    assert result.exit_code == 130
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert "no checkpoint was written" in lines[0] and "rerun the same command without --resume" in lines[0]
    assert "with --resume" not in lines[0]
    assert not (run / "checkpoint.pt").exists() and (run / "config.json").exists()  # the dir is not empty
    restore()
    # the advice is true: --resume would fail, the same command without it succeeds (no --overwrite needed)
    assert "holds no checkpoint.pt" in CliRunner().invoke(cli, _train_args(prefix, run, "--resume")).output
    assert CliRunner().invoke(cli, _train_args(prefix, run)).exit_code == 0


def test_cli_interrupt_after_a_checkpoint_says_to_resume(tmp_path, monkeypatch):
    cli, prefix = _cli()
    run = tmp_path / "run"
    restore = _interrupt_cli_train(monkeypatch, at_epoch=2)
    result = CliRunner().invoke(cli, _train_args(prefix, run))
    assert result.exit_code == 130
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert "unfinished run (epoch 1 of 2)" in lines[0] and "rerun with --resume" in lines[0]
    restore()
    resumed = CliRunner().invoke(cli, _train_args(prefix, run, "--resume"))
    assert resumed.exit_code == 0 and "trained 2 epochs" in resumed.output, resumed.output


def test_cli_interrupt_between_model_and_first_checkpoint_says_to_overwrite(tmp_path, monkeypatch):
    # model.pt is written just before the checkpoint: a Ctrl-C in between leaves a model without a checkpoint,
    # which neither --resume nor a plain rerun accepts.
    from cvae_features import _rundir

    cli, prefix = _cli()
    run = tmp_path / "run"

    def ctrl_c(path, payload):
        raise KeyboardInterrupt

    monkeypatch.setattr(_rundir, "save_checkpoint", ctrl_c)
    result = CliRunner().invoke(cli, _train_args(prefix, run))
    monkeypatch.undo()
    assert result.exit_code == 130 and (run / "model.pt").exists() and not (run / "checkpoint.pt").exists()
    line = result.output.strip()
    assert "model.pt without a checkpoint.pt" in line and "rerun with --overwrite" in line, result.output
    plain = CliRunner().invoke(cli, _train_args(prefix, run))
    assert plain.exit_code == 1 and "cannot be resumed: replace it (--overwrite)" in plain.output
    assert "--resume" not in plain.output
    assert CliRunner().invoke(cli, _train_args(prefix, run, "--overwrite")).exit_code == 0


def test_resume_from_a_checkpoint_that_does_not_fit_is_a_config_error(tmp_path, digits):
    run = tmp_path / "run"
    _run(digits[:200], run, epochs=2)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    ckpt["finished"] = False
    ckpt["model"].pop("to_latent.bias")
    torch.save(ckpt, run / "checkpoint.pt")
    with pytest.raises(ConfigError, match=r"cannot resume from .*checkpoint.pt: its saved state does not fit"):
        train(digits[:200], run, resume=True, progress=False)


def test_autocast_and_gradient_clipping_paths_run_on_cpu(tmp_path, digits):
    # CUDA is absent here; bf16 autocast on the CPU exercises the same mixed-precision code path.
    result = _run(digits[:200], tmp_path / "run", epochs=1, amp=True, grad_clip=1.0)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["amp"] == "bfloat16" and config["device"] == "cpu"
    assert np.isfinite(result.history[0]["train_loss"]) and np.isfinite(result.history[0]["val_loss"])
