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

import cvae_features.neighbors as nb
from cvae_cli.main import cli
from cvae_features.extraction import extract
from cvae_features.errors import ConfigError, StoreError
from cvae_features.index import index_paths, normalize_rows
from cvae_features.neighbors import (DEFAULT_THRESHOLD, METRIC, _Components, find_duplicates, nearest_neighbors,
                                     store_duplicates, store_neighbors)
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


# ------------------------------------------------------------------------------------------------ units

def test_block_sizes_checks_and_the_search_choice_at_their_boundaries():
    block = nb.BLOCK_BYTES
    assert nb._rows_per_block(10, 16) == block // 64 and nb._rows_per_block(300, 16) == block // 1200
    assert nb._rows_per_block(3, 500) == block // 2000 and nb._rows_per_block(0, 0) == block // 4
    assert nb._rows_per_block(1, block) == 1  # a block is never empty
    assert nb.choose_search("auto", nb.EXACT_MAX_ROWS) == "exact"
    assert nb.choose_search("auto", nb.EXACT_MAX_ROWS + 1) == "approximate"
    assert nb.choose_search("exact", 10**9) == "exact" and nb.choose_search("approximate", 1) == "approximate"
    for bad in (0, -1, True, 1.5, "3", None):
        with pytest.raises(ConfigError, match="invalid k="):
            nb._check_k(bad)
    assert nb._check_k(1) == 1 and type(nb._check_k(np.int64(3))) is int
    for bad in (-0.001, 2.001, float("nan"), "abc", None, [0.1]):
        with pytest.raises(ConfigError, match="invalid threshold="):
            nb._check_threshold(bad)
    assert (nb._check_threshold(0), nb._check_threshold(2), nb._check_threshold("0.5")) == (0.0, 2.0, 0.5)


def test_nearest_neighbors_defaults_names_ties_and_the_clamp_of_k():
    X = np.array([[1, 0], [0, 1], [1, 0], [1, 1], [2, 0], [-1, 0]], dtype=np.float64)
    t = nearest_neighbors(X, X[[0]])  # no keys, no own rows: k=10 clamped to the 6 rows; ties: lower row first
    assert t["query"].tolist() == ["0"] * 6 and t["rank"].tolist() == [1, 2, 3, 4, 5, 6]
    assert t["row"].tolist() == [0, 2, 4, 3, 1, 5] and t["key"].tolist() == ["0", "2", "4", "3", "1", "5"]
    np.testing.assert_allclose(t["distance"], [0, 0, 0, 1 - np.sqrt(0.5), 1, 2], atol=1e-6)
    assert nearest_neighbors(X, X[[3, 1]], k=1)[["query", "row"]].values.tolist() == [["0", 3], ["1", 1]]
    keys = list("abcdef")
    t = nearest_neighbors(X, X[[0, 3, 1]], k=9, keys=keys, query_rows=[0, -1, 1])
    # k is clamped to the rows but one when a query is a row (its own row is left out)
    assert t.groupby("query", sort=False).size().to_dict() == {"a": 5, "1": 5, "b": 5}
    assert t[t["query"] == "a"]["key"].tolist() == ["c", "e", "d", "b", "f"]
    assert t[t["query"] == "1"]["key"].tolist() == ["d", "a", "b", "c", "e"]  # a, b, c, e tie
    one = nearest_neighbors(X, X[[0]], k=9, keys=keys, query_rows=[0])
    assert one["key"].tolist() == ["c", "e", "d", "b", "f"] and one["query"].tolist() == ["a"] * 5
    mixed = nearest_neighbors(X, X[[0, 3]], k=9, query_rows=[0, -1])  # row 0 is a query's own row too
    assert mixed.groupby("query", sort=False).size().to_dict() == {"0": 5, "1": 5}
    column = nearest_neighbors(X, X[[0, 1]], k=2, query_rows=np.array([[0], [1]]))
    assert column["row"].tolist() == [2, 4, 3, 0]
    empty = [nearest_neighbors(X[:1], X[:1], query_rows=[0]), nearest_neighbors(X, np.zeros((0, 2)))]
    for e in empty:
        assert e.empty and list(e.columns) == ["query", "rank", "key", "row", "distance"]
        assert e.dtypes[["rank", "row", "distance"]].tolist() == t.dtypes[["rank", "row", "distance"]].tolist()
    with pytest.raises(ConfigError, match="1 query_rows for 2 queries"):
        nearest_neighbors(X, X[[0, 1]], query_rows=[0])
    assert len(nearest_neighbors(np.random.default_rng(0).normal(size=(15, 4)), X[:1].repeat(2, 1))) == 10


def test_top_k_across_blocks_at_their_boundaries_and_for_k_of_one(monkeypatch):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(50, 8))
    monkeypatch.setattr(nb, "BLOCK_BYTES", 4 * 8 * 7)  # blocks of 7 rows
    own = [0, 6, 7, 13, 14, 49]
    for k in (1, 2, 7, 8):
        table = nearest_neighbors(X, X[own], k=k, query_rows=own)
        for o in own:
            want, dist = brute_force(X, X[o], k, o)
            rows = table[table["query"] == str(o)]
            assert rows["row"].tolist() == want.tolist(), (k, o)
            np.testing.assert_allclose(rows["distance"], dist, atol=1e-5)
    assert nearest_neighbors(X, X[[0]] + 1e-3, k=1)["row"].tolist() == [0]
    monkeypatch.undo()
    X = rng.normal(size=(300, 8))  # one block of 300 rows
    table = nearest_neighbors(X, X[:20], k=1, query_rows=np.arange(20))
    assert table["row"].tolist() == [brute_force(X, X[i], 1, i)[0][0] for i in range(20)]


def _rounding_rows():
    """Rows u, u, -u, e0 whose float32 unit rows give u·u > 1 and 1 - u·(-u) > 2 (in float32) as the searches
    compute them."""
    for seed in range(5000):
        u = np.random.default_rng(seed).normal(size=(1, 16))
        X = np.vstack([u, u, -u, np.eye(16)[:1]])
        Xn = normalize_rows(X)
        s = (Xn[:1] @ Xn.T)[0]
        e = np.einsum("ij,ij->i", Xn[[0, 1, 2]], Xn[[0, 0, 0]])
        if s[1] > 1 and np.float32(1) - s[2] > 2 and e[1] > 1 and e[2] < -1:
            return X
    pytest.skip("no row here whose float32 similarities round past +-1")


def test_distances_stay_within_0_and_2_where_float32_rounding_leaves_them():
    X = _rounding_rows()
    d = nearest_neighbors(X, X[[0]], k=4)["distance"].tolist()
    assert d[0] == d[1] == 0.0 and d[3] == 2.0
    groups = find_duplicates(X[:3], threshold=2.0)
    assert groups["row"].tolist() == [0, 1, 2] and groups["distance"].tolist() == [0.0, 0.0, 2.0]


def test_duplicate_pairs_are_found_once_across_blocks(monkeypatch):
    X = normalize_rows(np.eye(16)[[0, 0, 1, 0, 1]] * [[1], [1], [1], [2], [3]])
    monkeypatch.setattr(nb, "BLOCK_BYTES", 4 * 16 * 2)  # blocks of 2 rows
    pairs = [(int(r), int(c)) for rs, cs in nb._exact_pairs(X, 1.0) for r, c in zip(rs, cs)]
    assert sorted(pairs) == [(0, 1), (0, 3), (1, 3), (2, 4)] and len(pairs) == 4


def test_duplicate_groups_ordered_by_their_first_row_with_distances_to_it():
    rng = np.random.default_rng(9)
    X = rng.normal(size=(8, 16))
    X[5], X[3] = X[0] * 2, X[1] + 0.01  # groups [0, 5] and [1, 3]: by the second row they would swap
    table = find_duplicates(X)
    assert table["group"].tolist() == [1, 1, 2, 2] and table["row"].tolist() == [0, 5, 1, 3]
    assert table["key"].tolist() == ["0", "5", "1", "3"]
    loose = find_duplicates(X, threshold=1.9)  # one group, members far from the first
    assert loose["row"].tolist() == list(range(8)) and loose["distance"].iloc[0] == 0.0
    U = normalize_rows(X)
    want = np.clip(1.0 - np.einsum("ij,ij->i", U, U[[0] * 8]).astype(np.float64), 0, 2)
    want[0] = 0.0
    np.testing.assert_array_equal(loose["distance"].to_numpy(), want)
    none = find_duplicates(X[[0, 1, 2]])
    assert none.empty and none.dtypes[["group", "row", "distance"]].tolist() == [np.int64, np.int64, np.float64]


def test_components_compact_their_edges_past_four_per_row_plus_the_slack(monkeypatch):
    monkeypatch.setattr(_Components, "slack", 2)
    comps = _Components(5)  # compacted above 4 * 5 + 2 = 22 edges
    comps.add(np.zeros(11, np.int64), np.ones(11, np.int64))
    comps.add(np.full(11, 3), np.full(11, 4))
    assert comps.count == 22 and len(comps.r) == 2  # at the bound: kept as they came
    comps.add(np.array([1]), np.array([2]))  # one more: one edge per grouped row, to its group's first row
    assert comps.count == 3 and [a.tolist() for a in comps.r] == [[1, 2, 4]]
    assert [a.tolist() for a in comps.c] == [[0, 0, 3]]
    comps.add(np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert comps.count == 3 and [g.tolist() for g in comps.groups()] == [[0, 1, 2], [3, 4]]


# ------------------------------------------------------------------------------------------------ store units

def _dup_rows():
    """14 rows of width 16: near-copies (0, 3), (2, 6), (5, 9); (10, 11) 5e-6 past a 0.3 threshold (within the
    rounding slack), (12, 13) 2e-5 past it (outside)."""
    X = np.random.default_rng(7).normal(size=(14, 16))
    X[3] = X[0] + 0.01
    X[6] = 1.5 * X[2]
    X[9] = X[5] + 0.05 * np.random.default_rng(8).normal(size=16)
    for a, b, c in ((10, 11, 0.7 - 5e-6), (12, 13, 0.7 - 2e-5)):
        X[a] = X[b] = 0
        X[a, a - 10] = 3.0
        X[b, a - 10], X[b, a - 9] = 2 * c, 2 * np.sqrt(1 - c * c)
    return X


def test_store_results_and_their_json_records(tmp_path):
    X = _dup_rows()
    path = written(tmp_path / "r.h5", X)
    res = store_neighbors(path, ["row/0000", "row/0003"])  # k=10, exact, as the defaults say
    assert (res.store, res.k, res.search, res.notes, res.index) == (str(path), 10, "exact", [], None)
    d = res.to_dict()
    assert list(d) == ["store", "metric", "search", "k", "queries", "notes", "index"]
    assert (d["store"], d["metric"], d["search"], d["k"], d["notes"], d["index"]) == (str(path), METRIC, "exact",
                                                                                       10, [], None)
    assert [(q["query"], q["kind"], len(q["neighbors"])) for q in d["queries"]] == [("row/0000", "key", 10),
                                                                                    ("row/0003", "key", 10)]
    first = d["queries"][0]["neighbors"][0]
    assert list(first) == ["rank", "key", "row", "distance"] and first["key"] == "row/0003" and first["rank"] == 1

    dup = store_duplicates(path, 0.3)
    assert (dup.store, dup.threshold, dup.n_rows, dup.search, dup.notes, dup.index) == (str(path), 0.3, 14, "exact",
                                                                                        [], None)
    pd.testing.assert_frame_equal(dup.table, find_duplicates(X, [f"row/{i:04d}" for i in range(14)], 0.3))
    d = dup.to_dict()
    assert list(d) == ["store", "metric", "threshold", "search", "n_rows", "n_groups", "n_images_in_groups",
                       "groups", "notes", "index"]
    assert [d[k] for k in ("store", "metric", "threshold", "search", "n_rows", "n_groups", "n_images_in_groups",
                           "notes", "index")] == [str(path), METRIC, 0.3, "exact", 14, 4, 8, [], None]
    assert [[m["row"] for m in g["members"]] for g in d["groups"]] == [[0, 3], [2, 6], [5, 9], [10, 11]]
    assert [g["group"] for g in d["groups"]] == [1, 2, 3, 4] and list(d["groups"][0]) == ["group", "members"]
    assert list(d["groups"][0]["members"][1]) == ["key", "row", "distance"]
    assert d["groups"][0]["members"][1]["key"] == "row/0003"
    assert store_duplicates(path).table["row"].tolist() == [0, 3, 2, 6, 5, 9]  # the default threshold, 0.01


def test_approximate_duplicates_equal_exact_ones_across_blocks(tmp_path, monkeypatch):
    path = written(tmp_path / "r.h5", _dup_rows())
    monkeypatch.setattr(nb, "BLOCK_BYTES", 4 * 16 * 3)  # members are fetched 3 rows at a time
    monkeypatch.setattr(nb, "QUERY_BLOCK", 4)  # range searches of 4 rows
    exact = store_duplicates(path, 0.3, search="exact")
    approx = store_duplicates(path, 0.3, search="approximate")
    pd.testing.assert_frame_equal(approx.table, exact.table, check_exact=True)
    index_file = index_paths(path)[0]
    assert approx.search == "approximate" and approx.notes == [f"building the approximate index {index_file} (14 rows)"]
    assert approx.index["path"] == str(index_file) and approx.index["built_now"] is True
    assert approx.index["index"]["n_lists"] == 1 and approx.n_rows == 14 and approx.store == str(path)
    assert store_duplicates(path, 0.3, search="approximate").index["built_now"] is False


def _clusters(tmp_path):
    """312 rows in 8 tight clusters of 39 (an index of 8 lists)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 16)) * 10
    return written(tmp_path / "blobs.h5", centres[np.arange(312) % 8] + rng.normal(size=(312, 16)))


def test_nprobe_reaches_the_index_and_a_short_list_is_noted(tmp_path):
    path = _clusters(tmp_path)
    keys = [f"row/{i:04d}" for i in range(8)]  # one per cluster
    short = store_neighbors(path, keys, 50, search="approximate", nprobe=1)  # one list: about 39 rows
    counts = short.table.groupby("query").size()
    n_short = int((counts < 50).sum())
    assert n_short > 0 and (short.table["row"] >= 0).all() and (short.table["distance"] < 1).all()
    assert not (short.table["query"] == short.table["key"]).any()
    assert short.notes[-1] == (f"the approximate index found fewer than 50 neighbours for {n_short} queries (raise "
                               "--nprobe, or --search exact)")
    full = store_neighbors(path, keys, 50, search="approximate")  # 16 lists probed: all 8
    assert full.table.groupby("query").size().tolist() == [50] * 8 and full.notes == []
    assert full.index["path"] == str(index_paths(path)[0])
    assert store_duplicates(path, 2.0, search="approximate", nprobe=1).n_groups == 8  # each list on its own
    assert store_duplicates(path, 2.0, search="approximate").n_groups == 1


def test_queries_by_key_and_by_file_and_how_many_neighbours_they_get(tmp_path):
    P = np.random.default_rng(11).integers(0, 256, (6, 16))
    path = written(tmp_path / "r.h5", P / 255.0)
    png = tmp_path / "q.png"
    _png(png, P[4].reshape(4, 4))
    both = store_neighbors(path, ["row/0000", str(png)], 6)
    assert both.queries == [{"query": "row/0000", "kind": "key"}, {"query": str(png), "kind": "file"}]
    assert both.notes == ["k=6 is more than the 5 other rows: showing 5"] and both.k == 5
    by_file = both.table[both.table["query"] == str(png)]
    by_key = both.table[both.table["query"] == "row/0000"]
    pd.testing.assert_frame_equal(by_key, store_neighbors(path, ["row/0000"], 5).table)
    assert by_file["key"].iloc[0] == "row/0004" and by_file["distance"].iloc[0] < 1e-6
    alone = store_neighbors(path, [str(png)], 6)  # a file has no own row: all 6 rows
    assert alone.notes == [] and alone.k == 6 and len(alone.table) == 6
    pd.testing.assert_frame_equal(store_neighbors(path, [str(png)], 6, model=path).table, alone.table)
    two = store_neighbors(written(tmp_path / "two.h5", P[:2] / 255.0), ["row/0001"], 1)
    assert two.table["key"].tolist() == ["row/0000"] and two.notes == [] and two.k == 1


def test_store_notes_an_incomplete_store_and_a_missing_faiss(tmp_path, monkeypatch):
    import sys

    X = np.random.default_rng(12).normal(size=(6, 16)).astype(np.float32)
    part = tmp_path / "part.h5"
    with StoreWriter.create(part, feature_kind="raw", dim=16, preprocess=PRE, source="generated",
                            plan_keys=[f"row/{i:04d}" for i in range(5)]) as w:
        w.write_batch(np.arange(3), X[:3], np.full(3, -1))
    assert store_neighbors(part, ["row/0000"], 2).notes == [
        f"{part} is incomplete (2 files pending): searching its 3 committed rows"]
    path = written(tmp_path / "r.h5", X)
    monkeypatch.setitem(sys.modules, "faiss", None)
    monkeypatch.setattr(nb, "EXACT_MAX_ROWS", 5)
    res = store_neighbors(path, ["row/0000"], 2)
    assert res.search == "exact" and res.notes == [
        "6 rows would use the approximate index, but faiss is not installed (pip install 'cvae-features[index]'): "
        "searching exactly"]
    with pytest.raises(StoreError, match="holds no rows"):
        store_neighbors(written(tmp_path / "empty.h5", np.zeros((0, 16)), keys=["a"]), ["a"])
