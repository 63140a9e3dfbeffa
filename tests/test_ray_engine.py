"""The Ray engine (``--engine ray``) on a real local Ray with 2 CPUs: the store it writes is the local
engine's, a Ray worker killed mid-run and a driver killed mid-run lose and repeat no row, bad input is one line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

ray = pytest.importorskip("ray", reason="the Ray engine needs Ray: pip install -e '.[dev]' (or '.[ray]') installs it")
pytest.importorskip("ray.data", reason="the Ray engine needs Ray Data: pip install -e '.[dev]' installs it")

from _images import write_class_folder, write_image_zoo  # noqa: E402
from cvae_cli.main import cli  # noqa: E402
from cvae_features.data import infer_preprocess, open_source  # noqa: E402
from cvae_features.errors import ConfigError  # noqa: E402
from cvae_features.extraction import extract  # noqa: E402
from cvae_features.featurizers import RawFeaturizer, pixels  # noqa: E402
from cvae_features.ray_engine import RayEngine  # noqa: E402
from cvae_features.model import ConvVAE  # noqa: E402
from cvae_features.store import FeatureStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BATCH = 4  # 61 files: 16 batches, in Ray tasks of 2 (4 tasks per actor), so that each of the 2 actors handles several
# what differs between two runs: when, which file (store_id), how many writer sessions (generation)
TIMESTAMPS = {"created", "updated", "store_id", "generation"}


@pytest.fixture(scope="module")
def cluster():
    """A local Ray with 2 CPUs for the whole module (started once: a start costs seconds); its GCS address."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test's featurizers travel to the actors
    if ray.is_initialized():
        ray.shutdown()
    # its workers import this checkout: they inherit PYTHONPATH and this process's working directory
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="error")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """40 labelled gray images (2 classes) and the zoo: 16 images of every kind and 5 broken files."""
    root = tmp_path_factory.mktemp("ray") / "images"
    write_class_folder(root, per_class=20)
    write_image_zoo(root / "zoo")
    return root


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("run")
    ConvVAE(image_size=12, channels=1, latent_dim=4, widths=(8, 8)).save(run)
    return run


def _cli(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args] + ["--no-progress"])
    assert result.exit_code == 0, result.output
    return result


def _h5(path):
    """Every dataset and attribute of a store file: {name: array}, {name: {attribute: value}}."""
    data, attrs = {}, {}
    with h5py.File(path, "r") as f:
        attrs["/"] = dict(f.attrs)

        def visit(name, obj):
            attrs[name] = dict(obj.attrs)
            if isinstance(obj, h5py.Dataset):
                data[name] = obj[()]
        f.visititems(visit)
    return data, attrs


def assert_same_store(a, b, atol=1e-5):
    """Same keys (order), labels, label names, skips and reasons, plan, attributes; features within ``atol``."""
    (data_a, attrs_a), (data_b, attrs_b) = _h5(a), _h5(b)
    assert sorted(data_a) == sorted(data_b)
    for name, x in data_a.items():
        y = data_b[name]
        assert x.shape == y.shape and x.dtype == y.dtype, name
        if x.dtype.kind == "f":
            np.testing.assert_allclose(x, y, rtol=0, atol=atol, err_msg=name)
        else:
            assert np.array_equal(x, y), name
    strip = {k: {n: v for n, v in d.items() if n not in TIMESTAMPS} for k, d in attrs_a.items()}
    assert strip == {k: {n: v for n, v in d.items() if n not in TIMESTAMPS} for k, d in attrs_b.items()}
    with FeatureStore(a) as s:
        assert s.is_complete and s.n_rows > 0
        assert len(set(s.keys)) == len(s.keys)  # every key once


def test_the_ray_store_is_the_local_store_vae_with_scores(tmp_path, cluster, folder, model_path):
    local, remote = tmp_path / "local.h5", tmp_path / "ray.h5"
    common = [folder, "--model", model_path, "--batch-size", BATCH, "--scores", "--logvar"]
    _cli("extract", *common, "-o", local, "--workers", 0)
    out = _cli("extract", *common, "-o", remote, "--engine", "ray")
    assert "56 rows written" in out.output and "5 skipped" in out.output
    assert_same_store(local, remote)
    with FeatureStore(remote) as s:
        assert s.extras == ["logvar", "recon_error", "neg_elbo"] and s.label_names == ["circle", "square", "zoo"]
        assert s.skipped["key"].tolist() == ["zoo/bomb.png", "zoo/corrupt.png", "zoo/empty.png", "zoo/notes.png",
                                             "zoo/truncated.jpg"]
        assert np.isfinite(s.extra("neg_elbo")).all() and np.abs(s.features).sum() > 0


class _DiesOnce:
    """The raw batch call, except that the process calling it exits at its third call: once in all (a marker file)."""

    def __init__(self, marker):
        self.marker, self.calls = marker, 0

    def __call__(self, images):
        self.calls += 1
        if self.calls == 3:
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                os._exit(1)  # no clean-up, no exception: the worker process is gone
        return pixels(images), {}


class _DyingRaw(RawFeaturizer):
    marker = None

    def batch_fn(self, extras, device):
        return _DiesOnce(self.marker)


def test_a_ray_worker_killed_mid_run_loses_and_repeats_no_row(tmp_path, cluster, folder):
    """Raw features, one of the two actors killed at its third batch (its second task's first): the store is the
    local engine's, bit for bit."""
    feat = _DyingRaw(infer_preprocess(open_source(folder)))
    feat.marker = str(tmp_path / "died")
    done = []
    remote = extract(folder, tmp_path / "ray.h5", model=feat, batch_size=BATCH, engine="ray", progress=False,
                     callback=lambda p: done.append(p.n_done + p.n_skipped))
    died = int(Path(feat.marker).read_text())
    assert died != os.getpid() and done == sorted(done) and done[-1] == 61  # an actor died; every batch came once
    local = extract(folder, tmp_path / "local.h5", features="raw", batch_size=BATCH, workers=0, progress=False)
    assert (remote.n_rows, remote.n_new_skipped) == (local.n_rows, local.n_new_skipped) == (56, 5)
    assert remote.skipped == local.skipped
    assert_same_store(local.path, remote.path, atol=0)  # pixels / 255: the same floats


def test_tasks_of_several_batches_and_a_short_last_one_make_the_local_store(tmp_path, cluster, folder, monkeypatch):
    assert RayEngine(actors=2).batches_per_task(16, 2) == 2  # what the other tests here run: 16 batches, 2 actors
    monkeypatch.setattr(RayEngine, "batches_per_task", lambda self, n_batches, n_actors: 3)  # 3+3+3+3+3+1 batches
    done = []
    remote = extract(folder, tmp_path / "ray.h5", features="raw", batch_size=BATCH, engine="ray", progress=False,
                     callback=lambda p: done.append(p.n_done + p.n_skipped))
    local = extract(folder, tmp_path / "local.h5", features="raw", batch_size=BATCH, workers=0, progress=False)
    assert done == [min(4 * (i + 1), 61) for i in range(16)]  # committed batch by batch, in plan order
    assert_same_store(local.path, remote.path, atol=0)


KILLED_DRIVER = """
import os, signal, sys
from cvae_features.extraction import extract
def kill(progress):
    if progress.batch == 1:  # two batches committed: the whole process group dies, no clean-up
        os.killpg(0, signal.SIGKILL)
extract(sys.argv[1], sys.argv[2], model=sys.argv[3], shard="1/2", batch_size=%d, engine="ray",
        ray_address=sys.argv[4], progress=False, scores=True, callback=kill)
""" % BATCH


def test_on_a_machine_with_an_accelerator_the_ray_actors_still_encode(tmp_path, cluster, folder, monkeypatch):
    """engine='ray' where this machine's device is an accelerator (torch's meta device stands in): the actors
    encode on their CPUs and this process only writes what they send (Ray's batches carry no images)."""
    from cvae_features import extraction

    local = extract(folder, tmp_path / "local.h5", features="raw", batch_size=BATCH, workers=0, progress=False)
    monkeypatch.setattr(extraction, "resolve_device", lambda device: torch.device("meta"))
    remote = extract(folder, tmp_path / "ray.h5", features="raw", batch_size=BATCH, engine="ray", progress=False)
    assert_same_store(local.path, remote.path, atol=0)


def test_a_killed_driver_is_finished_by_resume(tmp_path, cluster, folder, model_path):
    """A shard extracted by a driver attached to the cluster (--ray-address), killed with its process group."""
    killed = tmp_path / "killed.h5"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", KILLED_DRIVER, folder, killed, model_path, cluster],
                          capture_output=True, text=True, start_new_session=True, env=env, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    with FeatureStore(killed) as s:
        assert not s.is_complete and s.shard == (1, 2)
        assert s.n_rows + s.n_skipped == 2 * BATCH  # exactly the two committed batches

    _cli("extract", folder, "-o", killed, "--model", model_path, "--resume", "--engine", "ray", "--ray-address",
         cluster, "--batch-size", BATCH, "--scores")
    _cli("extract", folder, "-o", tmp_path / "full.h5", "--model", model_path, "--batch-size", BATCH, "--scores",
         "--shard", "1/2", "--workers", 0)
    assert_same_store(tmp_path / "full.h5", killed)


def test_update_with_the_ray_engine_is_the_local_update(tmp_path, cluster, folder):
    """--update re-extracts a changed file and adds new ones, with either engine on the same store."""
    import shutil

    images = tmp_path / "images"
    shutil.copytree(folder, images)
    first = extract(images, tmp_path / "local.h5", features="raw", batch_size=BATCH, workers=0, progress=False)
    shutil.copy(first.path, tmp_path / "ray.h5")
    changed = images / "circle" / "img_003.png"
    Image.fromarray(np.full((12, 12), 7, np.uint8)).save(changed)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    for i in range(8):
        Image.fromarray(np.full((12, 12), 30 * i, np.uint8)).save(images / "square" / f"new_{i}.png")
    local = extract(images, first.path, update=True, batch_size=BATCH, workers=0, progress=False)
    remote = extract(images, tmp_path / "ray.h5", update=True, batch_size=BATCH, engine="ray", progress=False)
    assert (remote.n_changed, remote.n_new) == (local.n_changed, local.n_new) == (1, 8)
    assert_same_store(first.path, tmp_path / "ray.h5", atol=0)
    with FeatureStore(first.path) as s:
        row = s.keys.index("circle/img_003.png")
        assert np.allclose(s.features[row], 7 / 255)  # the new pixels, not the old


# ------------------------------------------------------------------------------------------------
# bad input: one line, fast, nothing written or lost

def _fails(*args):
    started = time.perf_counter()
    result = CliRunner().invoke(cli, [str(a) for a in args] + ["--no-progress"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0], time.perf_counter() - started


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_ray_address_fails_fast_and_keeps_the_store(tmp_path, cluster, folder):
    path = tmp_path / "s.h5"

    def stop(progress):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # a store with one batch written, to be resumed
        extract(folder, path, features="raw", workers=0, progress=False, batch_size=BATCH, callback=stop)
    before = path.read_bytes()
    address = f"127.0.0.1:{_closed_port()}"
    line, seconds = _fails("extract", folder, "-o", path, "--resume", "--engine", "ray", "--ray-address", address)
    assert f"cannot reach a Ray cluster at --ray-address {address}" in line and seconds < 10
    assert path.read_bytes() == before  # not even opened for writing
    with FeatureStore(path) as s:
        assert s.n_rows + s.n_skipped == BATCH

    # something answers there, but not Ray (a web server: the dashboard's port is a common mistake)
    server = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=_answer_http, args=(server,), daemon=True).start()
    address = f"127.0.0.1:{server.getsockname()[1]}"
    line, seconds = _fails("extract", folder, "-o", tmp_path / "new.h5", "--features", "raw", "--engine", "ray",
                           "--ray-address", address)
    server.close()
    assert f"--ray-address {address} answers, but not as a Ray cluster" in line and seconds < 10
    assert not (tmp_path / "new.h5").exists()


def _answer_http(server):
    try:
        while True:
            conn, _ = server.accept()
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            conn.close()
    except OSError:
        return


@pytest.mark.parametrize("args, message", [
    (["--ray-address", "127.0.0.1:6379"], "--ray-address 127.0.0.1:6379 needs --engine ray"),
    (["--engine", "ray", "--workers", "0"], "--engine ray cannot honour --workers 0"),
    (["--engine", "ray", "--device", "cuda"], "--engine ray cannot honour --device cuda"),
    (["--engine", "ray", "--ray-address", "ray://head:10001"], "Ray Client addresses are not supported"),
    (["--engine", "ray", "--ray-address", "head"], "invalid --ray-address 'head': expected HOST:PORT"),
])
def test_options_the_ray_engine_cannot_honour_are_refused(tmp_path, folder, args, message):
    line, _ = _fails("extract", folder, "-o", tmp_path / "x.h5", "--features", "raw", *args)
    assert message in line
    assert not (tmp_path / "x.h5").exists()
    with pytest.raises(ConfigError):
        extract(folder, tmp_path / "x.h5", features="raw", engine="spark")


def test_without_ray_the_message_names_the_extra(tmp_path, folder):
    code = ("import sys; sys.modules['ray'] = None; from cvae_cli.main import cli; "
            "cli(['extract', sys.argv[1], '-o', sys.argv[2], '--features', 'raw', '--engine', 'ray'])")
    proc = subprocess.run([sys.executable, "-c", code, str(folder), str(tmp_path / "x.h5")], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert 'pip install "cvae-features[ray]"' in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.h5").exists()
