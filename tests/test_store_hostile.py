"""Hostile but fair input to the store and extraction: each test builds the input itself and checks the
clear outcome (a one-line error, a recorded skip, or a store equal to an uninterrupted one), never lost rows."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from _images import write_class_folder
from cvae_cli.main import cli
from cvae_features.data import open_source
from cvae_features.errors import DataError, ModelError, StoreError, StoreNoSpaceError
from cvae_features.extraction import extract
from cvae_features.model import ConvVAE
from cvae_features.resolve import load_model
from cvae_features.store import FeatureStore, StoreWriter

from _stores import vae_fields

SIZE = 12
PRE = {"size": 8, "channels": 1, "resize": "crop"}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("run")
    ConvVAE(image_size=SIZE, channels=1, latent_dim=4, widths=(8, 8)).save(run)
    return run


def _folder(root, per_class=6, seed=0):
    write_class_folder(root, per_class=per_class, size=(SIZE, SIZE), seed=seed)
    return root


class _Stop(Exception):
    pass


def _stop_after(k):
    def callback(progress):
        if progress.batch == k - 1:
            raise _Stop
    return callback


def _interrupted(root, store, model_path, k=1):
    with pytest.raises(_Stop):
        extract(root, store, model=model_path, batch_size=2, workers=0, progress=False, callback=_stop_after(k))
    with FeatureStore(store) as s:
        assert not s.is_complete
        return s.n_rows, s.n_pending


def _same_store(a_path, b_path):
    with FeatureStore(a_path) as a, FeatureStore(b_path) as b:
        assert a.is_complete and b.is_complete
        assert a.keys == b.keys
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.skipped.equals(b.skipped)


def _cli(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


# -- resume and update keep to the store's own source ----------------------------------------------

def test_resume_with_another_source_is_refused_and_loses_nothing(tmp_path, model_path):
    root = _folder(tmp_path / "a")
    other = _folder(tmp_path / "b", seed=1)
    store = tmp_path / "inc.h5"
    rows, pending = _interrupted(root, store, model_path)
    with pytest.raises(StoreError, match=r"was extracted from .*/a, not .*/b"):
        extract(other, store, model=model_path, workers=0, batch_size=2, progress=False, resume=True)
    result = _cli(["extract", other, "-o", store, "--model", model_path, "--resume", "--no-progress"])
    assert result.exit_code == 1 and "was extracted from" in result.output and "Traceback" not in result.output
    with FeatureStore(store) as s:  # nothing was turned into a skip
        assert (s.n_rows, s.n_pending, s.n_skipped) == (rows, pending, 0)
    extract(root, store, model=model_path, workers=0, batch_size=2, progress=False, resume=True)
    extract(root, tmp_path / "full.h5", model=model_path, workers=0, batch_size=2, progress=False)
    _same_store(store, tmp_path / "full.h5")


def test_resume_with_part_of_the_source_never_turns_pending_images_into_skips(tmp_path, model_path):
    root = _folder(tmp_path / "a")
    store = tmp_path / "inc.h5"
    rows, pending = _interrupted(root, store, model_path)
    part = open_source(root).subset([0, 1, 2])  # the same folder (same spec), but not all of it
    with pytest.raises(StoreError, match="still pending .* are not in"):
        extract(part, store, model=model_path, workers=0, batch_size=2, progress=False, resume=True)
    with FeatureStore(store) as s:
        assert (s.n_rows, s.n_pending, s.n_skipped) == (rows, pending, 0)


def test_a_pending_file_deleted_from_the_source_is_a_recorded_skip(tmp_path, model_path):
    root = _folder(tmp_path / "a")
    store = tmp_path / "inc.h5"
    _interrupted(root, store, model_path)
    gone = sorted((root / "square").iterdir())[-1]
    gone.unlink()
    res = extract(root, store, model=model_path, workers=0, batch_size=2, progress=False, resume=True)
    assert res.complete
    with FeatureStore(store) as s:
        assert s.skipped.values.tolist() == [[f"square/{gone.name}",
                                              "removed from the source folder before it was extracted"]]
        assert f"square/{gone.name}" not in s.keys and s.n_rows == 11


def test_update_with_another_source_is_refused(tmp_path, model_path):
    root = _folder(tmp_path / "a")
    store = tmp_path / "s.h5"
    extract(root, store, model=model_path, workers=0, batch_size=2, progress=False)
    torch.manual_seed(0)
    with pytest.raises(StoreError, match="was extracted from .*, not digits:test"):
        extract("digits:test", store, model=model_path, workers=0, batch_size=2, progress=False, update=True)
    with FeatureStore(store) as s:
        assert s.n_rows == 12 and all(not k.startswith("digits") for k in s.keys)


def _rewrite(path: Path, value: int, mtime_shift_ns: int):
    st = path.stat()
    Image.fromarray(np.full((SIZE, SIZE), value, np.uint8), "L").save(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + mtime_shift_ns))


def test_update_reextracts_changed_files_adds_new_ones_and_counts_removed(tmp_path, model_path):
    root = _folder(tmp_path / "a")
    store = tmp_path / "s.h5"
    extract(root, store, model=model_path, workers=0, batch_size=2, progress=False)
    circle = sorted((root / "circle").iterdir())
    _rewrite(circle[0], 250, 2_000_000_000)  # new content, new size or mtime
    circle[1].unlink()
    Image.fromarray(np.full((SIZE, SIZE), 7, np.uint8), "L").save(root / "circle" / "zz_new.png")
    result = _cli(["extract", root, "-o", store, "--model", model_path, "--update", "--no-progress", "--workers", 0, "--batch-size", 2])
    assert result.exit_code == 0, result.output
    assert "1 changed file re-extracted" in result.output and "1 row whose file is gone" in result.output
    res = extract(root, store, model=model_path, workers=0, batch_size=2, progress=False, update=True)
    assert (res.n_new, res.n_changed) == (0, 0)  # a second update finds nothing to do
    fresh = extract(root, tmp_path / "fresh.h5", model=model_path, workers=0, batch_size=2, progress=False)
    with FeatureStore(store) as s, FeatureStore(fresh.path) as f:
        assert s.is_complete and s.n_rows == 13  # 12 - 1 removed (kept) + 1 new
        row = {k: i for i, k in enumerate(s.keys)}
        frow = {k: i for i, k in enumerate(f.keys)}
        changed = f"circle/{circle[0].name}"
        # (other batches than the fresh run's: equal up to float rounding)
        np.testing.assert_allclose(s.features[row[changed]], f.features[frow[changed]], rtol=0, atol=1e-6)
        np.testing.assert_allclose(s.features[row["circle/zz_new.png"]], f.features[frow["circle/zz_new.png"]],
                                   rtol=0, atol=1e-6)
        assert np.abs(s.features[row[changed]] - f.features[frow[f"circle/{circle[2].name}"]]).max() > 1e-3
        assert f"circle/{circle[1].name}" in row  # the removed file's row is kept, and reported


# -- kill safety -------------------------------------------------------------------------------------

# Write keys past the committed rows with HDF5's chunk cache off, so the chunk reaches the disk while
# the strings it points to stay in memory, then die: what a kill -9 in the middle of a batch leaves.
_DIE_MID_BATCH = """
import os, signal, sys
import h5py, numpy as np
from cvae_features.store import StoreWriter
path = sys.argv[1]
writer = StoreWriter.append_to(path)
writer._f.close()
f = h5py.File(path, "r+", rdcc_nbytes=0)
keys = f["keys"]
n = int(f.attrs["n_rows"])
keys.resize(n + 5, axis=0)
keys[n:] = np.asarray([f"never/committed/{i}.png" for i in range(5)], dtype=object)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _plain_store(path, n_plan=40, n_first=10):
    keys = [f"k/{i:03d}.png" for i in range(n_plan)]
    feats = np.arange(n_plan * 2, dtype=np.float32).reshape(n_plan, 2)
    with StoreWriter.create(path, feature_kind="raw", dim=2, preprocess=PRE, source="x", plan_keys=keys) as w:
        w.write_batch(np.arange(n_first), feats[:n_first], np.full(n_first, -1))
    return keys, feats


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_strings_left_unflushed_by_a_kill_do_not_break_the_first_resume(tmp_path):
    path = tmp_path / "s.h5"
    keys, feats = _plain_store(path)
    proc = subprocess.run([sys.executable, "-c", _DIE_MID_BATCH, str(path)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with FeatureStore(path) as s:
        assert s.n_rows == 10 and s.keys == keys[:10]
    with StoreWriter.append_to(path) as w:  # before the repair this failed: "bad heap index/pointer"
        w.write_batch(np.arange(10, 40), feats[10:], np.full(30, -1))
    with FeatureStore(path) as s:
        assert s.is_complete and s.keys == keys
        np.testing.assert_array_equal(s.features, feats)


_DIE_MID_PLAN_EXTENSION = """
import os, signal, sys
import h5py, numpy as np
from cvae_features.store import StoreWriter
path = sys.argv[1]
StoreWriter.append_to(path)._f.close()
f = h5py.File(path, "r+", rdcc_nbytes=0)
plan = f["plan"]
n = plan["keys"].shape[0]
for name in ("status", "keys"):
    plan[name].resize(n + 3, axis=0)
plan["status"][n:] = 0
plan["keys"][n:] = np.asarray(["late/a.png", "late/b.png", "late/c.png"], dtype=object)
f.flush()  # the new entries reach the disk, their commit (n_plan) does not
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_plan_extension_cut_short_is_not_part_of_the_plan(tmp_path):
    path = tmp_path / "s.h5"
    keys, feats = _plain_store(path)
    proc = subprocess.run([sys.executable, "-c", _DIE_MID_PLAN_EXTENSION, str(path)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with FeatureStore(path) as s:
        assert s.plan_status == {"pending": 30, "done": 10, "skipped": 0}
    with StoreWriter.append_to(path) as w:
        assert w.plan_keys == keys
        index = w.add_plan(["late/a.png"])
        w.write_batch(np.arange(10, 40), feats[10:], np.full(30, -1))
        w.write_batch(index, np.zeros((1, 2), np.float32), [-1])
    with FeatureStore(path) as s:
        assert s.is_complete and s.keys == keys + ["late/a.png"]


def test_a_repair_cut_short_is_finished_on_reopening(tmp_path):
    path = tmp_path / "s.h5"
    keys, feats = _plain_store(path)
    with h5py.File(path, "r+") as f:  # killed after unlinking the old keys, before renaming the new ones
        f.copy(f["keys"], "keys~new")
        del f["keys"]
        f.attrs["open_for_writing"] = 1
    with pytest.raises(StoreError, match=r"missing /keys \(interrupted repair"):
        FeatureStore(path)
    with h5py.File(path, "r+") as f:  # a second kind: killed before the old keys were unlinked
        f.copy(f["keys~new"], "keys")
        f["keys~new"].resize(3, axis=0)  # an incomplete copy must not win
    with StoreWriter.append_to(path) as w:
        w.write_batch(np.arange(10, 40), feats[10:], np.full(30, -1))
    with FeatureStore(path) as s, h5py.File(path, "r") as f:
        assert s.keys == keys and "keys~new" not in f


def test_a_write_failing_half_way_leaves_the_store_as_before_the_batch(tmp_path):
    """A real write error in the middle of a batch (the file-size limit of the process): no counter moves."""
    path = tmp_path / "s.h5"
    keys, feats = _plain_store(path, n_plan=3000, n_first=10)
    size = path.stat().st_size
    code = f"""
import resource, signal, sys, numpy as np
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({size} + 4096, {size} + 4096))
from cvae_features.store import StoreWriter
from cvae_features.errors import StoreError
w = StoreWriter.append_to(sys.argv[1])
big = np.ones((2990, 2), np.float32)
try:
    w.write_batch(np.arange(10, 3000), big, np.full(2990, -1))
except StoreError as err:
    print("refused:", err)
    assert w.n_rows == 10
w.close()
"""
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert "refused: writing" in proc.stdout and "10 rows are committed" in proc.stdout, proc.stdout + proc.stderr
    with FeatureStore(path) as s:  # exactly as before the batch
        assert s.n_rows == 10 and s.keys == keys[:10] and s.n_pending == 2990
        np.testing.assert_array_equal(s.features, feats[:10])
    with StoreWriter.append_to(path) as w:
        w.write_batch(np.arange(10, 3000), feats[10:], np.full(2990, -1))
    with FeatureStore(path) as s:
        assert s.is_complete and s.keys == keys
        np.testing.assert_array_equal(s.features, feats)


def _can_mount_tmpfs(where: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    where.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
                        capture_output=True).returncode == 0
    return ok


def test_disk_full_is_one_line_and_resume_finishes_after_space_is_freed(tmp_path):
    mnt = tmp_path / "small"
    if not _can_mount_tmpfs(mnt):
        pytest.skip("needs root and permission to mount a small tmpfs (a real full disk)")
    try:
        torch.manual_seed(0)
        model = tmp_path / "wide.pt"
        ConvVAE(image_size=8, channels=1, latent_dim=512, widths=(4,)).save(model)  # 3.7 MB of features
        args = ["extract", "digits:all", "-o", mnt / "d.h5", "--model", model, "--workers", 0, "--batch-size", 32,
                "--no-progress"]
        proc = subprocess.run([sys.executable, "-m", "cvae_cli.main", *map(str, args)], capture_output=True,
                              text=True)
        assert proc.returncode == 1, proc.stderr  # not a crash (-11) and not a traceback
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "no space left on the device of" in lines[0] and "MB more are needed" in lines[0]
        with FeatureStore(mnt / "d.h5") as s:
            assert 0 < s.n_rows < 1797 and s.n_pending == 1797 - s.n_rows
        subprocess.run(["mount", "-o", "remount,size=16m", str(mnt)], check=True)
        proc = subprocess.run([sys.executable, "-m", "cvae_cli.main", *map(str, args), "--resume"],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        extract("digits:all", tmp_path / "full.h5", model=model, workers=0, batch_size=32, progress=False)
        _same_store(mnt / "d.h5", tmp_path / "full.h5")
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_store_on_a_full_disk_from_the_api_is_store_no_space_error(tmp_path, monkeypatch):
    """The check runs before HDF5 writes anything: reported free space below one batch's need."""
    path = tmp_path / "s.h5"
    keys, feats = _plain_store(path)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with StoreWriter.append_to(path) as w:
        with pytest.raises(StoreNoSpaceError, match="1,000 ... MB free|0.0 MB free"):
            w.write_batch(np.arange(10, 40), feats[10:], np.full(30, -1))
    with FeatureStore(path) as s:
        assert s.n_rows == 10 and s.n_pending == 30


# -- damaged, locked, truncated stores -------------------------------------------------------------------

def _damage(path, how):
    with h5py.File(path, "r+") as f:
        if how == "labels shorter than n_rows":
            f["labels"].resize(3, axis=0)
        elif how == "features shorter than n_rows":
            f["features"].resize(3, axis=0)
        elif how == "negative n_rows":
            f.attrs["n_rows"] = -3
        elif how == "format_version one":
            f.attrs["format_version"] = "one"
        elif how == "bad preprocess JSON":
            f.attrs["preprocess"] = "{size: 8"
        elif how == "plan deleted":
            del f["plan"]
        elif how == "1-D features":
            del f["features"]
            f.create_dataset("features", data=np.zeros(10, np.float32))
        elif how == "n_rows as text":
            f.attrs["n_rows"] = "10"
        elif how == "label out of range":
            f["labels"][4] = 7


@pytest.mark.parametrize("how, message", [
    ("labels shorter than n_rows", "/labels holds 3 entries but the store counts 10"),
    ("features shorter than n_rows", "/features holds 3 entries but the store counts 10"),
    ("negative n_rows", "n_rows is -3, expected an integer >= 0"),
    ("format_version one", "format_version is 'one', expected an integer"),
    ("bad preprocess JSON", "preprocess attribute"),
    ("plan deleted", "missing /plan"),
    ("1-D features", "/features has 1 dimension(s), expected 2"),
    ("n_rows as text", "n_rows is '10', expected an integer"),
])
def test_a_damaged_store_is_refused_with_one_line(tmp_path, how, message):
    path = tmp_path / "s.h5"
    _plain_store(path)
    _damage(path, how)
    with pytest.raises(StoreError, match="damaged store") as err:
        FeatureStore(path)
    assert message in str(err.value) and "\n" not in str(err.value)
    for args in (["info", path], ["probe", path]):
        result = _cli(args)
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    with pytest.raises(StoreError, match="damaged store"):
        StoreWriter.append_to(path)


def test_a_label_out_of_range_is_refused_when_labels_are_read(tmp_path):
    path = tmp_path / "s.h5"
    _plain_store(path)
    _damage(path, "label out of range")
    with FeatureStore(path) as s, pytest.raises(StoreError, match="row 4 has label 7, but the store names 0"):
        s.labels


def test_a_truncated_store_is_called_damaged(tmp_path):
    path = tmp_path / "s.h5"
    _plain_store(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match=r"damaged \(truncated"):
        FeatureStore(path)
    result = _cli(["extract", "digits:test", "-o", path, "--features", "raw", "--resume"])
    assert result.exit_code == 1 and "damaged (truncated" in result.output


_HOLD_OPEN = """
import sys, time
from cvae_features.store import StoreWriter
w = StoreWriter.append_to(sys.argv[1])
print("open", flush=True)
time.sleep(60)
"""


def test_a_store_in_use_by_another_writer_is_named_so(tmp_path):
    path = tmp_path / "s.h5"
    _plain_store(path)
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_OPEN, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "open"
        with pytest.raises(StoreError, match="in use by another process"):
            FeatureStore(path)
        result = _cli(["extract", "digits:test", "-o", path, "--features", "raw", "--resume"])
        assert result.exit_code == 1 and "in use by another process" in result.output
    finally:
        proc.kill()
        proc.wait()
    with FeatureStore(path) as s:  # the killed writer left it as it was
        assert s.n_rows == 10


# -- what an extraction leaves behind ---------------------------------------------------------------------

def test_output_in_a_missing_folder_is_refused(tmp_path, model_path):
    root = _folder(tmp_path / "a", per_class=1)
    with pytest.raises(StoreError, match="folder .*/nowhere/deeper does not exist"):
        extract(root, tmp_path / "nowhere" / "deeper" / "x.h5", model=model_path, workers=0, batch_size=2, progress=False)
    assert not (tmp_path / "nowhere").exists()


def test_an_extraction_that_wrote_no_row_leaves_no_store_behind(tmp_path, model_path):
    root = tmp_path / "junk"
    root.mkdir()
    for i in range(3):
        (root / f"{i}.png").write_bytes(b"not a png")
    store = tmp_path / "s.h5"
    with pytest.raises(DataError, match="none of the 3 images"):
        extract(root, store, model=model_path, workers=0, batch_size=2, progress=False)
    assert not store.exists()  # so the rerun is not blocked by an empty store


def test_non_finite_features_are_refused_and_nothing_of_the_batch_is_written(tmp_path):
    root = _folder(tmp_path / "a", per_class=3)
    torch.manual_seed(0)
    model = ConvVAE(image_size=SIZE, channels=1, latent_dim=4, widths=(8, 8))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    store = tmp_path / "s.h5"
    with pytest.raises(ModelError, match="non-finite features .* for circle/"):
        extract(root, store, model=model, workers=0, batch_size=2, progress=False)
    assert not store.exists()


def test_links_leaving_the_folder_are_recorded_as_skips(tmp_path, model_path):
    root = _folder(tmp_path / "a", per_class=2)
    outside = _folder(tmp_path / "outside", per_class=2)
    os.symlink(outside / "circle", root / "circle" / "elsewhere")
    res = extract(root, tmp_path / "s.h5", model=model_path, workers=0, batch_size=2, progress=False)
    with FeatureStore(res.path) as s:
        assert s.n_rows == 4 and s.is_complete
        assert s.skipped.values.tolist() == [["circle/elsewhere/", "symlink leads outside the folder (not followed)"]]


# -- weights carried in a store ------------------------------------------------------------------------------

def _store_with_weights(path):
    torch.manual_seed(0)
    model = ConvVAE(image_size=8, channels=1, latent_dim=4, widths=(4,))
    with StoreWriter.create(path, feature_kind="vae", dim=4, preprocess=PRE, source="x", plan_keys=["a"],
                            **vae_fields(model)) as w:
        w.write_batch([0], np.zeros((1, 4), np.float32), [-1])
    return model


@pytest.mark.parametrize("how, message", [
    ("tampered weight", "do not match their recorded fingerprint"),
    ("no fingerprint", "have no fingerprint, so they cannot be checked"),
    ("other model's fingerprint", "but the features were made by"),
    ("non-finite weight", "non-finite"),
])
def test_weights_carried_in_a_store_are_checked_before_use(tmp_path, how, message):
    path = tmp_path / "s.h5"
    model = _store_with_weights(path)
    with FeatureStore(path) as s:
        assert load_model(s.path).fingerprint() == model.fingerprint()  # the untouched store loads
    with h5py.File(path, "r+") as f:
        grp = f["featurizer_state"]
        name = next(n for n in grp if n.endswith("weight"))
        if how == "tampered weight":
            grp[name][(0,) * grp[name].ndim] += 0.5
        elif how == "no fingerprint":
            del grp.attrs["fingerprint"]
        elif how == "other model's fingerprint":
            grp.attrs["fingerprint"] = "0123456789abcdef"
        else:
            grp[name][(0,) * grp[name].ndim] = np.nan
    with pytest.raises(ModelError, match=message):
        load_model(path)
    result = _cli(["extract", "digits:test", "-o", tmp_path / "new.h5", "--model", path])
    assert result.exit_code == 1 and message.split(",")[0] in result.output and "Traceback" not in result.output
