"""Similar images and duplicates (``cvae_features.neighbors``, ``cvae neighbors`` / ``cvae duplicates``) on real
stores extracted from real image files, checked against brute force computed here."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from cvae_cli.main import cli
from cvae_features.extraction import extract
from cvae_features.neighbors import (DEFAULT_THRESHOLD, _Components, find_duplicates, nearest_neighbors,
                                     store_neighbors)
from cvae_features.store import StoreWriter

from _stores import save_tiny_model

SIZE = 16
PRE = {"size": 4, "channels": 1, "resize": "crop"}


def _png(path, pixels):
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L").save(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """12 random-pattern images, an exact copy of img_03, a noisy copy of img_05, a brighter copy of img_08."""
    root = tmp_path_factory.mktemp("nb") / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    pics = rng.integers(0, 256, (12, SIZE, SIZE)).astype(np.float64)
    for i, p in enumerate(pics):
        _png(root / f"img_{i:02d}.png", p)
    shutil.copy(root / "img_03.png", root / "copy_exact.png")
    _png(root / "copy_noisy.png", pics[5] + rng.normal(0, 3, pics[5].shape))
    _png(root / "copy_bright.png", pics[8] * 0.9)
    return root


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("run"), SIZE, 6)


@pytest.fixture(scope="module")
def stores(folder, model_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    kw = dict(workers=0, progress=False)
    extract(folder, root / "raw.h5", features="raw", **kw)
    extract(folder, root / "vae.h5", model=model_path, carry_weights=True, **kw)
    extract(folder, root / "bare.h5", model=model_path, **kw)
    return {name: root / f"{name}.h5" for name in ("raw", "vae", "bare")}


def written(path, X, keys=None):
    """A raw store holding exactly ``X`` (rows of width 16) under ``keys``."""
    keys = keys or [f"row/{i:04d}" for i in range(len(X))]
    with StoreWriter.create(path, feature_kind="raw", dim=X.shape[1], preprocess=PRE, source="generated",
                            plan_keys=keys) as w:
        if len(X):
            w.write_batch(np.arange(len(X)), X.astype(np.float32), np.full(len(X), -1))
    return path


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def brute_force(X, q, k, own=-1):
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    d = 1.0 - Xn @ (q / np.linalg.norm(q))
    if own >= 0:
        d[own] = np.inf
    order = np.lexsort((np.arange(len(X)), d))[:k]
    return order, d[order]


# ------------------------------------------------------------------------------------------------ arrays

def test_array_neighbours_equal_brute_force_across_blocks(monkeypatch):
    import cvae_features.neighbors as nb

    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 16))
    monkeypatch.setattr(nb, "BLOCK_BYTES", 4 * 16 * 7)  # blocks of 7 rows: the running top-k is merged 43 times
    table = nearest_neighbors(X, X[[4, 150, 299]], k=5, query_rows=[4, 150, 299])
    assert list(table.columns) == ["query", "rank", "key", "row", "distance"]
    for name, own in (("4", 4), ("150", 150), ("299", 299)):
        rows = table[table["query"] == name]
        want, dist = brute_force(X, X[own], 5, own)
        assert rows["row"].tolist() == want.tolist() and rows["rank"].tolist() == [1, 2, 3, 4, 5]
        np.testing.assert_allclose(rows["distance"], dist, atol=1e-5)


def test_find_duplicates_groups_by_connected_components(monkeypatch):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(40, 16))
    chain = X[7] + np.outer(np.arange(1, 4), np.full(16, 0.004))  # 7 ~ a ~ b ~ c: a chain of small steps
    X = np.vstack([X, chain, X[20] * 3.0])
    want = [[7, 40, 41, 42], [20, 43]]
    monkeypatch.setattr(_Components, "slack", 0)  # compact the edges after every batch: same groups
    table = find_duplicates(X, threshold=0.001)
    assert [g["row"].tolist() for _, g in table.groupby("group")] == want
    first = table.groupby("group").head(1)
    assert (first["distance"] == 0).all() and table["distance"].max() < 0.01
    assert find_duplicates(X, threshold=0.0).empty is False  # X[20] * 3 has the very same direction
    assert len(find_duplicates(rng.normal(size=(30, 16)))) == 0


# ------------------------------------------------------------------------------------------------ stores

def test_store_neighbours_by_key_equal_brute_force(tmp_path):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(120, 16))
    path = written(tmp_path / "r.h5", X)
    result = run("neighbors", path, "row/0007", "row/0100", "-k", "6", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert out["search"] == "exact" and out["k"] == 6 and "cosine" in out["metric"]
    for q, own in zip(out["queries"], (7, 100)):
        want, dist = brute_force(X, X[own], 6, own)
        assert q["kind"] == "key"
        assert [n["row"] for n in q["neighbors"]] == want.tolist()
        assert [n["key"] for n in q["neighbors"]] == [f"row/{i:04d}" for i in want]
        np.testing.assert_allclose([n["distance"] for n in q["neighbors"]], dist, atol=1e-5)


@pytest.mark.parametrize("kind", ["raw", "vae"])
def test_query_image_identical_to_a_stored_one_is_found_at_zero(stores, folder, kind):
    result = run("neighbors", stores[kind], folder / "img_07.png", "-k", "3")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].endswith("(image file):")
    rank, distance, key = lines[2].split()
    assert (rank, key) == ("1", "img_07.png") and float(distance) < 1e-4


def test_weightless_vae_store_needs_the_model_for_an_image(stores, folder, model_path, tmp_path):
    result = run("neighbors", stores["bare"], folder / "img_07.png")
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "not the weights" in result.output and "--model" in result.output
    assert run("neighbors", stores["bare"], "img_07.png").exit_code == 0  # a key needs no model
    ok = store_neighbors(stores["bare"], [str(folder / "img_07.png")], 2, model=model_path)
    assert ok.table["key"].iloc[0] == "img_07.png" and ok.table["distance"].iloc[0] < 1e-4
    save_tiny_model(tmp_path / "other", SIZE, 6, seed=1)
    result = run("neighbors", stores["bare"], folder / "img_07.png", "--model", tmp_path / "other")
    assert result.exit_code == 1 and "not comparable" in result.output and result.output.count("\n") == 1


def test_duplicates_finds_exact_and_altered_copies_only(stores, tmp_path):
    out = tmp_path / "dups.csv"
    result = run("duplicates", stores["raw"], "-o", out)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"3 groups, 6 of 15 images, within cosine distance {DEFAULT_THRESHOLD:g}")
    table = pd.read_csv(out)
    assert list(table.columns) == ["group", "key", "row", "distance"]
    groups = [sorted(g["key"]) for _, g in table.groupby("group")]
    assert sorted(groups) == [["copy_bright.png", "img_08.png"], ["copy_exact.png", "img_03.png"],
                              ["copy_noisy.png", "img_05.png"]]
    exact = table[table["key"].isin(["copy_exact.png", "img_03.png"])]
    assert exact["distance"].max() < 1e-6
    result = run("duplicates", stores["raw"], "--json", "--search", "approximate")
    assert result.exit_code == 0, result.output
    js = json.loads(result.output[result.output.index("{"):])
    assert js["n_groups"] == 3 and js["search"] == "approximate" and js["threshold"] == DEFAULT_THRESHOLD
    assert sorted(sorted(m["key"] for m in g["members"]) for g in js["groups"]) == sorted(groups)


# ------------------------------------------------------------------------------------------------ bad input

def one_line_error(result, *parts):
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    assert "Traceback" not in result.output
    for part in parts:
        assert part in result.output, result.output


def test_key_not_in_the_store(stores):
    one_line_error(run("neighbors", stores["raw"], "nope.png"), "'nope.png' is neither a key in",
                   "keys look like 'copy_bright.png'")


def test_k_larger_than_the_store_is_clamped_with_a_note(stores):
    result = run("neighbors", stores["raw"], "img_00.png", "-k", "99")
    assert result.exit_code == 0, result.output
    assert "note: k=99 is more than the 14 other rows: showing 14" in result.stderr
    assert len([line for line in result.stdout.splitlines() if line.startswith("  ")]) == 14


def test_empty_store(tmp_path):
    path = written(tmp_path / "empty.h5", np.zeros((0, 16)), keys=["a.png"])
    one_line_error(run("neighbors", path, "a.png"), "holds no rows")
    one_line_error(run("duplicates", path), "holds no rows")


def test_undecodable_query_file(stores, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_text("not a png")
    one_line_error(run("neighbors", stores["raw"], bad), "broken.png: cannot be decoded")


def test_store_of_one_row_asked_about_that_row(tmp_path):
    path = written(tmp_path / "one.h5", np.ones((1, 16)), keys=["a.png"])
    one_line_error(run("neighbors", path, "a.png"), "no other image")


def test_faiss_missing_names_the_extra(stores, monkeypatch):
    import sys

    import cvae_features.neighbors as nb

    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss raises ImportError
    one_line_error(run("neighbors", stores["raw"], "img_00.png", "--search", "approximate"),
                   "pip install 'cvae-features[index]'")
    monkeypatch.setattr(nb, "EXACT_MAX_ROWS", 5)  # auto would choose the index: falls back to exact, says so
    result = run("duplicates", stores["raw"])
    assert result.exit_code == 0, result.output
    assert "faiss is not installed" in result.stderr and "(exact search)" in result.stdout


def test_bad_threshold_and_csv_path(stores, tmp_path):
    assert run("duplicates", stores["raw"], "--threshold", "3").exit_code == 2
    one_line_error(run("duplicates", stores["raw"], "-o", tmp_path / "missing" / "d.csv"), "cannot write")
    with pytest.raises(ValueError, match="threshold"):
        find_duplicates(np.ones((3, 2)), threshold=-1)


def test_help_states_the_library_defaults():
    from cvae_features.index import DEFAULT_NPROBE
    from cvae_features.neighbors import EXACT_MAX_ROWS

    text = " ".join(run("duplicates", "--help").output.split())
    assert f"exact up to {EXACT_MAX_ROWS:,} rows" in text and f"Default: {DEFAULT_NPROBE}." in text
    assert f"Default: {DEFAULT_THRESHOLD:g} " in text
