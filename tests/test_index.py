"""The approximate index beside a store (``cvae_features.index``, real faiss): agreement with exact search,
and what happens when the store changes under it (``cvae extract --update``)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cvae_cli.main import cli
from cvae_features.extraction import extract
from cvae_features.index import index_paths, open_index
from cvae_features.neighbors import nearest_neighbors, store_neighbors
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
