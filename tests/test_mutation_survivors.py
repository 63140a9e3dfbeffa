"""Tests written for mutants that survived the mutation run (benchmarks/mutation.py, issue #15).

Each test names the behaviour it pins down; tiny generated data, fast.
"""

from __future__ import annotations

import math
import re

import h5py
import numpy as np
import pytest

from cvae_features.errors import StoreError, StoreNoSpaceError
from cvae_features.store import FeatureStore, StoreWriter

PRE = {"size": 8, "channels": 1, "resize": "crop"}


def _store(path, n_plan=12, n_first=6, extras=(), skipped=()):
    """A raw store of width 2: plan k/000.. k/<n_plan>, the first ``n_first`` rows written, ``skipped`` skipped."""
    keys = [f"k/{i:03d}.png" for i in range(n_plan)]
    feats = np.arange(n_plan * 2, dtype=np.float32).reshape(n_plan, 2)
    with StoreWriter.create(path, feature_kind="raw", dim=2, preprocess=PRE, source="x", plan_keys=keys,
                            extras=extras, label_names=["a", "b", "c"]) as w:
        ext = {e: np.full((n_first, 2) if e == "logvar" else n_first, 0.5, np.float32) for e in extras}
        w.write_batch(np.arange(n_first), feats[:n_first], np.arange(n_first) % 3, ext,
                      skipped_index=np.asarray(skipped, dtype=np.int64), reasons=["bad"] * len(skipped))
    return keys, feats


def _fail_writes_to(monkeypatch, dataset_name, errno_text="errno = 5, error message = 'Input/output error'"):
    """Make writing into the HDF5 dataset ``dataset_name`` raise OSError (as a failing disk would)."""
    real = h5py.Dataset.__setitem__

    def setitem(ds, index, value):
        if ds.name == dataset_name:
            raise OSError(f"Can't write data ({errno_text})")
        return real(ds, index, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", setitem)


# -- store: readers ------------------------------------------------------------------------------

def test_iter_rows_by_one_and_by_the_default_65536(tmp_path):
    path = tmp_path / "s.h5"
    _, feats = _store(path, n_plan=5, n_first=5)
    with FeatureStore(path) as s:
        got = list(s.iter_rows(batch_size=1))
        assert [start for start, _ in got] == [0, 1, 2, 3, 4]
        np.testing.assert_array_equal(np.concatenate([rows for _, rows in got]), feats)
        with pytest.raises(Exception, match="batch_size=0"):
            list(s.iter_rows(batch_size=0))
    big = tmp_path / "big.h5"
    n = 65536 + 3
    with StoreWriter.create(big, feature_kind="raw", dim=1, preprocess=PRE, source="x",
                            plan_keys=[str(i) for i in range(n)]) as w:
        w.write_batch(np.arange(n), np.arange(n, dtype=np.float32)[:, None], np.full(n, -1))
    with FeatureStore(big) as s:
        assert [(start, len(rows)) for start, rows in s.iter_rows()] == [(0, 65536), (65536, 3)]


# -- store: a failed write cuts the datasets back and refuses further writes ------------------------

def test_a_batch_failing_at_its_last_dataset_is_cut_back_to_the_committed_counts(tmp_path, monkeypatch):
    path = tmp_path / "s.h5"
    _store(path, n_plan=12, n_first=4, extras=("recon_error",), skipped=(4,))
    w = StoreWriter.append_to(path)
    _fail_writes_to(monkeypatch, "/skipped/reasons")
    with pytest.raises(StoreError, match=r"writing .* failed: Input/output error \(4 rows are committed and kept\)"):
        w.write_batch(np.arange(5, 9), np.ones((4, 2), np.float32), np.zeros(4), {"recon_error": np.ones(4)},
                      skipped_index=np.array([9, 10]), reasons=["x", "y"])
    f = w._f
    assert [f[n].shape[0] for n in ("features", "keys", "labels", "recon_error")] == [4, 4, 4, 4]
    assert f["skipped/keys"].shape == (1,) and f["skipped/reasons"].shape == (1,)
    assert (int(f.attrs["n_rows"]), int(f.attrs["n_skipped"])) == (4, 1)
    monkeypatch.undo()
    with pytest.raises(StoreError, match="an earlier write failed"):
        w.write_batch(np.arange(5, 6), np.ones((1, 2), np.float32), np.zeros(1), {"recon_error": np.ones(1)})
    w.close()
    with h5py.File(path, "r") as f:
        assert int(f.attrs["open_for_writing"]) == 1  # not marked clean: the next writer repairs it


def test_a_full_disk_during_a_batch_is_store_no_space_error(tmp_path, monkeypatch):
    path = tmp_path / "s.h5"
    _store(path)
    w = StoreWriter.append_to(path)
    _fail_writes_to(monkeypatch, "/labels", "errno = 28, error message = 'No space left on device'")
    with pytest.raises(StoreNoSpaceError, match=r"no space left on the device of .* \(6 rows are committed"):
        w.write_batch(np.arange(6, 8), np.ones((2, 2), np.float32), np.zeros(2))
    assert w._f["features"].shape[0] == 6 and w._f["keys"].shape[0] == 6
    monkeypatch.undo()
    w.close()


# -- store: replacing rows ---------------------------------------------------------------------------

def test_replace_rows_of_several_entries_given_out_of_order_with_extras_and_identity(tmp_path):
    path = tmp_path / "s.h5"
    keys, feats = _store(path, n_plan=8, n_first=6, extras=("recon_error", "logvar"))
    with StoreWriter.append_to(path) as w:
        w.replace_rows([4, 1, 3], np.array([[40, 41], [10, 11], [30, 31]], np.float64), [2, 0, 1],
                       {"recon_error": [4.0, 1.0, 3.0], "logvar": np.full((3, 2), 7.0)},
                       identity=([400, 100, 300], [4000, 1000, 3000]))
        sizes, mtimes = w.identity()
    np.testing.assert_array_equal(sizes, [-1, 100, -1, 300, 400, -1, -1, -1])
    np.testing.assert_array_equal(mtimes, [-1, 1000, -1, 3000, 4000, -1, -1, -1])
    with FeatureStore(path) as s:
        expect = feats[:6].copy()
        expect[[1, 3, 4]] = [[10, 11], [30, 31], [40, 41]]
        np.testing.assert_array_equal(s.features, expect)
        np.testing.assert_array_equal(s.labels, [0, 0, 2, 1, 2, 2])
        np.testing.assert_array_equal(s.extra("recon_error"), [0.5, 1, 0.5, 3, 4, 0.5])
        np.testing.assert_array_equal(s.extra("logvar")[:, 0], [0.5, 7, 0.5, 7, 7, 0.5])
        assert s.keys == keys[:6] and s.n_pending == 2


def test_a_failed_replace_refuses_further_writes(tmp_path, monkeypatch):
    path = tmp_path / "s.h5"
    _store(path)
    w = StoreWriter.append_to(path)
    _fail_writes_to(monkeypatch, "/features")
    with pytest.raises(StoreError, match="6 rows are committed and kept"):
        w.replace_rows([2], np.ones((1, 2)), [0])
    monkeypatch.undo()
    with pytest.raises(StoreError, match="an earlier write failed"):
        w.write_batch(np.arange(6, 7), np.ones((1, 2), np.float32), np.zeros(1))
    w.close()


# -- store: growing the plan and file identities -------------------------------------------------------

def test_add_plan_records_the_given_identity_or_minus_one(tmp_path):
    path = tmp_path / "s.h5"
    _store(path, n_plan=3, n_first=3)
    with StoreWriter.append_to(path) as w:
        assert w.add_plan(["a", "b"], identity=([5, 6], [50, 60])).tolist() == [3, 4]
        assert w.add_plan(["c"]).tolist() == [5]
        sizes, mtimes = w.identity()
        assert w.pending().tolist() == [3, 4, 5]
        assert w.status.dtype == np.int8 and w.status.tolist() == [1, 1, 1, 0, 0, 0]
        assert w.merge_label_names([]).dtype == np.int64
    assert sizes.tolist() == [-1, -1, -1, 5, 6, -1] and mtimes.tolist() == [-1, -1, -1, 50, 60, -1]
    assert sizes.dtype == np.int64


def test_identity_of_a_store_written_before_identities_were_recorded_is_minus_one(tmp_path):
    path = tmp_path / "s.h5"
    _store(path, n_plan=4, n_first=2)
    with h5py.File(path, "r+") as f:
        for name in ("size", "mtime_ns"):
            if name in f["plan"]:  # the per-entry file identity
                del f["plan"][name]
    with StoreWriter.append_to(path) as w:
        sizes, mtimes = w.identity()
        assert sizes.tolist() == [-1] * 4 and mtimes.tolist() == [-1] * 4
        w.add_plan(["new"], identity=([7], [70]))
        assert [a.tolist() for a in w.identity()] == [[-1, -1, -1, -1, 7], [-1, -1, -1, -1, 70]]
    with h5py.File(path, "r") as f:  # the datasets added for the old store are tagged like new ones
        for name in ("size", "mtime_ns"):
            assert f["plan"][name].attrs["encoding-type"] == "array" and f["plan"][name].dtype == np.int64


def test_read_rows_clips_to_the_committed_rows(tmp_path):
    path = tmp_path / "s.h5"
    _, feats = _store(path)
    with FeatureStore(path) as s:
        assert s.read_rows(0, 0).shape == (0, 2) and s.read_rows(-5, -1).shape == (0, 2)
        np.testing.assert_array_equal(s.read_rows(4, 99), feats[4:6])


def test_the_space_check_asks_for_the_batch_one_chunk_per_dataset_and_one_mib(tmp_path, monkeypatch):
    import shutil

    path = tmp_path / "s.h5"
    with StoreWriter.create(path, feature_kind="raw", dim=2, preprocess=PRE, source="x",
                            plan_keys=[str(i) for i in range(8)], chunk_rows=16) as w:
        # rows: features 2 x 4 B + key 64 B + label 8 B; chunks: 16 x 2 x 4 B + 16 x 16 B (strings) + 16 x 8 B
        need = 3 * (8 + 64 + 8) + 1 * 256 + (128 + 256 + 128) + (1 << 20)
        real = shutil.disk_usage
        monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=need - 1))
        with pytest.raises(StoreNoSpaceError):
            w.write_batch(np.arange(3), np.ones((3, 2), np.float32), np.full(3, -1), skipped_index=[3],
                          reasons=["bad"])
        monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=need))
        w.write_batch(np.arange(3), np.ones((3, 2), np.float32), np.full(3, -1), skipped_index=[3], reasons=["bad"])
        assert w.n_rows == 3 and w.n_skipped == 1


# -- store: repairs on reopening ------------------------------------------------------------------------

def test_replacements_cut_short_are_finished_or_dropped_in_every_group(tmp_path):
    path = tmp_path / "s.h5"
    keys, _ = _store(path, n_plan=6, n_first=3, skipped=(3,))
    with h5py.File(path, "r+") as f:
        for group, name in ((f["skipped"], "reasons"), (f["plan"], "keys"), (f, "label_names")):
            values = group[name][()]
            group.create_dataset(name + "~new", data=values, dtype=h5py.string_dtype())
            for k, v in group[name].attrs.items():
                group[name + "~new"].attrs[k] = v
            if name != "keys":  # the old one was already unlinked: the new one is complete
                del group[name]
    with StoreWriter.append_to(path) as w:
        assert w.plan_keys == keys and w.label_names == ["a", "b", "c"] and w.pending().tolist() == [4, 5]
    with h5py.File(path, "r") as f:
        assert not [n for g in (f, f["skipped"], f["plan"]) for n in g if n.endswith("~new")]
        assert f["skipped/reasons"].asstr()[:].tolist() == ["bad"]


def test_reopening_recomputes_a_lost_status_and_cuts_a_plan_extension_cut_short(tmp_path):
    path = tmp_path / "s.h5"
    _store(path, n_plan=8, n_first=4, skipped=(5,))
    with h5py.File(path, "r+") as f:
        plan = f["plan"]
        plan["status"][:] = 0  # the status write of the last batch was lost
        for name in ("status", "size", "mtime_ns", "keys"):  # add_plan resized, then stopped before n_plan moved
            plan[name].resize(11, axis=0)
    with StoreWriter.append_to(path) as w:
        assert w.status.dtype == np.int8 and w.status.tolist() == [1, 1, 1, 1, 0, 2, 0, 0]
        assert w.pending().tolist() == [4, 6, 7]
    with h5py.File(path, "r") as f:
        assert [f["plan"][n].shape[0] for n in ("status", "size", "mtime_ns", "keys")] == [8, 8, 8, 8]
        assert f["plan/status"][:].tolist() == [1, 1, 1, 1, 0, 2, 0, 0] and int(f["plan"].attrs["n_plan"]) == 8


def test_reopening_a_store_without_n_plan_records_it(tmp_path):
    path = tmp_path / "s.h5"
    _store(path, n_plan=5, n_first=2)
    with h5py.File(path, "r+") as f:
        del f["plan"].attrs["n_plan"]
    StoreWriter.append_to(path).close()
    with h5py.File(path, "r") as f:
        assert int(f["plan"].attrs["n_plan"]) == 5


@pytest.mark.parametrize("mark, rebuilt", [(0, False), (1, True), (None, True)])
def test_a_store_not_closed_cleanly_gets_fresh_string_datasets(tmp_path, mark, rebuilt):
    """open_for_writing 1, or missing (an older store: unknown), means its strings may be damaged."""
    path = tmp_path / "s.h5"
    _store(path, skipped=(7,))
    with h5py.File(path, "r+") as f:
        if mark is None:
            del f.attrs["open_for_writing"]
        else:
            f.attrs["open_for_writing"] = mark
        before = {n: h5py.h5o.get_info(f[n].id).addr for n in ("keys", "skipped/keys", "plan/keys")}
    with StoreWriter.append_to(path) as w:
        assert int(w._f.attrs["open_for_writing"]) == 1
        after = {n: h5py.h5o.get_info(w._f[n].id).addr for n in before}
    assert [before[n] != after[n] for n in before] == [rebuilt] * 3


def test_reopening_a_damaged_store_names_the_file(tmp_path):
    path = tmp_path / "s.h5"
    _store(path)
    with h5py.File(path, "r+") as f:
        f["plan"].attrs["encoding-type"] = "something-else"
    with pytest.raises(StoreError, match=str(path)):
        StoreWriter.append_to(path)
    with h5py.File(path, "r+") as f:
        del f.attrs["n_rows"]
    with pytest.raises(StoreError, match=str(path)):
        StoreWriter.append_to(path)


@pytest.mark.parametrize("where", ["commit", "status"])
def test_a_batch_whose_commit_or_status_write_fails_refuses_further_writes(tmp_path, monkeypatch, where):
    path = tmp_path / "s.h5"
    _store(path)
    w = StoreWriter.append_to(path)
    if where == "commit":
        real = h5py.AttributeManager.__setitem__

        def setitem(attrs, name, value):
            if name == "n_rows":
                raise OSError("Can't write attribute (errno = 5, error message = 'Input/output error')")
            return real(attrs, name, value)

        monkeypatch.setattr(h5py.AttributeManager, "__setitem__", setitem)
    else:
        _fail_writes_to(monkeypatch, "/plan/status")
    with pytest.raises(StoreError, match="Input/output error"):
        w.write_batch(np.arange(6, 8), np.ones((2, 2), np.float32), np.zeros(2))
    monkeypatch.undo()
    assert w.n_rows == (6 if where == "commit" else 8)
    with pytest.raises(StoreError, match="an earlier write failed"):
        w.write_batch(np.arange(8, 9), np.ones((1, 2), np.float32), np.zeros(1))
    w.close()
    with h5py.File(path, "r") as f:
        assert int(f.attrs["open_for_writing"]) == 1


# -- store: validation on opening ------------------------------------------------------------------

@pytest.mark.parametrize("attr, value, message", [
    ("n_skipped", -3, "n_skipped is -3, expected an integer >= 0"),
    ("feature_kind", "two words", "feature_kind is 'two words'"),
    ("preprocess", '{"size": 0, "channels": 1}', "is not"),
    ("preprocess", '{"size": 8.5, "channels": 1}', "is not"),
    ("preprocess", '{"size": 8, "channels": 2}', "is not"),
    ("model_config", "[1, 2]", "model_config attribute is not a JSON object"),
    ("dim", 3, "/features is 2 wide but the dim attribute says 3"),
])
def test_damaged_root_attributes_are_refused_naming_the_file(tmp_path, attr, value, message):
    path = tmp_path / "s.h5"
    _store(path)
    with h5py.File(path, "r+") as f:
        f.attrs[attr] = value
    with pytest.raises(StoreError, match=message) as err:
        FeatureStore(path)
    assert str(err.value).startswith(str(path))


@pytest.mark.parametrize("name, message", [
    ("keys", "/keys holds 3 entries but the store counts 6 (n_rows)"),
    ("recon_error", "/recon_error holds 3 entries but the store counts 6 (n_rows)"),
    ("skipped/keys", "/skipped/keys holds 1 entries but the store counts 2 (n_skipped)"),
    ("skipped/reasons", "/skipped/reasons holds 1 entries but the store counts 2 (n_skipped)"),
    ("logvar", "/logvar is 3 wide, the features 2"),
])
def test_datasets_shorter_than_their_count_or_of_another_width_are_refused(tmp_path, name, message):
    path = tmp_path / "s.h5"
    _store(path, extras=("recon_error", "logvar"), skipped=(6, 7))
    with h5py.File(path, "r+") as f:
        if name == "logvar":
            attrs = dict(f["logvar"].attrs)
            del f["logvar"]
            f.create_dataset("logvar", data=np.zeros((6, 3), np.float32)).attrs.update(attrs)
        else:
            f[name].resize(3 if name in ("keys", "recon_error") else 1, axis=0)
    with pytest.raises(StoreError, match=re.escape(message)):
        FeatureStore(path)


def test_the_smallest_valid_preprocess_size_is_one(tmp_path):
    path = tmp_path / "s.h5"
    with StoreWriter.create(path, feature_kind="raw", dim=1, preprocess={"size": 1, "channels": 3}, source="x",
                            plan_keys=["a"]):
        pass
    with FeatureStore(path) as s:
        assert s.preprocess_dict["size"] == 1 and s.n_pending == 1


def test_a_mislabelled_features_dataset_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "s.h5"
    _store(path)
    with h5py.File(path, "r+") as f:
        f["features"].attrs["encoding-type"] = "string-array"
    with pytest.raises(StoreError, match="encoding-type") as err:
        FeatureStore(path)
    assert str(err.value).startswith(str(path))


def test_a_feature_kind_in_capitals_is_valid(tmp_path):
    path = tmp_path / "s.h5"
    with StoreWriter.create(path, feature_kind="My-Kind_2", dim=1, preprocess=PRE, source="x", plan_keys=["a"]) as w:
        w.write_batch([0], np.ones((1, 1), np.float32), [-1])
    with FeatureStore(path) as s:
        assert s.feature_kind == "My-Kind_2" and s.n_rows == 1


def test_closing_stamps_the_update_time(tmp_path):
    path = tmp_path / "s.h5"
    _store(path)
    with h5py.File(path, "r+") as f:
        f.attrs["updated"] = "long ago"
    StoreWriter.append_to(path).close()
    with h5py.File(path, "r") as f:
        assert f.attrs["updated"] != "long ago" and int(f.attrs["open_for_writing"]) == 0


def test_closing_a_store_the_disk_refuses_to_finish_does_not_raise_but_a_plain_close_error_does(tmp_path,
                                                                                                  monkeypatch):
    path = tmp_path / "s.h5"
    _store(path)
    real_close, real_set = h5py.File.close, h5py.AttributeManager.__setitem__

    def failing_close(f):
        raise OSError("close failed")

    def failing_set(attrs, name, value):
        if name == "updated":
            raise OSError("Can't write attribute (errno = 28, error message = 'No space left on device')")
        return real_set(attrs, name, value)

    w = StoreWriter.append_to(path)
    monkeypatch.setattr(h5py.File, "close", failing_close)
    monkeypatch.setattr(h5py.AttributeManager, "__setitem__", failing_set)
    w.close()  # the stamp failed: the writer is failed, and a failing close is then expected, not raised
    monkeypatch.undo()
    real_close(w._f)
    w = StoreWriter.append_to(path)
    monkeypatch.setattr(h5py.File, "close", failing_close)
    with pytest.raises(OSError, match="close failed"):
        w.close()
    monkeypatch.undo()
    real_close(w._f)


def test_more_rows_and_skips_than_planned_entries_are_refused(tmp_path):
    path = tmp_path / "s.h5"
    _store(path, n_plan=10, n_first=6, skipped=(6, 7))
    with h5py.File(path, "r+") as f:
        f["plan"].attrs["n_plan"] = 7
    with pytest.raises(StoreError, match="6 rows and 2 skipped files but only 7 planned files"):
        FeatureStore(path)


def test_a_first_plan_extension_cut_short_leaves_an_empty_plan(tmp_path):
    path = tmp_path / "s.h5"
    StoreWriter.create(path, feature_kind="raw", dim=1, preprocess=PRE, source="x", plan_keys=[]).close()
    with h5py.File(path, "r+") as f:  # add_plan resized and wrote, then stopped before n_plan moved from 0
        for name in ("status", "size", "mtime_ns", "keys"):
            f["plan"][name].resize(3, axis=0)
        f["plan/keys"][:] = ["a", "b", "c"]
    with FeatureStore(path) as s:
        assert s.n_pending == 0
    with StoreWriter.append_to(path) as w:
        assert w.plan_keys == [] and w.pending().tolist() == []


# -- extraction ----------------------------------------------------------------------------------------

def test_resume_refuses_another_source_but_not_one_that_cannot_name_its_origin(tmp_path):
    from types import SimpleNamespace

    from cvae_features.extraction import _check_same_source

    old = {"source_spec": "/data/a"}
    _check_same_source(tmp_path / "s.h5", old, SimpleNamespace(spec=""))
    _check_same_source(tmp_path / "s.h5", old, SimpleNamespace())
    _check_same_source(tmp_path / "s.h5", old, SimpleNamespace(spec="/data/a"))
    with pytest.raises(StoreError, match="was extracted from /data/a, not /data/b"):
        _check_same_source(tmp_path / "s.h5", old, SimpleNamespace(spec="/data/b"))


def test_a_store_records_its_source_and_carries_weights_as_asked(tmp_path):
    import torch

    from cvae_features.data import ArraySource
    from cvae_features.extraction import extract
    from cvae_features.model import ConvVAE

    torch.manual_seed(0)
    model = ConvVAE(image_size=8, channels=1, latent_dim=2, widths=(4,))
    src = ArraySource(np.random.default_rng(0).integers(0, 255, (3, 8, 8), dtype=np.uint8), name="",
                      keys=["a", "b", "c"], description="three arrays")
    for carry in (True, False):
        path = tmp_path / f"{carry}.h5"
        extract(src, path, model=model, carry_weights=carry, workers=0, progress=False)
        with FeatureStore(path) as s:
            assert s.has_model is carry and s.source == "three arrays" and s.source_spec == ""
        with StoreWriter.append_to(path) as w:  # images in memory have no file identity
            assert [a.tolist() for a in w.identity()] == [[-1, -1, -1], [-1, -1, -1]]


def test_update_shows_the_rewrite_progress_only_when_asked(tmp_path, capsys, monkeypatch):
    import os
    import threading

    import tqdm
    from PIL import Image

    # no tqdm monitor thread and no multiprocessing lock: a process forked from this one (mutmut's workers)
    # deadlocks on them
    monkeypatch.setattr(tqdm.std.tqdm, "monitor_interval", 0)
    monkeypatch.setattr(tqdm.std.tqdm, "_lock", threading.RLock(), raising=False)

    from cvae_features.extraction import extract

    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8), "L").save(root / f"{i}.png")
    store = tmp_path / "s.h5"
    capsys.readouterr()
    extract(root, store, features="raw", workers=0, progress=True)
    err = capsys.readouterr().err
    assert "extracting raw: 100%" in err and "3/3" in err and "img/s" in err
    for t, progress in ((2_000_000_000, False), (2_100_000_000, True)):
        Image.fromarray(np.full((8, 8), t % 251, np.uint8), "L").save(root / "1.png")
        os.utime(root / "1.png", ns=(t * 10**9, t * 10**9))
        capsys.readouterr()
        res = extract(root, store, features="raw", workers=0, progress=progress, update=True)
        err = capsys.readouterr().err
        assert res.n_changed == 1
        if progress:
            bar = [part for part in err.replace("\r", "\n").splitlines() if part.startswith("re-extracting")][-1]
            assert bar.startswith("re-extracting changed files: 100%") and "1/1" in bar and "img/s" in bar
        else:
            assert "re-extracting" not in err and "extracting raw" not in err


def _png(path, value):
    from PIL import Image

    Image.fromarray(np.full((8, 8), value, np.uint8), "L").save(path)


def _raw(root, store, batch_size=2, progress=False, **kw):
    from cvae_features.extraction import extract

    return extract(root, store, features="raw", workers=0, progress=progress, batch_size=batch_size, **kw)


class _Stop(Exception):
    pass


def _raw_cut_after_first_batch(source, store):
    """A raw extraction stopped by its callback after its first committed batch (2 rows)."""
    def stop(progress):
        raise _Stop

    with pytest.raises(_Stop):
        _raw(source, store, callback=stop)


def _identity_of(store, key):
    with StoreWriter.append_to(store) as w:
        sizes, mtimes = w.identity()
        i = w.plan_keys.index(key)
    return int(sizes[i]), int(mtimes[i])


def test_update_tells_changed_files_by_size_or_mtime_and_tracks_files_it_adds(tmp_path):
    import os

    root, store = tmp_path / "imgs", tmp_path / "s.h5"
    root.mkdir()
    for name, v in (("b", 10), ("c", 20), ("d", 30)):
        _png(root / f"{name}.png", v)
    _raw(root, store)
    assert _raw(root, store, resume=True).n_removed == 0
    st = os.stat(root / "c.png")
    os.utime(root / "c.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same size and content, newer
    _png(root / "a.png", 5)  # a new file that sorts first: source row 0
    res = _raw(root, store, update=True)
    assert (res.n_changed, res.n_new) == (1, 1)
    st = os.stat(root / "c.png")
    assert _identity_of(store, "c.png") == (st.st_size, st.st_mtime_ns)  # the rewrite records the file's identity
    _png(root / "a.png", 6)  # the file the update added changes: its identity was recorded
    st = os.stat(root / "a.png")
    os.utime(root / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    res = _raw(root, store, update=True)
    assert (res.n_changed, res.n_new) == (1, 0)
    with FeatureStore(store) as s:
        assert float(s.features[s.keys.index("a.png")].mean()) == pytest.approx(6 / 255, abs=1e-6)
    (root / "d.png").write_bytes(b"")  # a file truncated to nothing: changed, and now undecodable
    res = _raw(root, store, update=True)
    assert res.n_changed == 0 and any(k == "d.png" and "changed, and now" in r for k, r in res.skipped)
    assert res.n_new_skipped == 1
    for name, v in (("a", 1), ("b", 2), ("c", 3)):  # three changed files, in two batches of the rewrite
        _png(root / f"{name}.png", v)
        st = os.stat(root / f"{name}.png")
        os.utime(root / f"{name}.png", ns=(st.st_atime_ns, st.st_mtime_ns + 3 * 10**9))
    (root / "b.png").write_bytes(b"")
    (root / "d.png").write_bytes(b"x")
    res = _raw(root, store, update=True, batch_size=1)
    assert (res.n_changed, res.n_new_skipped) == (2, 2)


def test_update_of_a_store_without_file_identities_rewrites_nothing(tmp_path):
    root, store = tmp_path / "imgs", tmp_path / "s.h5"
    root.mkdir()
    for name, v in (("b", 10), ("c", 20)):
        _png(root / f"{name}.png", v)
    _raw(root, store)
    with h5py.File(store, "r+") as f:  # a store written before identities were recorded
        for name in ("size", "mtime_ns"):
            del f["plan"][name]
    _png(root / "c.png", 99)
    res = _raw(root, store, update=True)
    assert (res.n_changed, res.n_new) == (0, 0)
    with h5py.File(store, "r+") as f:  # identities known again, one recorded as an empty file
        for name in ("size", "mtime_ns"):
            f["plan"].create_dataset(name, data=np.full(2, -1, np.int64), maxshape=(None,)).attrs.update(
                {"encoding-type": "array", "encoding-version": "1"})
        f["plan/size"][0] = 0
    assert _raw(root, store, update=True).n_changed == 1


def test_non_finite_features_of_a_changed_file_name_it(tmp_path, monkeypatch):
    from cvae_features import featurizers
    from cvae_features.errors import ModelError

    root, store = tmp_path / "imgs", tmp_path / "s.h5"
    root.mkdir()
    for name, v in (("b", 10), ("c", 20)):
        _png(root / f"{name}.png", v)
    _raw(root, store)
    _png(root / "c.png", 99)
    monkeypatch.setattr(featurizers._RawBatch, "__call__", lambda self, images: (
        np.full((len(images), 64), np.nan, np.float32), {}))
    with pytest.raises(ModelError, match="non-finite features .* for c.png and 0 more"):
        _raw(root, store, update=True)



def test_resume_with_part_of_the_source_names_a_pending_file_it_lacks(tmp_path):
    from cvae_features.data import ArraySource, open_source

    root, store = tmp_path / "imgs", tmp_path / "s.h5"
    root.mkdir()
    for i, name in enumerate("abcdef"):
        _png(root / f"{name}.png", 10 * i)
    _raw_cut_after_first_batch(root, store)  # a, b written; c..f pending
    src = open_source(root)
    (root / "c.png").unlink()  # gone from the disk; d is still there
    with pytest.raises(StoreError, match=r"2 images still pending .* \(e.g. d.png\)"):
        _raw(src.subset([0, 1, 4, 5]), store, resume=True)
    arrays = tmp_path / "arr.h5"
    images = np.zeros((3, 8, 8), np.uint8)
    _raw_cut_after_first_batch(ArraySource(images, keys=["x", "y", "z"]), arrays)
    with pytest.raises(StoreError, match=r"1 images still pending .* \(e.g. z\)"):
        _raw(ArraySource(images[:2], keys=["x", "y"]), arrays, resume=True)


def test_update_rewrites_the_scores_of_a_changed_file(tmp_path):
    import os

    import torch

    from cvae_features.extraction import extract
    from cvae_features.model import ConvVAE

    torch.manual_seed(0)
    model = ConvVAE(image_size=8, channels=1, latent_dim=2, widths=(4,))
    root, store = tmp_path / "imgs", tmp_path / "s.h5"
    root.mkdir()
    for name, v in (("b", 10), ("c", 200)):
        _png(root / f"{name}.png", v)
    kw = dict(model=model, scores=True, workers=0, progress=False)
    extract(root, store, **kw)
    _png(root / "b.png", 200)
    st = os.stat(root / "b.png")
    os.utime(root / "b.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert extract(root, store, update=True, **kw).n_changed == 1
    with FeatureStore(store) as s:
        np.testing.assert_allclose(s.extra("recon_error")[0], s.extra("recon_error")[1], rtol=1e-5)


def test_more_files_removed_before_extraction_than_are_listed_are_all_counted(tmp_path):
    from cvae_features.data import open_source

    root, store = tmp_path / "imgs", tmp_path / "s.h5"
    root.mkdir()
    for i in range(105):
        _png(root / f"{i:03d}.png", i)
    _raw_cut_after_first_batch(root, store)  # 000, 001 written; 103 pending
    src = open_source(root).subset([0, 1])
    for i in range(2, 105):
        (root / f"{i:03d}.png").unlink()
    res = _raw(src, store, resume=True)
    assert (res.n_new, res.n_new_skipped, len(res.skipped)) == (0, 103, 100)
    with FeatureStore(store) as s:
        assert s.is_complete and s.n_skipped == 103



def test_max_bad_allows_that_many_undecodable_files_and_names_the_first_beyond(tmp_path):
    from cvae_features.errors import DataError

    root = tmp_path / "imgs"
    root.mkdir()
    for name in "abcd":
        _png(root / f"{name}.png", 9)
    for name in ("x", "y"):
        (root / f"{name}.png").write_bytes(b"junk")
    res = _raw(root, tmp_path / "ok.h5", max_bad=2)
    assert (res.n_rows, res.n_skipped) == (4, 2)
    with pytest.raises(DataError, match=r"2 images could not be decoded, more than max_bad=1 \(first: x.png"):
        _raw(root, tmp_path / "stop.h5", max_bad=1)
    with pytest.raises(DataError, match=r"\(first: x.png"):
        _raw(root, tmp_path / "stop0.h5", max_bad=0, batch_size=5)


def test_the_progress_callback_gets_rows_skips_and_total(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    for name in "abc":
        _png(root / f"{name}.png", 9)
    (root / "d.png").write_bytes(b"junk")
    seen = []
    _raw(root, tmp_path / "s.h5", callback=lambda p: seen.append((p.batch, p.n_done, p.n_skipped, p.n_total)))
    assert seen == [(0, 2, 0, 4), (1, 3, 1, 4)]


def test_file_identity_goes_on_past_a_file_that_cannot_be_stated(tmp_path):
    import os

    from cvae_features.data import open_source
    from cvae_features.extraction import file_identity

    root = tmp_path / "imgs"
    root.mkdir()
    for name in "abc":
        _png(root / f"{name}.png", 9)
    src = open_source(root)
    (root / "a.png").unlink()
    sizes, mtimes = file_identity(src)
    assert sizes[0] == -1 and mtimes[0] == -1
    assert sizes[1:].tolist() == [os.stat(root / f"{n}.png").st_size for n in "bc"]
    assert mtimes[1:].tolist() == [os.stat(root / f"{n}.png").st_mtime_ns for n in "bc"]


def test_a_ready_featurizer_with_features_of_its_kind_and_a_reference_gets_the_source(tmp_path, monkeypatch):
    from cvae_features.data import Preprocess, open_source
    from cvae_features.errors import ConfigError
    from cvae_features.extraction import extract
    from cvae_features.featurizers import RawFeaturizer

    root = tmp_path / "imgs"
    root.mkdir()
    for name in "ab":
        _png(root / f"{name}.png", 9)
    feat = RawFeaturizer(Preprocess(8, 1))
    assert extract(root, tmp_path / "r.h5", model=feat, features="raw", workers=0, progress=False).n_rows == 2
    with pytest.raises(ConfigError, match="features='pca' but the featurizer given makes raw features"):
        extract(root, tmp_path / "p.h5", model=feat, features="pca", workers=0, progress=False)
    with pytest.raises(StoreError, match=re.escape(str(tmp_path / "r.h5"))):
        extract(root, tmp_path / "r.h5", features="pca", resume=True, workers=0, progress=False)
    seen = []
    real = RawFeaturizer.from_reference.__func__
    monkeypatch.setattr(RawFeaturizer, "from_reference",
                        classmethod(lambda cls, ref, source, options: seen.append(source) or real(cls, ref, source,
                                                                                                   options)))
    src = open_source(root)
    extract(src, tmp_path / "t.h5", model=tmp_path / "r.h5", workers=0, progress=False)
    assert seen == [src]


# -- probes ---------------------------------------------------------------------------------------------

def test_cluster_accuracy_of_one_row_and_of_none():
    from cvae_features.errors import ConfigError
    from cvae_features.probes.cluster import cluster_accuracy

    assert cluster_accuracy([3], [7]) == 1.0
    with pytest.raises(ConfigError, match="at least one row"):
        cluster_accuracy([], [])


def test_knn_vote_weights_and_ties():
    from cvae_features.probes.knn import vote

    lab = np.array([[0, 1, 1], [1, 0, 9], [0, 1, 0]])
    dist = np.array([[0.1, 1.0, 1.0], [0.5, 0.5, 9.0], [0.2, 0.3, 0.4]])
    assert vote(lab, dist, 3, "uniform", 10).tolist() == [1, 1, 0]  # exact ties: the nearer neighbour's class
    assert vote(lab, dist, 3, "distance", 10).tolist() == [0, 1, 0]
    assert vote(lab, dist, 2, "uniform", 10).tolist() == [0, 1, 0]
    assert vote(np.array([[1, 0, 0]]), np.array([[0.0, 0.0, 1.0]]), 3, "distance", 2).tolist() == [1]
    assert vote(np.array([[1, 0]]), np.array([[0.0, 1.0]]), 2, "distance", 2).tolist() == [1]  # a zero distance
    assert vote(np.array([[0, 0, 1, 1, 1]]), np.ones((1, 5)), 5, "uniform", 2).tolist() == [1]


def test_nearest_neighbours_returns_k_of_them():
    from cvae_features.probes.knn import nearest_neighbours

    X = np.arange(20, dtype=float).reshape(10, 2)
    dist, idx = nearest_neighbours(X, X[:3], 3)
    assert dist.shape == idx.shape == (3, 3) and idx[:, 0].tolist() == [0, 1, 2]
    assert nearest_neighbours(X[:2], X[:1], 3)[1].shape == (1, 2)


def test_min_normal_rows_mirrors_the_held_out_split():
    from cvae_features.probes.anomaly import min_normal_rows

    assert min_normal_rows(1, 0.5) == 2 and min_normal_rows(10, 0.5) == 20 and min_normal_rows(1, 0.9) == 2


def test_roc_points_keep_the_ends_round_to_five_digits_and_thin_to_200():
    from sklearn.metrics import roc_curve

    from cvae_features.probes.anomaly import _roc_points

    small = _roc_points([0, 0, 0, 1, 1], [0.1, 0.5, 0.3, 0.4, 0.9])
    assert small == {"fpr": [0.0, 0.0, 0.33333, 0.33333, 1.0], "tpr": [0.0, 0.5, 0.5, 1.0, 1.0]}
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 2000), rng.random(2000)
    fpr, tpr, _ = roc_curve(y, s)
    assert fpr.size > 400
    big = _roc_points(y, s)
    assert len(big["fpr"]) == len(big["tpr"]) == 200
    assert (big["fpr"][0], big["tpr"][0], big["fpr"][-1], big["tpr"][-1]) == (0.0, 0.0, 1.0, 1.0)
    keep = np.unique(np.linspace(0, fpr.size - 1, 200).round().astype(int))
    assert big["tpr"] == np.round(tpr[keep], 5).tolist()


def test_anomaly_scorer_defaults_and_option_names_in_errors():
    from cvae_features.errors import ConfigError
    from cvae_features.probes.anomaly import AnomalyScorer
    from cvae_features.probes.fewshot import draw_labelled

    a = AnomalyScorer()
    assert (a.k, a.gmm_components, a.preprocessing, a.seed) == (5, 4, "none", 0)
    for kw, name in ((dict(scores=("bogus",)), "scores"), (dict(k=0), "k"), (dict(gmm_components=0), "gmm_components"),
                     (dict(preprocessing="bogus"), "preprocessing")):
        with pytest.raises(ConfigError, match=f"^{name}: "):
            AnomalyScorer(**kw)
    with pytest.raises(ConfigError, match="^labels_per_class: "):
        draw_labelled([0, 1, 0, 1], 0, 0)


def test_selection_splits_record_how_they_were_made_and_are_seeded():
    from cvae_features.probes._common import DataTooSmall, selection_splits, stratified_subsample

    y = np.repeat([0, 2, 3], [40, 40, 20])  # class 1 absent
    splits, info = selection_splits(y, cv=None, val_fraction=0.25, max_rows=50, seed=3)
    assert info == {"selection": "validation split", "selection_rows": 50, "selection_seed": 3, "val_fraction": 0.25}
    again, _ = selection_splits(y, cv=None, val_fraction=0.25, max_rows=50, seed=3)
    other, _ = selection_splits(y, cv=None, val_fraction=0.25, max_rows=50, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(splits[0], again[0]))
    assert not np.array_equal(splits[0][1], other[0][1])
    folds, info = selection_splits(y, cv=3, val_fraction=0.25, max_rows=None, seed=3)
    assert info == {"selection": "3-fold stratified CV", "selection_rows": 100, "selection_seed": 3}
    assert len(folds) == 3
    folds_again, _ = selection_splits(y, cv=3, val_fraction=0.25, max_rows=None, seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, folds_again))
    assert len(selection_splits(np.repeat([0, 1], 3), cv=3, val_fraction=0.25, max_rows=None, seed=0)[0]) == 3
    with pytest.raises(DataTooSmall, match="the smallest class has 1"):
        selection_splits(np.array([0, 0, 0, 1]), cv=2, val_fraction=0.25, max_rows=None, seed=0)
    assert stratified_subsample(y, 100, 0).tolist() == list(range(100))
    assert np.array_equal(stratified_subsample(y, 30, 5), stratified_subsample(y, 30, 5))


def test_balanced_accuracy_hides_only_the_absent_class_warning():
    import warnings

    from cvae_features.probes._common import _balanced_accuracy

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _balanced_accuracy(np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])) == 0.75


def test_anomaly_scorer_names_the_normal_rows_in_errors():
    from cvae_features.errors import ConfigError
    from cvae_features.probes.anomaly import AnomalyScorer

    X = np.ones((6, 2))
    X[0, 0] = np.nan
    with pytest.raises(ConfigError, match="^X_normal"):
        AnomalyScorer(scores=("knn",), k=2).fit(X)


def test_anomaly_scores_equal_scikit_learn_computed_directly():
    from sklearn.covariance import LedoitWolf
    from sklearn.mixture import GaussianMixture
    from sklearn.neighbors import NearestNeighbors

    from cvae_features.probes.anomaly import AnomalyScorer

    rng = np.random.default_rng(0)
    Xn, Xt = rng.normal(size=(60, 3)), rng.normal(size=(10, 3)) * 2
    got = AnomalyScorer(k=4, gmm_components=3, seed=7).fit(Xn).score(Xt)
    np.testing.assert_allclose(got["knn"], NearestNeighbors(n_neighbors=4).fit(Xn).kneighbors(Xt)[0].mean(axis=1))
    np.testing.assert_allclose(got["mahalanobis"], LedoitWolf().fit(Xn).mahalanobis(Xt))
    gmm = GaussianMixture(3, covariance_type="full", reg_covar=1e-4, random_state=7).fit(Xn)
    np.testing.assert_allclose(got["gmm"], -gmm.score_samples(Xt), rtol=1e-10)


def test_anomaly_scorer_checks_only_the_scores_it_computes():
    from cvae_features.errors import ConfigError
    from cvae_features.probes.anomaly import AnomalyScorer

    X = np.random.default_rng(0).normal(size=(3, 2))
    AnomalyScorer(scores=("mahalanobis",), k=5, gmm_components=5).fit(X)
    with pytest.raises(ConfigError, match="^k: expected at most 3"):
        AnomalyScorer(scores=("knn",), k=5).fit(X)
    with pytest.raises(ConfigError, match="^gmm_components: expected at most 3"):
        AnomalyScorer(scores=("gmm",), gmm_components=5).fit(X)
    fitted = AnomalyScorer(scores=("knn",), k=2).fit(X)
    with pytest.raises(ConfigError, match="^X: "):
        fitted.score(np.array([[np.nan, 0.0]]))


def test_supervised_inputs_keep_known_labels_and_name_bad_inputs():
    from cvae_features.errors import ConfigError
    from cvae_features.probes._common import supervised_inputs

    X, y = np.arange(8.0).reshape(4, 2), np.array([0, 1, -1, 1])
    Xtr, ytr, Xte, yte = supervised_inputs(X, y, X, np.array([-1, 0, 1, 1]))
    assert ytr.tolist() == [0, 1, 1] and yte.tolist() == [0, 1, 1] and Xte.tolist() == X[1:].tolist()
    bad = X.copy()
    bad[0, 0] = np.inf
    for args, name in (((bad, y, X, y), "X_train"), ((X, y, bad, y), "X_test"), ((X, y, X, y[:3]), "y_test")):
        with pytest.raises(ConfigError, match=f"^{name}"):
            supervised_inputs(*args)


def test_logistic_fits_warm_start_with_the_given_c_and_iterations():
    from cvae_features.probes.linear import _fit_logistic

    X, y = np.random.default_rng(0).normal(size=(20, 2)), np.repeat([0, 1], 10)
    params = _fit_logistic(X, y, 0.5, 321).get_params()
    assert (params["C"], params["max_iter"], params["warm_start"]) == (0.5, 321, True)


def test_stratified_split_keeps_a_row_of_every_class_and_one_test_row_is_enough():
    from cvae_features.probes._common import stratified_split, supervised_inputs

    kept, held = stratified_split(np.array([0, 0, 0, 1, 1]), 1.0, 0)
    assert (len(kept), len(held)) == (2, 3)
    X, y = np.arange(8.0).reshape(4, 2), np.array([0, 1, 0, 1])
    assert supervised_inputs(X, y, X[:1], [1])[3].tolist() == [1]


# -- the model's loss and its prior ------------------------------------------------------------------

def _vae(likelihood="bernoulli", beta=1.0):
    import torch

    from cvae_features.model import ConvVAE

    torch.manual_seed(0)
    return ConvVAE(image_size=8, channels=1, latent_dim=3, widths=(4,), likelihood=likelihood, beta=beta)


def test_the_prior_terms_equal_torch_distributions():
    import torch
    from torch.distributions import Normal, kl_divergence

    from cvae_features.priors import StandardNormal

    torch.manual_seed(0)
    mu, logvar, z = torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 3)
    p = StandardNormal(3)
    per_dim = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0))
    torch.testing.assert_close(p.kl_per_dim(mu, logvar), per_dim)
    torch.testing.assert_close(p.kl(mu, logvar), per_dim.sum(1))
    torch.testing.assert_close(p.log_prob(z), Normal(0.0, 1.0).log_prob(z).sum(1))
    assert p.kl(mu.half(), logvar.half()).dtype == torch.float32
    assert p.kl_per_dim(mu.half(), logvar.half()).dtype == torch.float32
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(p.sample(4, generator=g1), torch.randn(4, 3, generator=g2))
    assert p.sample(4).shape == (4, 3)
    assert p.sample(2, device="meta").device.type == "meta"  # drawn on the device asked for


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_the_reconstruction_nll_is_the_summed_pixel_likelihood(likelihood):
    import torch
    from torch.distributions import Bernoulli, Normal

    model = _vae(likelihood)
    torch.manual_seed(1)
    out, x = torch.randn(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    weight = (torch.rand(1, 1, 8, 8) > 0.5).float()
    if likelihood == "bernoulli":
        per_pixel = -Bernoulli(logits=out, validate_args=False).log_prob(x)
    else:
        with torch.no_grad():
            model.log_sigma2.fill_(-20.0)  # clamped to LOG_SIGMA2_MIN = -9
        per_pixel = -Normal(out, math.exp(-4.5)).log_prob(x)
    torch.testing.assert_close(model.reconstruction_nll(out, x), per_pixel.flatten(1).sum(1))
    torch.testing.assert_close(model.reconstruction_nll(out, x, weight), (per_pixel * weight).flatten(1).sum(1))


def test_the_loss_is_recon_plus_beta_kl_with_z_sampled_only_in_training():
    import torch

    model = _vae(beta=0.5)
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    model.eval()
    out = model.loss({"images": x})
    xf = x.float() / 255
    mu, logvar = model.encode(xf)
    recon = model.reconstruction_nll(model.decode(mu), xf)
    kl = model.prior.kl(mu, logvar)
    torch.testing.assert_close(out.recon_per_sample, recon)
    torch.testing.assert_close(out.kl_per_sample, kl)
    torch.testing.assert_close(out.loss, (recon + 0.5 * kl).mean())
    torch.testing.assert_close(out.recon, recon.mean())
    torch.testing.assert_close(out.kl, kl.mean())
    assert out.term_weights() == {"recon": 1.0, "kl": 0.5}
    assert set(out.terms()) == set(out.per_sample_terms()) == {"recon", "kl"}
    torch.testing.assert_close(out.terms()["kl"], out.kl)
    torch.testing.assert_close(out.per_sample_terms()["recon"], out.recon_per_sample)
    fwd = model(x, beta=2.0)
    torch.testing.assert_close(fwd.loss, (recon + 2.0 * kl).mean())
    assert fwd.beta == 2.0 and fwd.term_weights()["kl"] == 2.0
    model.train()
    torch.manual_seed(5)
    trained = model.loss({"images": xf})
    torch.manual_seed(5)
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    torch.testing.assert_close(trained.decoder_out, model.decode(z))


def test_encode_clamps_the_log_variance():
    import torch

    from cvae_features.model import LOGVAR_MAX, LOGVAR_MIN

    model = _vae()
    with torch.no_grad():
        bias = model.to_latent.bias if hasattr(model.to_latent, "bias") else model.to_latent[-1].bias
        bias[3:] = torch.tensor([1e4, -1e4, 0.0])
    mu, logvar = model.encode(torch.zeros(1, 1, 8, 8))
    assert logvar[0, 0] == LOGVAR_MAX and logvar[0, 1] == LOGVAR_MIN and LOGVAR_MIN < logvar[0, 2] < LOGVAR_MAX


def test_with_an_accelerator_the_features_are_computed_here_and_equal(tmp_path, monkeypatch):
    """On a GPU the decoding workers do not run the featurizer (in_workers is false): raw features show that
    path on a CPU-only machine (the raw featurizer ignores the device)."""
    import os

    import torch

    from cvae_features import extraction

    root = tmp_path / "imgs"
    root.mkdir()
    for i, name in enumerate("abc"):
        _png(root / f"{name}.png", 30 * i)
    _raw(root, tmp_path / "cpu.h5")
    monkeypatch.setattr(extraction, "resolve_device", lambda device: torch.device("meta"))
    _raw(root, tmp_path / "acc.h5")
    _png(root / "b.png", 200)
    st = os.stat(root / "b.png")
    os.utime(root / "b.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert _raw(root, tmp_path / "acc.h5", update=True).n_changed == 1
    with FeatureStore(tmp_path / "cpu.h5") as cpu, FeatureStore(tmp_path / "acc.h5") as acc:
        expect = cpu.features.copy()
        expect[1] = 200 / 255
        np.testing.assert_allclose(acc.features, expect, rtol=0, atol=1e-7)


def _pngs_and_a_folder_outside(tmp_path, names):
    """A folder ``imgs`` of 9x9 PNGs named ``names`` beside a folder ``outside`` of one PNG (for a link that leads
    out of the source); returns (root, store path)."""
    root = tmp_path / "imgs"
    root.mkdir()
    for name in names:
        _png(root / f"{name}.png", 9)
    (tmp_path / "outside").mkdir()
    _png(tmp_path / "outside" / "x.png", 9)
    return root, tmp_path / "s.h5"


def test_a_resume_lists_new_walk_skips_and_files_removed_before_extraction_together(tmp_path):
    import os

    root, store = _pngs_and_a_folder_outside(tmp_path, "abcd")
    _raw_cut_after_first_batch(root, store)  # a, b written; c, d pending
    (root / "d.png").unlink()
    os.symlink(tmp_path / "outside", root / "elsewhere")
    res = _raw(root, store, resume=True)
    assert sorted(k for k, _ in res.skipped) == ["d.png", "elsewhere/"] and res.n_new_skipped == 2
    with FeatureStore(store) as s:
        assert s.is_complete and s.n_rows == 3 and s.n_skipped == 2


def test_an_update_lists_new_walk_skips_and_changed_files_that_no_longer_decode_together(tmp_path):
    import os

    root, store = _pngs_and_a_folder_outside(tmp_path, "abc")
    _raw(root, store)
    os.symlink(tmp_path / "outside", root / "elsewhere")
    (root / "b.png").write_bytes(b"no longer a png")
    res = _raw(root, store, update=True)
    assert sorted(k for k, _ in res.skipped) == ["b.png", "elsewhere/"] and res.n_new_skipped == 2
