"""Contact sheets (cvae_features/sheets.py): the recorded source, the images read back, the grids and the page."""

import html
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from cvae_features._version import __version__
from cvae_features.data import ArraySource, Preprocess, decode_image
from cvae_features.errors import SourceNotFoundError
from cvae_features.sheets import (PAGE_CSS, Sheet, SheetsResult, StoreImages, find_key, pad_row, recorded_specs,
                                  save_grid, write_sheets)
from cvae_features.store import FeatureStore, StoreWriter

from _images import write_fake_mnist

PRE4 = {"size": 4, "channels": 1, "resize": "crop"}


def test_find_key_is_breadth_first_skips_empty_values_and_takes_the_names_in_order():
    # breadth first: the shallow value wins over a deeper one whichever comes first
    assert find_key({"c": {"spec": "shallow"}, "a": {"b": {"spec": "deep"}}}, ("spec",)) == "shallow"
    assert find_key({"a": {"b": {"spec": "deep"}}, "c": {"spec": "shallow"}}, ("spec",)) == "shallow"
    assert find_key({"spec": "b", "source_spec": "a"}, ("source_spec", "spec")) == "a"
    assert find_key({"source_spec": "", "spec": None, "x": {"source_spec": {}, "y": {"spec": "z"}}},
                    ("source_spec", "spec")) == "z"
    assert find_key({"spec": 0}, ("spec",)) == 0 and find_key({"spec": []}, ("spec",)) == []
    assert find_key({"a": {"b": 1}, "spec": ""}, ("spec",)) is None
    assert find_key("folder /x", ("spec",)) is None and find_key(None, ("spec",)) is None


def test_recorded_specs_exact_first_then_paths_and_built_in_names_parsed_from_descriptions():
    assert recorded_specs({"source_spec": "/a", "source": "/b", "source_description": "/c"}) == ["/a", "/b", "/c"]
    assert recorded_specs({"spec": "/a", "description": "/c"}) == ["/a", "/c"]
    assert recorded_specs({"source_spec": "", "source": "folder /data/my images (1,204 images, 3 classes)"}) == [
        "/data/my images", "folder /data/my images (1,204 images, 3 classes)"]
    assert recorded_specs({"source": "1,000 of manifest /m.csv (3 images)"}) == [
        "/m.csv", "1,000 of manifest /m.csv (3 images)"]
    assert recorded_specs({"source": "Digits:all (1,797 images of 1x8x8)"}) == [
        "Digits:all", "Digits:all (1,797 images of 1x8x8)"]
    assert recorded_specs({"source": "fashion-mnist:test"}) == ["fashion-mnist:test"]
    # the first word ends at any white space (found by the mutation run: a tab kept the rest of the word)
    assert recorded_specs({"source": "digits:test\t(450 images)"}) == ["digits:test", "digits:test\t(450 images)"]
    assert recorded_specs({"source": "cifar10:train\n(50,000 images)"}) == ["cifar10:train",
                                                                           "cifar10:train\n(50,000 images)"]
    assert recorded_specs({"source": "notes:on it (3)"}) == ["notes:on it (3)"]
    # a run's config.json: the source is a dict of spec, path and description
    assert recorded_specs({"data": {"source": {"spec": "", "path": "/p", "description": "d"}}}) == ["/p", "d"]
    assert recorded_specs({"data": {"source": {"spec": " /s ", "path": "/p"}}}) == ["/s"]
    assert recorded_specs({"description": "run notes", "source": {"description": "folder /q (3 images)"}}) == [
        "/q", "folder /q (3 images)", "run notes"]
    # a first word naming a built-in set is tried as it is (open_source says what is wrong with it)
    assert recorded_specs({"source": "mnist:test:x (3 images)"}) == ["mnist:test:x", "mnist:test:x (3 images)"]
    assert recorded_specs({"source_spec": "  /x  ", "source": "   ", "source_description": 5}) == ["/x"]
    assert recorded_specs({"source_spec": "digits:test", "source": "digits:test"}) == ["digits:test"]
    assert recorded_specs({}) == []


def _folder(root, n=3):
    """n gray 6x6 PNGs of values 0, 50, 100... (0.png...) and one file that does not decode (bad.png)."""
    folder = root / "imgs"
    folder.mkdir()
    for i in range(n):
        Image.fromarray(np.full((6, 6), 50 * i, np.uint8), "L").save(folder / f"{i}.png")
    (folder / "bad.png").write_bytes(b"not a png")
    return folder


def _store(path, *, source="", source_spec="", keys=("0.png",), preprocess=PRE4):
    with StoreWriter.create(path, feature_kind="raw", dim=16, preprocess=preprocess, source=source,
                            source_spec=source_spec, plan_keys=list(keys)):
        pass
    return path


def test_store_images_decode_the_keys_with_the_stores_preprocessing_and_say_why_a_key_is_blank(tmp_path):
    folder = _folder(tmp_path)
    path = _store(tmp_path / "s.h5", source_spec=str(folder))
    with FeatureStore(path) as fs:
        images = StoreImages.open(fs)
    assert images.preprocess == Preprocess(4, 1, "crop") and images.source.keys == ["0.png", "1.png", "2.png",
                                                                                     "bad.png"]
    got = images.get(["1.png", "bad.png", "gone.png", "1.png"])
    np.testing.assert_array_equal(got[0], decode_image(folder / "1.png", Preprocess(4, 1)))
    assert got[0].shape == (1, 4, 4) and got[0].dtype == np.uint8 and (got[0] == 50).all()
    assert got[1] is None and got[2] is None and got[3] is got[0]
    assert list(images.missing) == ["bad.png", "gone.png"]
    assert images.missing["gone.png"] == "no longer in the source"
    assert images.missing["bad.png"] == "not an image (cannot identify file)"
    # what was read is kept: files removed since are still shown, a key read now for the first time is not
    (folder / "1.png").unlink()
    (folder / "2.png").unlink()
    again = images.get(["2.png", "1.png", "0.png"])
    assert again[0] is None and again[1] is got[0] and (again[2] == 0).all()
    assert list(images.missing) == ["bad.png", "gone.png", "2.png"] and images.missing["2.png"] == "file not found"
    assert images.get([]) == []


def test_store_images_open_the_given_source_or_the_recorded_ones_in_turn_naming_the_first_failure(tmp_path):
    folder = _folder(tmp_path)
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    (moved / "0.png").unlink()
    # the spec is gone but the description still names the folder
    path = _store(tmp_path / "s.h5", source=f"folder {folder} (4 images, no labels)", source_spec=str(tmp_path / "x"))
    with FeatureStore(path) as fs:
        assert StoreImages.open(fs).source.keys == ["0.png", "1.png", "2.png", "bad.png"]
        assert StoreImages.open(fs, source=moved).source.keys == ["1.png", "2.png", "bad.png"]
        with pytest.raises(SourceNotFoundError) as err:
            StoreImages.open(fs, source=tmp_path / "nowhere")
    assert str(err.value) == (f"cannot open the given source to draw contact sheets: source "
                              f"'{tmp_path / 'nowhere'}' does not exist (expected a folder of images or a .csv "
                              "manifest); pass --source with where the images are now, or leave out --sheets")
    shutil.rmtree(folder)
    with FeatureStore(path) as fs, pytest.raises(SourceNotFoundError) as err:
        StoreImages.open(fs)
    assert str(err.value) == (f"cannot open the source recorded in {path} to draw contact sheets: source "
                              f"'{tmp_path / 'x'}' does not exist (expected a folder of images or a .csv "
                              "manifest); pass --source with where the images are now, or leave out --sheets")
    with FeatureStore(_store(tmp_path / "memory.h5")) as fs, pytest.raises(SourceNotFoundError) as err:
        StoreImages.open(fs)
    assert str(err.value) == (f"store {tmp_path / 'memory.h5'} records no image source to read images back from "
                              "(it was extracted from arrays in memory); pass --source")


def test_store_images_look_for_built_in_data_in_data_dir_and_never_download(tmp_path, monkeypatch):
    for name in ("CVAE_NO_DOWNLOAD", "CVAE_DATA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    written = write_fake_mnist(tmp_path / "mnist", n_train=2, n_test=3)
    path = _store(tmp_path / "s.h5", source_spec="mnist:test", keys=["mnist:test/00000"],
                  preprocess={"size": 28, "channels": 1, "resize": "crop"})
    with FeatureStore(path) as fs:
        images = StoreImages.open(fs, data_dir=tmp_path / "mnist")
        assert len(images.source) == 3
        np.testing.assert_array_equal(images.get([images.source.keys[2]])[0][0], written["test"][0][2])
        with pytest.raises(SourceNotFoundError, match="and downloads are off"):
            StoreImages.open(fs)
    assert not (tmp_path / "cache").exists()


def test_pad_row_fills_blank_cells_up_to_the_width():
    a, b = np.zeros((1, 2, 2)), np.ones((1, 2, 2))
    assert pad_row((a,), 3) == [a, None, None] and pad_row([a, b], 2) == [a, b] and pad_row([], 0) == []
    assert isinstance(pad_row((a, b), 2), list)


def _expected_grid(rows, labels, scale, pad=2):
    """The grid save_grid draws, written out: cells of size*scale with pad pixels between, labels on the left."""
    channels, size = 1, 0
    for row in rows:
        for img in row:
            if img is not None:
                channels, size = img.shape[0], img.shape[-1]
    cell = size * scale
    font = ImageFont.load_default()
    label_w = 0
    if any(labels):
        probe = ImageDraw.Draw(Image.new("L", (1, 1)))
        label_w = max(probe.textbbox((0, 0), s, font=font)[2] for s in labels) + 2 * pad
    ncols = max(len(r) for r in rows)
    canvas = np.full((pad + len(rows) * (cell + pad), label_w + pad + ncols * (cell + pad), channels), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            if img is not None:
                y, x = pad + r * (cell + pad), label_w + pad + c * (cell + pad)
                canvas[y:y + cell, x:x + cell] = np.kron(img.transpose(1, 2, 0), np.ones((scale, scale, 1)))
    image = Image.fromarray(canvas[:, :, 0] if channels == 1 else canvas)
    if label_w:
        draw = ImageDraw.Draw(image)
        for r, text in enumerate(labels):
            draw.text((pad, pad + r * (cell + pad) + cell // 2 - 6), text, fill=0 if channels == 1 else (0, 0, 0),
                      font=font)
    return np.asarray(image), label_w


def test_save_grid_is_its_layout_written_out(tmp_path):
    rng = np.random.default_rng(0)
    gray = [rng.integers(0, 200, (1, 3, 3), dtype=np.uint8) for _ in range(3)]
    rows = [[None, gray[0], gray[1]], [gray[2]]]
    out = save_grid(rows, ["#1", "a longer label"], tmp_path / "g.png", 5)
    assert out == tmp_path / "g.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as im:
        assert im.mode == "L" and im.format == "PNG"
        got = np.asarray(im)
    want, label_w = _expected_grid(rows, ["#1", "a longer label"], 5)
    assert label_w > 20 and got.shape == (2 + 2 * 17, label_w + 2 + 3 * 17)
    np.testing.assert_array_equal(got, want)
    assert (got[:, :label_w] < 128).any()  # the labels are drawn
    # RGB, no labels, a padding of its own
    color = [rng.integers(0, 256, (3, 2, 2), dtype=np.uint8) for _ in range(2)]
    out = save_grid([[color[0]], [None, color[1]]], ["", ""], tmp_path / "c.png", 2, pad=1)
    with Image.open(out) as im:
        assert im.mode == "RGB"
        got = np.asarray(im)
    want, label_w = _expected_grid([[color[0]], [None, color[1]]], ["", ""], 2, pad=1)
    assert label_w == 0 and got.shape == (1 + 2 * 5, 1 + 2 * 5, 3)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got[1:5, 1:5], np.kron(color[0].transpose(1, 2, 0), np.ones((2, 2, 1))))
    # labelled RGB: the labels are black
    out = save_grid([[color[0]]], ["xy"], tmp_path / "l.png", 8)
    with Image.open(out) as im:
        got = np.asarray(im)
    want, label_w = _expected_grid([[color[0]]], ["xy"], 8)
    np.testing.assert_array_equal(got, want)
    assert got.shape[2] == 3 and (got[:, :label_w].max(axis=2) < 128).any()
    # PNG whatever the file's name
    out = save_grid([[small := rng.integers(0, 256, (1, 5, 5), dtype=np.uint8)]], [""], tmp_path / "grid.img", 1)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a cell of odd height smaller than the text: the label starts above the picture, at a whole pixel
    out = save_grid([[small]], ["ab"], tmp_path / "s.png", 1)
    with Image.open(out) as im:
        np.testing.assert_array_equal(np.asarray(im), _expected_grid([[small]], ["ab"], 1)[0])


def test_sheets_result_as_a_dict_of_strings():
    tmp = Path("out")
    res = SheetsResult(out_dir=tmp, index=tmp / "index.html", files={"a": tmp / "a.png"}, skipped=("b",),
                       missing={"k": "why"})
    assert res.to_dict() == {"out_dir": "out", "index": "out/index.html", "files": {"a": "out/a.png"},
                             "skipped": ["b"], "missing": {"k": "why"}}
    assert isinstance(res.to_dict()["skipped"], list)


def _images(size, n=4, keys=None):
    arr = np.arange(n * size * size, dtype=np.uint8).reshape(n, 1, size, size)
    return StoreImages(ArraySource(arr, keys=keys or [f"k{i}" for i in range(n)]), Preprocess(size, 1))


def test_write_sheets_writes_one_png_per_sheet_with_an_image_and_the_page_in_order(tmp_path):
    images = _images(8, keys=["k0", "k1", "k<2>", "k3"])
    sheets = [
        Sheet("first", "Group <0>", "the caption & more", [("row a", ["k0", "k1"]), ("row b", ["k<2>"])],
              listed=[("k0", "note <0>"), ("k1", "")]),
        Sheet("empty", "Nothing", "none here", [("x", ["gone", "also gone"])]),
        Sheet("no_rows", "No rows", "", []),
        Sheet("second", "Group 1", "", [("", ["k3", "gone"])]),
    ]
    out = tmp_path / "deep" / "sheets"
    res = write_sheets(out, sheets, images, title="Title & <more>", intro="Some <words>.")
    assert res.out_dir == out and res.index == out / "index.html"
    assert res.files == {"first": out / "first.png", "second": out / "second.png"}
    assert res.skipped == ["empty", "no_rows"] and res.missing == {"gone": "no longer in the source",
                                                                  "also gone": "no longer in the source"}
    assert sorted(p.name for p in out.iterdir()) == ["first.png", "index.html", "second.png"]
    with Image.open(out / "first.png") as im:
        got = np.asarray(im)
    grid = [images.get(["k0", "k1"]), images.get(["k<2>"]) + [None]]
    want, _ = _expected_grid(grid, ["row a", "row b"], 8)  # 8x8 images scaled 8 times: 64 pixels a side
    np.testing.assert_array_equal(got, want)
    with Image.open(out / "second.png") as im:
        np.testing.assert_array_equal(np.asarray(im), _expected_grid([[images.get(["k3"])[0], None]], [""], 8)[0])
    assert (out / "index.html").read_text(encoding="utf-8") == "\n".join([
        "<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<title>Title &amp; &lt;more&gt;</title>", f"<style>{PAGE_CSS}</style></head><body>",
        "<h1>Title &amp; &lt;more&gt;</h1>",
        f"<p>Some &lt;words&gt;. Written by cvae-features {html.escape(__version__)}.</p>",
        "<h2 id=\"first\">Group &lt;0&gt;</h2>", "<p class=\"caption\">the caption &amp; more</p>",
        "<img src=\"first.png\" alt=\"Group &lt;0&gt;\">",
        "<table><tr><td><code>k0</code></td><td>note &lt;0&gt;</td></tr>"
        "<tr><td><code>k1</code></td><td></td></tr></table>",
        "<h2 id=\"second\">Group 1</h2>", "<p class=\"caption\"></p>", "<img src=\"second.png\" alt=\"Group 1\">",
        "<p class=\"caption\">2 image(s) could not be shown (blank cells), for example <code>gone</code>: "
        "no longer in the source.</p>",
        "</body></html>"]) + "\n"
    assert res.to_dict()["files"] == {"first": str(out / "first.png"), "second": str(out / "second.png")}


@pytest.mark.parametrize("size, scale", [(8, 8), (40, 2), (63, 2), (64, 1), (100, 1)])
def test_write_sheets_scale_images_up_to_at_least_64_pixels(tmp_path, size, scale):
    images = _images(size, n=1)
    res = write_sheets(tmp_path, [Sheet("s", "S", "", [("", ["k0"])])], images, title="t")
    with Image.open(res.files["s"]) as im:
        assert im.size == (2 + size * scale + 2, 2 + size * scale + 2)
    page = res.index.read_text(encoding="utf-8")
    assert "<p>" not in page and "could not be shown" not in page and res.missing == {} and res.skipped == []
    assert "<table>" not in page


def test_the_page_is_utf_8_whatever_the_locale(tmp_path):
    """Python opens text files in the locale's encoding unless told; under LC_ALL=C (no UTF-8 mode) that is ASCII."""
    import os
    import subprocess
    import sys

    # a source of one key in a few lines: importing the data layer (torch) would take seconds
    code = ("import sys, types; import numpy as np; from cvae_features.sheets import Sheet, StoreImages, write_sheets; "
            "src = types.SimpleNamespace(keys=['k'], load=lambda i, pre: np.zeros((1, 4, 4), np.uint8)); "
            "images = StoreImages(src, types.SimpleNamespace(size=4)); "
            "write_sheets(sys.argv[1], [Sheet('s', 'Gr\\u00fcn', '', [('', ['k'])])], images, "
            "title='\\u00dcbersicht \\u2713')")
    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "out" / "index.html").read_bytes().decode("utf-8")
    assert "<title>\u00dcbersicht \u2713</title>" in page and "<h2 id=\"s\">Gr\u00fcn</h2>" in page
    # the same bytes as here (and so that the mutation run, which sees only calls made in this process, runs this)
    images = StoreImages(ArraySource(np.zeros((1, 4, 4), np.uint8), keys=["k"]), Preprocess(4, 1))
    write_sheets(tmp_path / "here", [Sheet("s", "Gr\u00fcn", "", [("", ["k"])])], images, title="\u00dcbersicht \u2713")
    assert (tmp_path / "here" / "index.html").read_bytes() == (tmp_path / "out" / "index.html").read_bytes()
    assert (tmp_path / "here" / "s.png").read_bytes() == (tmp_path / "out" / "s.png").read_bytes()
