"""The approximate index beside a store (``cvae_features.index``, real faiss): agreement with exact search,
and what happens when the store changes under it (``cvae extract --update``)."""

from __future__ import annotations

import calendar
import json
import re
import shutil
import time
import types
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cvae_features.index as index_module
from cvae_cli.main import cli
from cvae_features.errors import ConfigError, StoreError
from cvae_features.extraction import extract
from cvae_features.index import (INDEX_VERSION, build_index, index_paths, n_lists, normalize_rows, open_index,
                                 stale_reason, store_identity)
from cvae_features.neighbors import nearest_neighbors, store_duplicates, store_neighbors
from cvae_features.store import FeatureStore, StoreWriter

pytest.importorskip("faiss")  # the dev extra installs it; CI runs these for real

PRE = {"size": 4, "channels": 1, "resize": "crop"}


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_approximate_agrees_with_exact_on_separated_clusters(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 16)) * 10
    X = (centres[np.arange(312) % 8] + rng.normal(size=(312, 16))).astype(np.float32)
    keys = [f"v/{i:04d}" for i in range(len(X))]
    path = tmp_path / "blobs.h5"
    with StoreWriter.create(path, feature_kind="raw", dim=16, preprocess=PRE, source="blobs", plan_keys=keys) as w:
        w.write_batch(np.arange(len(X)), X, np.full(len(X), -1))
    exact = store_neighbors(path, keys, 10, search="exact").table
    approx = store_neighbors(path, keys, 10, search="approximate", nprobe=2)
    assert approx.index["index"]["n_lists"] == 8 and approx.index["built_now"]  # 312 // 39 lists

    def recall(table):
        return np.mean([len(set(table[table["query"] == q]["row"]) & set(exact[exact["query"] == q]["row"])) / 10
                        for q in keys])

    assert recall(approx.table) == 1.0  # every query: its 10 exact neighbours, 2 of 8 lists probed
    assert recall(store_neighbors(path, keys, 10, search="approximate", nprobe=1).table) >= 0.9  # 0.97 here
    a, e = approx.table[approx.table["query"] == "v/0000"], exact[exact["query"] == "v/0000"]
    np.testing.assert_allclose(a["distance"], e["distance"], atol=1e-5)
    brute = nearest_neighbors(X, X[[0]], k=10, query_rows=[0])
    assert brute["row"].tolist() == e["row"].tolist()
    again = store_neighbors(path, keys[:1], 10, search="approximate")
    assert again.index["built_now"] is False and again.notes == []


def _png(path, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 12)).astype(np.uint8)
    Image.fromarray(pixels, "L").save(path)


def test_index_is_rebuilt_after_update_and_refused_with_no_rebuild(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(10):
        _png(folder / f"img_{i}.png", i)
    store = tmp_path / "f.h5"
    extract(folder, store, features="raw", workers=0, progress=False)
    first = run("neighbors", store, "img_0.png", "--search", "approximate", "--json")
    assert first.exit_code == 0, first.output
    assert "building the approximate index" in first.stderr
    index_file, sidecar = index_paths(store)
    before = json.loads(sidecar.read_text())["store"]
    assert before["n_rows"] == 10 and index_file.exists()

    _png(folder / "new_a.png", 100)
    shutil.copy(folder / "new_a.png", folder / "new_b.png")
    assert run("extract", folder, "-o", store, "--features", "raw", "--update").exit_code == 0

    refused = run("neighbors", store, "new_a.png", "--search", "approximate", "--no-rebuild")
    assert refused.exit_code == 1 and refused.output.count("\n") == 1
    assert "no longer matches" in refused.output and "n_rows 10 -> 12" in refused.output
    assert json.loads(sidecar.read_text())["store"] == before  # refused: nothing rewritten

    result = run("neighbors", store, "new_a.png", "--search", "approximate", "-k", "3", "--json")
    assert result.exit_code == 0, result.output
    assert "rebuilding the approximate index" in result.stderr and "n_rows 10 -> 12" in result.stderr
    after = json.loads(sidecar.read_text())["store"]
    assert after["n_rows"] == 12 and after["size"] == store.stat().st_size and after["mtime_ns"] != before["mtime_ns"]
    best = json.loads(result.stdout)["queries"][0]["neighbors"][0]
    assert best["key"] == "new_b.png" and best["distance"] < 1e-6  # a row the update added


def test_unreadable_index_or_sidecar_is_rebuilt(tmp_path):
    X = np.random.default_rng(1).normal(size=(50, 16)).astype(np.float32)
    path = tmp_path / "s.h5"
    with StoreWriter.create(path, feature_kind="raw", dim=16, preprocess=PRE, source="x",
                            plan_keys=[f"k{i}" for i in range(50)]) as w:
        w.write_batch(np.arange(50), X, np.full(50, -1))
    index_file, sidecar = index_paths(path)
    notes = []
    with FeatureStore(path) as store:
        open_index(store, note=notes.append)
        index_file.write_bytes(b"garbage")
        open_index(store, note=notes.append)
        sidecar.write_text("{")
        idx = open_index(store, note=notes.append)
    assert notes[0].startswith("building") and "cannot be read" in notes[1] and "sidecar" in notes[2]
    assert idx.built and idx.info["store"]["n_rows"] == 50


def _store(path, X, keys=None, **kw):
    """A store of ``X`` written by hand (raw unless ``feature_kind`` says otherwise)."""
    keys = keys or [f"k{i}" for i in range(len(X))]
    kw.setdefault("feature_kind", "raw")
    with StoreWriter.create(path, dim=X.shape[1], preprocess=PRE, source="x", plan_keys=keys, **kw) as w:
        if len(X):
            w.write_batch(np.arange(len(X)), np.asarray(X, np.float32), np.full(len(X), -1))
    return path


def test_index_files_list_counts_and_unit_rows():
    assert index_paths("/data/f.h5") == (Path("/data/f.h5.index"), Path("/data/f.h5.index.json"))
    assert [n_lists(n) for n in (1, 38, 78, 312, 10**6)] == [1, 1, 2, 8, 4000]
    unit = normalize_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert unit.dtype == np.float32
    np.testing.assert_array_equal(unit, np.array([[0.6, 0.8], [0.0, 0.0]], dtype=np.float32))  # zero rows stay
    with pytest.raises(ConfigError, match="2-D"):
        normalize_rows(np.ones(3))


def test_the_sidecar_records_the_store_and_the_build_time_in_utc(tmp_path, monkeypatch):
    import faiss

    path = _store(tmp_path / "s.h5", np.random.default_rng(2).normal(size=(100, 16)))
    clock = iter([10.0, 10.12345])
    monkeypatch.setattr(index_module, "time", types.SimpleNamespace(
        perf_counter=lambda: next(clock), strftime=time.strftime, gmtime=time.gmtime))
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # nine hours from UTC: "built" must not be local time
    time.tzset()
    try:
        with FeatureStore(path) as store:
            idx = build_index(store)
            identity, updated = store_identity(store), store.attrs["updated"]
    finally:
        monkeypatch.undo()
        time.tzset()
    index_file, sidecar = index_paths(path)
    info = json.loads(sidecar.read_text())
    assert sidecar.read_text() == json.dumps(info, indent=1, sort_keys=True) + "\n" and info == idx.info
    assert (idx.path, idx.built) == (index_file, True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5", "s.h5.index", "s.h5.index.json"]
    assert (info["format"], info["format_version"]) == ("cvae-features-index", INDEX_VERSION)
    stat = path.stat()
    assert info["store"] == identity == {
        "path": str(path.resolve()), "n_rows": 100, "dim": 16, "feature_kind": "raw", "model_fingerprint": "",
        "updated": str(updated), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    assert info["index"] == {"type": "IndexIVFFlat", "metric": "inner product of L2-normalised rows (cosine)",
                             "n_lists": 2, "n_train": 100, "faiss_version": faiss.__version__}
    assert info["build_seconds"] == 0.123
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", info["built"])
    assert abs(calendar.timegm(time.strptime(info["built"], "%Y-%m-%dT%H:%M:%SZ")) - time.time()) < 120


def test_store_identity_of_a_model_store_and_of_one_without_an_update_time(tmp_path):
    vae = _store(tmp_path / "v.h5", np.ones((3, 4)), feature_kind="vae", fingerprint="0123456789abcdef")
    with FeatureStore(vae) as store:
        assert store_identity(store)["model_fingerprint"] == "0123456789abcdef"
    old = _store(tmp_path / "old.h5", np.ones((3, 16)))
    with h5py.File(old, "a") as f:
        del f.attrs["updated"]
    with FeatureStore(old) as store:
        assert store_identity(store)["updated"] == ""


def test_stale_reasons_name_what_changed():
    identity = {"path": "/s.h5", "n_rows": 10, "dim": 4, "feature_kind": "raw", "model_fingerprint": "",
                "updated": "u", "size": 100, "mtime_ns": 5}
    assert stale_reason(None, identity) == "its sidecar is missing or unreadable"
    assert stale_reason({"format_version": 7, "store": identity}, identity) == (
        f"it has index format 7, this tool writes {INDEX_VERSION}")
    assert stale_reason({"format_version": INDEX_VERSION, "store": identity}, identity) is None
    assert stale_reason({"format_version": INDEX_VERSION, "store": dict(identity, n_rows=9, size=90)}, identity) == (
        "the store changed since it was built (n_rows 9 -> 10; size 90 -> 100)")


def test_a_sidecar_of_another_format_or_an_index_of_other_rows_is_rebuilt(tmp_path):
    import faiss

    X = np.random.default_rng(3).normal(size=(50, 16))
    path, other = _store(tmp_path / "s.h5", X), _store(tmp_path / "o.h5", X[:30])
    index_file, sidecar = index_paths(path)
    notes = []
    with FeatureStore(path) as store:
        open_index(store)
        good = json.loads(sidecar.read_text())
        for bad in (dict(good, format="other-index"), dict(good, store="s.h5"), [good]):
            sidecar.write_text(json.dumps(bad))
            assert open_index(store, note=notes.append).built
            assert notes[-1] == f"rebuilding the approximate index {index_file}: its sidecar is missing or unreadable"
        with FeatureStore(other) as o:
            build_index(o)
        shutil.copy(index_paths(other)[0], index_file)  # 30 rows under a sidecar that matches the store
        assert open_index(store, note=notes.append).built
        assert notes[-1] == f"rebuilding the approximate index {index_file}: it holds 30 rows of width 16"
        assert open_index(store, note=notes.append).built is False
        index_file.write_bytes(b"garbage")
        with pytest.raises(RuntimeError) as err:
            faiss.read_index(str(index_file))
        open_index(store, note=notes.append)
        why = str(err.value).strip().splitlines()[-1]
        assert notes[-1] == f"rebuilding the approximate index {index_file}: it cannot be read ({why})"


def test_an_index_of_one_row_builds_quietly_and_of_none_is_refused(tmp_path, capfd):
    one = store_duplicates(_store(tmp_path / "one.h5", np.ones((1, 16))), search="approximate")
    assert one.n_groups == 0 and one.index["index"]["n_lists"] == 1 and one.index["index"]["n_train"] == 1
    assert "WARNING" not in capfd.readouterr().err  # faiss warns of too few training points per list
    with FeatureStore(_store(tmp_path / "empty.h5", np.zeros((0, 16)), keys=["a"])) as store:
        with pytest.raises(StoreError, match="holds no rows: nothing to index"):
            build_index(store)


def test_the_quantizer_trains_on_a_seeded_sample_read_across_batches(tmp_path, monkeypatch):
    import faiss

    X = np.random.default_rng(4).normal(size=(312, 16))
    path = _store(tmp_path / "s.h5", X)
    sample = np.sort(np.random.default_rng(0).choice(312, 80, replace=False))  # 10 rows for each of 8 lists
    monkeypatch.setattr(index_module, "TRAIN_ROWS_PER_LIST", 10)
    monkeypatch.setattr(index_module, "BUILD_BATCH_ROWS", int(sample[1]))  # a sampled row starts the 2nd batch
    seen, train = [], faiss.IndexIVFFlat.train
    monkeypatch.setattr(faiss.IndexIVFFlat, "train", lambda self, x: (seen.append(np.array(x)), train(self, x))[1])
    with FeatureStore(path) as store:
        idx = build_index(store)
    assert len(seen) == 1 and idx.info["index"]["n_train"] == 80 and idx._index.ntotal == 312
    np.testing.assert_array_equal(seen[0], normalize_rows(X)[sample])


def test_a_stale_index_is_rebuilt_by_default_and_refused_when_asked(tmp_path):
    from cvae_features.errors import IndexMismatchError

    rng = np.random.default_rng(5)
    path = _store(tmp_path / "s.h5", rng.normal(size=(40, 16)))
    store_neighbors(path, ["k0"], 2, search="approximate")
    _store(path, rng.normal(size=(41, 16)))  # the store written again: another state
    for search in (lambda **kw: store_neighbors(path, ["k0"], 2, search="approximate", **kw),
                   lambda **kw: store_duplicates(path, search="approximate", **kw)):
        with pytest.raises(IndexMismatchError, match="no longer matches"):
            search(rebuild=False)
        assert search().notes[0].startswith(f"rebuilding the approximate index {index_paths(path)[0]}")
        _store(path, rng.normal(size=(40, 16)))
