"""Training that does not depend on batching: keyed noise; data-parallel training with two real processes."""

import numpy as np
import pytest
import torch

from cvae_features.model import ConvVAE
from cvae_features.noise import keyed_normal


def test_keyed_noise_is_a_function_of_key_and_index_only():
    a = keyed_normal(7, torch.tensor([3, 9, 4]), 16)
    b = keyed_normal(7, torch.tensor([4, 100, 3]), 16)
    assert torch.equal(a[0], b[2]) and torch.equal(a[2], b[0])
    assert not torch.equal(keyed_normal(8, torch.tensor([3]), 16)[0], a[0])  # another key (epoch): other noise
    assert not torch.equal(a[0], a[1])
    z = keyed_normal(1, torch.arange(5000), 40).numpy()
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert abs(np.corrcoef(z[:, 0], z[:, 1])[0, 1]) < 0.05 and abs(np.corrcoef(z[:-1, 0], z[1:, 0])[0, 1]) < 0.05
    assert (np.abs(z) > 3).mean() < 0.005 and np.isfinite(z).all()


def test_a_batch_split_in_two_gives_the_same_per_image_terms():
    torch.manual_seed(0)
    model = ConvVAE(image_size=8, channels=1, latent_dim=4, widths=(8,)).train()
    images = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8)
    index = torch.arange(20, 30)
    whole = model.loss({"images": images, "index": index, "noise_key": torch.tensor(5)})
    halves = [model.loss({"images": images[s], "index": index[s], "noise_key": torch.tensor(5)})
              for s in (slice(0, 4), slice(4, 10))]
    for name in ("recon", "kl"):
        joined = torch.cat([h.per_sample_terms()[name] for h in halves])
        torch.testing.assert_close(joined, whole.per_sample_terms()[name])
    other = model.loss({"images": images, "index": index, "noise_key": torch.tensor(6)})
    assert not torch.allclose(other.per_sample_terms()["recon"], whole.per_sample_terms()["recon"])


# -- two real processes (gloo on CPU), through `cvae train --nproc 2` -------------------------------------------

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from cvae_features.resolve import load_model  # noqa: E402

TRAIN = ["train", "digits:train", "--max-images", "400", "--batch-size", "32", "--latent-dim", "4",
         "--no-progress", "--workers", "0"]


def _cvae(*args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "cvae_cli.main", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300, **kw)


def _weights_close(a, b, atol=1e-5):
    sa, sb = load_model(a).state_dict(), load_model(b).state_dict()
    assert sa.keys() == sb.keys()
    worst = max(float((sa[k] - sb[k]).abs().max()) for k in sa)
    assert worst < atol, worst


EPOCHS = 6


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """An uninterrupted one-process run: what every two-process run must reproduce."""
    run = tmp_path_factory.mktemp("one") / "run"
    out = _cvae(*TRAIN, "--epochs", EPOCHS, "-o", run)
    assert out.returncode == 0, out.stderr
    return run


def test_two_processes_train_what_one_process_trains(tmp_path, one_process):
    two = _cvae(*TRAIN, "--epochs", EPOCHS, "-o", tmp_path / "two", "--nproc", "2", "--json")
    assert two.returncode == 0, two.stderr
    summary = json.loads(two.stdout)  # one JSON document: only rank 0 reports
    assert summary["n_train"] + summary["n_val"] == 400
    h1 = json.loads((one_process / "history.json").read_text())
    h2 = json.loads((tmp_path / "two" / "history.json").read_text())
    assert len(h1) == len(h2) == EPOCHS
    for r1, r2 in zip(h1, h2):
        for key in ("train_loss", "train_recon", "train_kl", "val_loss", "val_recon", "val_kl"):
            assert abs(r1[key] - r2[key]) <= 1e-5 * abs(r1[key]), (key, r1[key], r2[key])
    _weights_close(one_process, tmp_path / "two")
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["processes"] == 2


def _two_processes_past_one_epoch(run, output):
    """`cvae train --nproc 2` started in its own session, returned once its first epoch is in history.json."""
    args = [sys.executable, "-m", "cvae_cli.main", *TRAIN, "--epochs", str(EPOCHS), "-o", str(run), "--nproc", "2"]
    proc = subprocess.Popen(args, stdout=output, stderr=output, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                if len(json.loads((run / "history.json").read_text())) >= 1:
                    return proc
            except (OSError, ValueError):
                pass
            time.sleep(0.01)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_weights(tmp_path, one_process):
    run = tmp_path / "run"
    proc = _two_processes_past_one_epoch(run, subprocess.DEVNULL)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both training processes
    proc.wait()
    done = len(json.loads((run / "history.json").read_text()))
    assert 1 <= done < EPOCHS, done  # killed part-way
    resumed = _cvae(*TRAIN, "--epochs", EPOCHS, "-o", run, "--nproc", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    _weights_close(run, one_process)
    assert len(json.loads((run / "history.json").read_text())) == EPOCHS
    again = _cvae(*TRAIN, "--epochs", EPOCHS, "-o", run, "--nproc", "2")  # a library error under the launcher
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert [line for line in again.stderr.splitlines() if line.strip()] == [
        f"Error: run_dir {run} already holds a finished run: resume it (--resume) or replace it (--overwrite)"]


def _rank_pid(launcher_pid: int, rank: int):
    """The pid of the training process of ``rank`` that the launcher ``launcher_pid`` started (Linux /proc)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{name}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except OSError:
            continue
        if ppid == launcher_pid and f"RANK={rank}".encode() in env:
            return int(name)
    return None


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the training processes through /proc")
def test_killing_one_process_is_one_line(tmp_path):
    run = tmp_path / "run"
    proc = _two_processes_past_one_epoch(run, subprocess.PIPE)
    try:
        victim = _rank_pid(proc.pid, 1)
        assert victim is not None and proc.poll() is None
        os.kill(victim, signal.SIGKILL)  # one training process only: rank 0 and the launcher see it die
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert [line for line in err.splitlines() if line.strip()] == [
        "Error: training process 1 was stopped by SIGKILL and the launcher stopped the others; the run dir keeps "
        "the last finished epoch: run the same command with --resume"]
    assert 1 <= len(json.loads((run / "history.json").read_text())) < EPOCHS  # resumable: the test above


def test_a_lost_process_error_names_the_reason_in_a_few_words():
    from cvae_features._distributed import lost_contact

    gloo = RuntimeError("[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:37526: "
                        "Connection reset by peer. This is typically caused by a remote worker hanging. GLHF!")
    assert lost_contact(gloo) == "Read error [127.0.0.1]:37526: Connection reset by peer"
    assert lost_contact(RuntimeError("NCCL communicator was aborted on rank 1.")) == (
        "NCCL communicator was aborted on rank 1.")
    assert lost_contact(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)")) == ""
    assert lost_contact(ValueError("x" * 300 + " broken pipe")) == "x" * 120


def test_more_processes_than_a_batch_holds_is_one_line(tmp_path):
    out = _cvae(*TRAIN, "--epochs", "1", "--batch-size", "1", "-o", tmp_path / "run", "--nproc", "2")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--nproc 2 is more processes than a batch of 1 image(s) can feed" in out.stderr
    assert not (tmp_path / "run").exists()


def test_a_run_dir_in_use_by_another_training_is_refused(tmp_path):
    from cvae_features._train_setup import lock_run_dir
    from cvae_features.errors import ConfigError
    from cvae_features.training import train

    held = lock_run_dir(tmp_path / "run")
    try:
        with pytest.raises(ConfigError, match=rf"run_dir {tmp_path / 'run'} is in use by another training process "
                                              rf"\(pid {os.getpid()}\)"):
            train("digits:train", tmp_path / "run", train_config={"epochs": 1, "max_images": 50}, progress=False)
    finally:
        held.close()
    result = train("digits:train", tmp_path / "run", train_config={"epochs": 1, "max_images": 50}, progress=False,
                   model_config={"latent_dim": 2})
    assert result.epochs_run == 1  # free again once the holder is gone


def test_processes_that_disagree_on_the_config_stop_with_one_line(tmp_path):
    script = tmp_path / "disagree.py"
    script.write_text(
        "import os, sys\n"
        "from cvae_features.errors import ConfigError\n"
        "from cvae_features.training import train\n"
        "lr = 1e-3 if os.environ['RANK'] == '0' else 2e-3\n"
        "try:\n"
        f"    train('digits:train', {str(tmp_path / 'run')!r}, progress=False, model_config={{'latent_dim': 2}},\n"
        "          train_config={'epochs': 1, 'max_images': 64, 'batch_size': 16, 'lr': lr})\n"
        "except ConfigError as err:\n"
        "    print(f'rank {os.environ[\"RANK\"]}: {err}')\n"
        "    sys.exit(3)\n")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          str(script)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode != 0
    # the launcher stops the other process when the first exits: one or both may have printed
    lines = sorted(line for line in out.stdout.splitlines() if line.startswith("rank "))
    assert 1 <= len(lines) <= 2 and all("the 2 processes disagree on the run: process 1 has lr=0.002, process 0 lr=0.001"
                                   in line for line in lines), out.stdout + out.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("rank, launched, code, said", [
    ("1", "", 1, True),     # plain torchrun: a surviving process says why, whatever its rank
    ("0", "1", 75, False),  # under `cvae train --nproc`: quiet, the launcher names the process that was stopped
    ("1", "1", 75, False),
])
def test_a_survivor_reports_a_lost_process_unless_the_launcher_does(monkeypatch, rank, launched, code, said):
    import click
    from click.testing import CliRunner

    from cvae_cli._common import library_errors
    from cvae_features.errors import ConfigError, LostProcessError

    @click.command()
    @click.option("--kind")
    @library_errors
    def cmd(kind):
        raise (LostProcessError if kind == "lost" else ConfigError)(f"{kind} error")

    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("CVAE_NPROC_LAUNCHER", launched)
    out = CliRunner().invoke(cmd, ["--kind", "lost"])
    assert out.exit_code == code and ("Error: lost error" in out.output) == said
    if rank == "1":  # any other error on a rank other than 0 stays quiet: rank 0 meets it too and says it
        monkeypatch.setattr("time.sleep", lambda s: None)
        other = CliRunner().invoke(cmd, ["--kind", "config"])
        assert other.exit_code == 1 and "config error" not in other.output
