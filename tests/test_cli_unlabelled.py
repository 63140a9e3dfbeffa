"""`cvae cluster` and `cvae outliers` end to end: a flat folder of real images, `cvae extract`, sheets, JSON, bad input."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cvae_cli.main import cli
from cvae_features.sheets import StoreImages
from cvae_features.store import FeatureStore, StoreWriter

from _images import write_class_folder

PRE = {"size": 8, "channels": 1, "resize": "crop"}


def _strict(text):
    """json.loads that refuses NaN and Infinity (strict JSON)."""
    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def _flat_folder(root: Path) -> Path:
    """Three brightness groups of 12 images each, written flat (no class folders: no labels)."""
    written = write_class_folder(root / "by-class", classes=("dark", "mid", "bright"), per_class=12, size=(12, 12))
    flat = root / "images"
    flat.mkdir()
    for rel in written:
        shutil.copy(root / "by-class" / rel, flat / rel.replace("/", "_"))
    return flat


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def _one_line_error(result, message):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """A VAE store with reconstruction scores, made by `cvae extract` of a flat folder (trains 1 epoch)."""
    root = tmp_path_factory.mktemp("unlabelled")
    flat = _flat_folder(root)
    store = root / "feats.h5"
    result = run("extract", flat, "-o", store, "--epochs", 1, "--dim", 4, "--scores", "--workers", 0,
                 "--no-progress")
    assert result.exit_code == 0, result.output
    with FeatureStore(store) as fs:
        assert not fs.has_labels and fs.n_rows == 36 and fs.source_spec == str(flat.resolve())
        keys = list(fs.keys)
    return {"root": root, "flat": flat, "store": store, "keys": keys}


def _check_sheets(folder: Path, n_png_min: int):
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert len(pngs) >= n_png_min
    page = (folder / "index.html").read_text()
    linked = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(linked) == pngs  # every PNG is shown, every link resolves
    assert "http" not in page and "<script" not in page
    for name in pngs:
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return page


def test_cluster_writes_csv_sheets_and_strict_json(extracted, tmp_path):
    csv, sheets = tmp_path / "groups.csv", tmp_path / "sheets"
    result = run("cluster", extracted["store"], "-o", csv, "--sheets", sheets, "--max-k", 6, "--json")
    assert result.exit_code == 0, result.output
    out = _strict(result.output)
    frame = pd.read_csv(csv, keep_default_na=False)
    assert list(frame.columns) == ["key", "cluster", "distance", "exemplar"]
    assert list(frame["key"]) == extracted["keys"]  # one row per store row, in store order
    k = out["k"]
    assert out["chosen_by"] == "silhouette" and out["criterion"]["name"] == "silhouette"
    assert sorted(int(v) for v in out["criterion"]["values"]) == list(range(2, 7))
    assert 2 <= k <= 6 and sorted(frame["cluster"].unique()) == list(range(k))
    assert out["sizes"] == np.bincount(frame["cluster"], minlength=k).tolist()
    assert frame["exemplar"].dtype == bool and (frame["distance"] >= 0).all()
    for c, keys in out["exemplars"].items():
        members = frame[frame["cluster"] == int(c)]
        assert keys == list(members.nsmallest(len(keys), "distance", keep="first")["key"])
    page = _check_sheets(sheets, k)
    assert sorted(out["sheets"]["files"]) == [f"group_{c:02d}" for c in range(k)]
    for keys in out["exemplars"].values():
        assert keys[0] in page  # exemplar keys listed under their sheet
    assert out["csv"] == str(csv)


def test_cluster_given_k_and_text_output(extracted, tmp_path):
    result = run("cluster", extracted["store"], "--k", 3, "--preprocessing", "none", "--method", "gmm")
    assert result.exit_code == 0, result.output
    assert len(re.findall(r"^  group \d: ", result.output, flags=re.M)) == 3
    sizes = [int(n) for n in re.findall(r"^  group \d: (\d+) image", result.output, flags=re.M)]
    # this store's μ varies ~1e-5 per dimension: a fixed variance floor of 1e-4 put every image in one group
    assert sum(sizes) == 36 and 0 not in sizes, sizes
    assert "36 images in 3 groups (gmm; k as given)\n" in result.output
    result = run("cluster", extracted["store"], "--k", 3, "--preprocessing", "none")  # k-means: none empty
    assert "36 images in 3 groups (kmeans; k as given)\n" in result.output


def test_outliers_writes_csv_sheets_and_strict_json(extracted, tmp_path):
    csv, sheets = tmp_path / "outliers.csv", tmp_path / "sheets"
    result = run("outliers", extracted["store"], "-o", csv, "--sheets", sheets, "--top", 4, "--rate", 0.1,
                 "--neighbours", 3, "--json")
    assert result.exit_code == 0, result.output
    out = _strict(result.output)
    frame = pd.read_csv(csv, keep_default_na=False)
    assert list(frame.columns) == ["key", "knn", "mahalanobis", "recon_error", "neg_elbo", "mean_rank", "rank",
                                   "is_outlier"]
    assert list(frame["key"]) == extracted["keys"]
    assert out["n_flagged"] == int(frame["is_outlier"].sum()) == 4  # ceil(0.1 * 36)
    assert [t["key"] for t in out["top"]] == list(frame.sort_values("rank")["key"][:4])
    with FeatureStore(extracted["store"]) as fs:
        np.testing.assert_allclose(frame["recon_error"], fs.extra("recon_error"), rtol=1e-6)
    for t in out["top"]:
        assert len(t["nearest_normal"]) == 3
        assert not frame.set_index("key").loc[t["nearest_normal"], "is_outlier"].any()
    page = _check_sheets(sheets, 1)
    assert out["top"][0]["key"] in page

    text = run("outliers", extracted["store"], "--top", 2)
    assert text.exit_code == 0, text.output
    assert "36 images scored by knn, mahalanobis, recon_error, neg_elbo (k=5); 1 flagged at rate 0.01" in text.output


def test_sheets_show_the_images_as_the_model_saw_them(extracted):
    from cvae_features.data import decode_image

    with FeatureStore(extracted["store"]) as fs:
        images = StoreImages.open(fs)
        got = images.get([extracted["keys"][3], "not/there.png"])
        np.testing.assert_array_equal(got[0], decode_image(extracted["flat"] / extracted["keys"][3], fs.preprocess))
    assert got[1] is None and images.missing == {"not/there.png": "no longer in the source"}


def test_a_moved_source_is_refused_before_any_work_and_source_points_to_it(extracted, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(extracted["flat"], moved)
    store = tmp_path / "feats.h5"
    assert run("extract", moved, "-o", store, "--model", extracted["store"], "--workers", 0,
               "--no-progress").exit_code == 0
    elsewhere = tmp_path / "elsewhere"
    moved.rename(elsewhere)
    for command in ("cluster", "outliers"):
        csv, sheets = tmp_path / f"{command}.csv", tmp_path / f"{command}-sheets"
        result = run(command, store, "-o", csv, "--sheets", sheets)
        _one_line_error(result, f"cannot open the source recorded in {store} to draw contact sheets")
        assert "pass --source" in result.output
        assert not csv.exists() and not sheets.exists()
        assert run(command, store, "-o", csv).exit_code == 0  # without --sheets the source is not needed
        result = run(command, store, "--sheets", sheets, "--source", elsewhere)
        assert result.exit_code == 0, result.output
        assert (sheets / "index.html").is_file()


def _store(path, n, *, pending=0, X=None):
    X = np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32) if X is None else X
    keys = [f"img/{i:03d}.png" for i in range(n + pending)]
    with StoreWriter.create(path, feature_kind="raw", dim=3, preprocess=PRE, source="generated",
                            plan_keys=keys) as w:
        if n:
            w.write_batch(np.arange(n), X, np.full(n, -1))
    return path


def test_cluster_says_how_many_groups_came_out_empty(tmp_path):
    # 36 images of two distinct kinds asked for 3 groups: one group can only stay empty
    X = np.repeat(np.array([[0, 0, 0], [5, 5, 5]], np.float32), 18, axis=0)
    result = run("cluster", _store(tmp_path / "two.h5", 36, X=X), "--k", 3, "--preprocessing", "none",
                 "--method", "gmm")
    assert result.exit_code == 0, result.output
    assert sorted(int(n) for n in re.findall(r"^  group \d: (\d+) image", result.output, flags=re.M)) == [0, 18, 18]
    assert ("36 images in 3 groups (gmm; k as given; 1 of them empty: the gmm put no image there, try kmeans or "
            "a smaller --k)") in result.output


@pytest.mark.parametrize("command", ["cluster", "outliers"])
def test_bad_stores(command, tmp_path):
    _one_line_error(run(command, _store(tmp_path / "empty.h5", 0)), "the store holds no rows")
    result = run(command, _store(tmp_path / "partial.h5", 8, pending=2))
    _one_line_error(result, "the store is incomplete (2 planned rows pending); finish it with "
                            "`cvae extract ... --resume` first")
    _one_line_error(run(command, tmp_path / "missing.h5"), "missing.h5")
    _one_line_error(run(command, _store(tmp_path / "s.h5", 8), "-o", tmp_path / "no" / "out.csv"),
                    "folder " + str(tmp_path / "no") + " does not exist")
    result = run(command, _store(tmp_path / "memory.h5", 8), "--sheets", tmp_path / "sheets")
    _one_line_error(result, "to draw contact sheets: source 'generated' is neither")


@pytest.mark.parametrize("args, message", [
    (["--k", 1], "k: expected an integer >= 2 (the number of groups), got 1"),
    (["--k", 0], "k: expected an integer >= 2 (the number of groups), got 0"),
    (["--k", 5], "k: 5 groups need at least 10 rows (2 per group), the store holds 8"),
    (["--k", 9], "k: 9 groups need at least 18 rows (2 per group), the store holds 8"),
    (["--max-k", 1], "k_range: expected 2 <= smallest <= largest, got (2, 1)"),
])
def test_cluster_bad_values(tmp_path, args, message):
    _one_line_error(run("cluster", _store(tmp_path / "s.h5", 8), *args), message)


def test_cluster_too_few_rows_to_choose_k(tmp_path):
    _one_line_error(run("cluster", _store(tmp_path / "s.h5", 3)),
                    "3 rows are too few to choose the number of groups: at least 4 are needed")


@pytest.mark.parametrize("args, message", [
    (["--rate", 0], "rate: expected a number in (0.0, 1.0), got 0.0"),
    (["--rate", 1], "rate: expected a number in (0.0, 1.0), got 1.0"),
    (["--rate", 1.5], "rate: expected a number in (0.0, 1.0), got 1.5"),
    (["--rate", -0.01], "rate: expected a number in (0.0, 1.0), got -0.01"),
    (["--k", 8], "8 row(s) are too few for the k-NN score with k=8: each row needs 8 other rows, so at least 9"),
    (["--k", 0], "k: expected an integer >= 1, got 0"),
    (["--top", 0], "top: expected an integer >= 1, got 0"),
])
def test_outliers_bad_values(tmp_path, args, message):
    _one_line_error(run("outliers", _store(tmp_path / "s.h5", 8), *args), message)


def test_group_store_passes_its_options_and_writes_the_sheets_page(extracted, tmp_path):
    import html

    from cvae_features.groups import group_store

    store = extracted["store"]
    with FeatureStore(store) as fs:
        X = np.asarray(fs.features)
    result = group_store(store, k=3, method="gmm", sheets=tmp_path / "given", per_sheet=4, seed=2, n_exemplars=2,
                         preprocessing="none")
    assert result.store == str(store) and (result.k, result.method, result.seed) == (3, "gmm", 2)
    assert result.chosen_by == "given" and result.preprocessing == "none" and result.n_exemplars == 2
    assert result.frame["exemplar"].sum() == sum(min(2, size) for size in result.sizes) and result.n_rows == 36
    page = html.unescape((tmp_path / "given" / "index.html").read_text())
    assert f"<h1>Groups of {store}</h1>" in page
    assert (f"<p>36 images in 3 groups (gmm, k = 3 as given); images as the model saw them, from "
            f"{extracted['flat'].resolve()}. Written by") in page
    largest = result.sizes[0]  # 4 cells: 2 exemplars, then 2 drawn (fewer when the group is smaller)
    assert f"Group 0: {largest} image(s)" in page
    assert f"then {min(2, largest - 2)} member(s) drawn at random (seed 2)." in page
    assert sorted(result.sheets.files) == [f"group_{c:02d}" for c in range(3) if result.sizes[c]]
    chosen = group_store(store, k_range=(2, 4), sheets=tmp_path / "chosen")
    page = html.unescape((tmp_path / "chosen" / "index.html").read_text())
    assert (f"36 images in {chosen.k} groups (kmeans, k = {chosen.k} chosen by the silhouette over k = 2..4); "
            in page)
    # the defaults: 24 cells, 5 exemplars of the largest group (12 rows or more), seed 0
    assert f"then {min(19, chosen.sizes[0] - 5)} member(s) drawn at random (seed 0)." in page
    plain = group_store(store, k=2)
    assert plain.sheets is None and plain.store == str(store) and plain.method == "kmeans" and plain.seed == 0
    assert list(plain.frame["key"]) == extracted["keys"] and plain.n_rows == X.shape[0]


def test_outlier_store_scores_the_stores_extras_passes_its_options_and_writes_the_sheets_page(extracted, tmp_path):
    import html

    from cvae_features.outliers import outlier_store

    store = extracted["store"]
    result = outlier_store(store, k=2, rate=0.1, top=3, sheets=tmp_path / "sheets", n_neighbours=2)
    assert result.store == str(store) and (result.k, result.rate, len(result.top)) == (2, 0.1, 3)
    assert result.scores == ["knn", "mahalanobis", "recon_error", "neg_elbo"] and result.n_flagged == 4
    assert all(len(v) == 2 for v in result.neighbours.values())
    with FeatureStore(store) as fs:
        np.testing.assert_allclose(result.frame["neg_elbo"], fs.extra("neg_elbo"), rtol=1e-6)
    page = html.unescape((tmp_path / "sheets" / "index.html").read_text())
    assert f"<h1>Outliers of {store}</h1>" in page
    assert ("<p>The 3 most unusual of 36 images by the mean rank of knn, mahalanobis, recon_error, neg_elbo; "
            "4 flagged at rate 0.1. Written by") in page
    assert list(result.sheets.files) == ["outliers_01"]
    plain = outlier_store(_store(tmp_path / "raw.h5", 12))  # no extras: knn and mahalanobis only
    assert plain.scores == ["knn", "mahalanobis"] and plain.sheets is None
    assert (plain.k, plain.rate, len(plain.top), plain.n_flagged) == (5, 0.01, 12, 1)


@pytest.mark.parametrize("module, entry", [("groups", "group_store"), ("outliers", "outlier_store")])
def test_the_store_entry_points_hand_source_and_data_dir_to_the_images_and_name_the_store_in_errors(
        module, entry, extracted, tmp_path, monkeypatch):
    import importlib

    from cvae_features.errors import StoreError

    fn = getattr(importlib.import_module(f"cvae_features.{module}"), entry)
    opened = []
    real_open = StoreImages.open.__func__

    def recording_open(cls, store, *, source=None, data_dir=None):
        opened.append((source, data_dir))
        return real_open(cls, store, source=source, data_dir=data_dir)

    monkeypatch.setattr(StoreImages, "open", classmethod(recording_open))
    result = fn(extracted["store"], sheets=tmp_path / "sheets", source=extracted["flat"], data_dir=tmp_path / "data")
    assert opened == [(extracted["flat"], tmp_path / "data")] and result.sheets is not None
    empty = _store(tmp_path / "empty.h5", 0)
    with pytest.raises(StoreError) as err:
        fn(empty)
    assert str(err.value) == f"store {empty}: the store holds no rows"
