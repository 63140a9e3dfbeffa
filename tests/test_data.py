"""Tests for cvae_features.data: decoding real files of every kind, sources, built-ins, batching."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from _images import png_header_only, write_class_folder, write_fake_mnist, write_idx
from cvae_features.data import (BUILTIN_DATASETS, ArraySource, Batch, Preprocess, decode_image, infer_preprocess,
                                iter_batches, load_images, open_source, read_idx)
from cvae_features.data import builtin, preprocess
from cvae_features.errors import ConfigError, CvaeError, DataError, DecodeError, SourceNotFoundError

RGB3 = Preprocess(8, 3, "stretch")


# --- Preprocess --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, word", [
    ({"size": 0, "channels": 1}, "size"), ({"size": 8, "channels": 2}, "channels"),
    ({"size": 8, "channels": 1, "resize": "zoom"}, "resize"), ({"size": True, "channels": 1}, "size")])
def test_preprocess_rejects_bad_values(kwargs, word):
    with pytest.raises(ConfigError, match=word):
        Preprocess(**kwargs)


def test_preprocess_round_trips_through_dict():
    pre = Preprocess(16, 3, "pad")
    assert Preprocess.from_dict(pre.to_dict()) == pre
    assert pre.shape == (3, 16, 16) and pre.mode == "RGB"


def test_resize_policies_on_a_wide_image(image_zoo):
    folder, _ = image_zoo
    path = folder / "big_wide.png"  # 300x120: red bands, green centre 120 wide
    crop = decode_image(path, Preprocess(12, 3, "crop"))
    stretch = decode_image(path, Preprocess(12, 3, "stretch"))
    pad = decode_image(path, Preprocess(10, 3, "pad"))
    for arr, side in ((crop, 12), (stretch, 12), (pad, 10)):
        assert arr.dtype == np.uint8 and arr.shape == (3, side, side)
    # crop keeps the green centre square (the outer columns may blend in a little red, as resize-then-crop does)
    assert (crop[1, :, 1:-1] == 255).all() and (crop[0, :, 1:-1] == 0).all() and (crop[0] < 40).all()
    # stretch squeezes the red bands in: red at the edges, green in the middle
    assert tuple(stretch[:, 6, 0]) == (255, 0, 0) and tuple(stretch[:, 6, 6]) == (0, 255, 0)
    # pad: 300x120 -> 10x4 centred, 3 black rows above and below
    assert (pad[:, :3] == 0).all() and (pad[:, 7:] == 0).all()
    assert tuple(pad[:, 5, 0]) == (255, 0, 0) and tuple(pad[:, 5, 5]) == (0, 255, 0)


def test_tiny_image_is_upscaled_to_the_requested_shape(image_zoo):
    folder, _ = image_zoo
    for resize in ("crop", "stretch", "pad"):
        arr = decode_image(folder / "tiny.PNG", Preprocess(8, 1, resize))
        assert arr.shape == (1, 8, 8) and arr.dtype == np.uint8
    gray_of_blue = (0 * 19595 + 0 * 38470 + 255 * 7471 + 0x8000) >> 16
    assert (decode_image(folder / "tiny.PNG", Preprocess(8, 1, "stretch")) == gray_of_blue).all()


# --- decoding every kind of file --------------------------------------------------------------------

def test_every_good_file_decodes_in_both_channel_counts(image_zoo):
    folder, zoo = image_zoo
    assert len(zoo["good"]) >= 15
    for name in zoo["good"]:
        for pre in (Preprocess(8, 1), Preprocess(8, 3), Preprocess(5, 3, "pad")):
            arr = decode_image(folder / name, pre)
            assert arr.shape == pre.shape and arr.dtype == np.uint8, name
            assert arr.flags["C_CONTIGUOUS"]


def test_modes_are_converted_with_the_documented_policies(image_zoo):
    folder, _ = image_zoo

    def px(name, pre=RGB3):
        return decode_image(folder / name, pre)

    rgba = px("rgba.png", Preprocess(12, 3))  # left opaque white, right transparent: composited on black
    assert (rgba[:, :, :6] == 255).all() and (rgba[:, :, 6:] == 0).all()
    la = px("la.png", Preprocess(12, 1))
    assert (la[0, :6] == 200).all() and (la[0, 6:] == 0).all()
    pal = px("palette.png", Preprocess(10, 3))  # transparent green index -> black, not green
    assert (pal[:, :5] == np.array([255, 0, 0])[:, None, None]).all() and (pal[:, 5:] == 0).all()
    gray16 = px("gray16.png", Preprocess(3, 1))  # 0, 32896, 65535 -> 0, 128, 255
    assert gray16[0, 0].tolist() == [0, 128, 255]
    assert (px("bilevel.png", Preprocess(8, 1)) == 255).all()
    cmyk = px("cmyk.jpg").astype(int)  # CMYK (0, 255, 255, 0) is red
    assert (cmyk[0] > 240).all() and (cmyk[1:] < 15).all()
    assert np.abs(px("gray.jpg", Preprocess(8, 1)).astype(int) - 90).max() <= 1
    assert (px("rgb.bmp") == np.array([0, 255, 0])[:, None, None]).all()
    assert (px("rgb.tiff") == np.array([0, 0, 255])[:, None, None]).all()
    assert (px("frames.tif", Preprocess(8, 1)) == 50).all()  # first frame only
    assert (px("rgb.webp") == np.array([255, 0, 0])[:, None, None]).all()
    assert (px("animated.gif") == np.array([255, 0, 0])[:, None, None]).all()  # first frame is red


def test_exif_orientation_is_applied(image_zoo):
    folder, _ = image_zoo
    # Stored 40x20 left red / right blue with orientation 6: displayed 20x40, red on top, blue below.
    arr = decode_image(folder / "exif_rotated.jpg", Preprocess(8, 3, "stretch")).astype(int)
    assert arr[0, 1, 1] > 200 and arr[2, 1, 1] < 40  # top-left red
    assert arr[0, 1, 6] > 200 and arr[2, 1, 6] < 40  # top-right red too: the image was rotated
    assert arr[2, 6, 1] > 200 and arr[0, 6, 1] < 40  # bottom blue
    padded = decode_image(folder / "exif_rotated.jpg", Preprocess(8, 3, "pad"))
    assert (padded[:, :, :2] == 0).all() and (padded[:, :, 6:] == 0).all()  # portrait: black side bands


def test_every_bad_file_raises_decode_error_with_a_short_reason(image_zoo):
    folder, zoo = image_zoo
    assert set(zoo["bad"]) == {"corrupt.png", "truncated.jpg", "empty.png", "notes.png", "bomb.png"}
    for name, reason in zoo["bad"].items():
        with pytest.raises(DecodeError) as info:
            decode_image(folder / name, RGB3)
        assert reason in str(info.value), (name, str(info.value))
        assert len(str(info.value)) < 100 and "\n" not in str(info.value)
    with pytest.raises(DecodeError, match="^decompression bomb: 200000000 pixels > limit 89478485$"):
        decode_image(folder / "bomb.png", RGB3)
    with pytest.raises(DecodeError, match="^file not found$"):
        decode_image(folder / "missing.png", RGB3)
    with pytest.raises(DecodeError, match="is a directory"):
        decode_image(folder, RGB3)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file_is_permission_denied(image_zoo):
    folder, _ = image_zoo
    path = folder / "rgb.png"
    path.chmod(0)
    try:
        with pytest.raises(DecodeError, match="permission denied"):
            decode_image(path, RGB3)
    finally:
        path.chmod(0o644)


def test_images_between_one_and_two_times_the_pixel_limit_are_refused_too(tmp_path, monkeypatch):
    # Pillow only *warns* between 1x and 2x MAX_IMAGE_PIXELS; a small limit lets a 40x40 file land there.
    Image.new("L", (40, 40), 7).save(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DecodeError, match="^decompression bomb: 1600 pixels > limit 1000$"):
        decode_image(tmp_path / "a.png", RGB3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    assert (decode_image(tmp_path / "a.png", Preprocess(8, 1)) == 7).all()


def _write_png_variants(folder):
    """PNGs beyond the zoo that probe the short PNG path; {name: whether the short path should take it}."""
    rng = np.random.default_rng(1)
    noise = lambda *shape: rng.integers(0, 256, shape, dtype=np.uint8)  # noqa: E731
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "an ancillary text chunk is ignored")
    exif = Image.Exif()
    exif[0x0112] = 6
    variants = {
        "gray28.png": (Image.fromarray(noise(28, 28)), {}, True),
        "rgb_wide.png": (Image.fromarray(noise(13, 20, 3)), {}, True),
        "rgba_noise.png": (Image.fromarray(noise(9, 11, 4), "RGBA"), {}, True),
        "la_noise.png": (Image.fromarray(noise(10, 10, 2), "LA"), {}, True),
        "text_chunk.png": (Image.fromarray(noise(8, 8)), {"pnginfo": info}, True),
        "many_idat.png": (Image.fromarray(noise(300, 300, 3)), {}, True),  # incompressible: several IDAT chunks
        "gray_trns.png": (Image.fromarray(noise(8, 8)), {"transparency": 7}, False),
        "rgb_trns.png": (Image.fromarray(noise(8, 8, 3)), {"transparency": (1, 2, 3)}, False),
        "exif.png": (Image.fromarray(noise(10, 6, 3)), {"exif": exif}, False),
        "gray16_noise.png": (Image.fromarray(rng.integers(0, 65536, (8, 8)).astype(np.uint16)), {}, False),
        "palette_plain.png": (Image.fromarray(noise(8, 8, 3)).convert("P"), {}, False),
    }
    expected = {}
    for name, (image, options, fast) in variants.items():
        image.save(folder / name, **options)
        expected[name] = fast
    data = (folder / "text_chunk.png").read_bytes()
    at = data.index(b"tEXt") + 6  # a broken checksum in an ancillary chunk: Pillow's reader refuses it
    (folder / "bad_text_crc.png").write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1:])
    expected["bad_text_crc.png"] = False
    return expected


def test_short_png_path_gives_exactly_the_pillow_result(image_zoo, monkeypatch):
    folder, zoo = image_zoo
    variants = _write_png_variants(folder)
    names = sorted(zoo["good"]) + sorted(zoo["bad"]) + sorted(variants)
    pres = (Preprocess(28, 1), Preprocess(8, 3, "pad"), Preprocess(12, 1, "stretch"), Preprocess(16, 3))

    def decode_all():
        out = {}
        for name in names:
            for pre in pres:
                try:
                    out[name, pre] = decode_image(folder / name, pre)
                except DecodeError as err:
                    out[name, pre] = str(err)
        return out

    fast = decode_all()
    monkeypatch.setattr(preprocess, "_open_png_fast", lambda data: None)  # everything through Image.open
    slow = decode_all()
    for key, value in slow.items():
        if isinstance(value, str):
            assert fast[key] == value, key
        else:
            assert isinstance(fast[key], np.ndarray) and fast[key].dtype == np.uint8, key
            assert np.array_equal(fast[key], value), key
    monkeypatch.undo()
    took = {name for name in names if name.lower().endswith(".png")
            and preprocess._open_png_fast((folder / name).read_bytes()) is not None}
    assert took == {"rgb.png", "rgba.png", "la.png", "tiny.PNG", "big_wide.png"} | \
        {name for name, fast in variants.items() if fast}
    assert isinstance(slow["exif.png", pres[0]], np.ndarray)


def test_decode_error_is_also_a_value_error():
    assert issubclass(DecodeError, ValueError) and issubclass(DecodeError, CvaeError)


# --- folders -----------------------------------------------------------------------------------------

def test_flat_folder_has_no_labels_and_sorted_keys(image_zoo):
    folder, zoo = image_zoo
    src = open_source(folder)
    expected = sorted(list(zoo["good"]) + list(zoo["bad"]))  # readme.txt is not an image
    assert src.keys == expected
    assert src.labels.dtype == np.int64 and (src.labels == -1).all() and not src.has_labels
    assert src.label_names == [] and src.native_size is None and src.native_channels is None
    assert len(src) == len(expected) and "no labels" in src.description


def test_class_subfolders_give_labels(tmp_path):
    folder = tmp_path / "data"
    written = write_class_folder(folder, classes=("zebra", "apple", "mango"), per_class=3)
    (folder / "apple" / "nested").mkdir()
    Image.new("L", (12, 12)).save(folder / "apple" / "nested" / "deep.JPG")
    (folder / "empty_class").mkdir()  # holds no image: not a class
    (folder / ".hidden").mkdir()
    Image.new("L", (12, 12)).save(folder / ".hidden" / "x.png")
    (folder / "zebra" / ".DS_Store").write_bytes(b"junk")
    (folder / "README.md").write_text("a non-image file beside the class folders is ignored")
    src = open_source(str(folder))
    assert src.label_names == ["apple", "mango", "zebra"]
    assert src.keys == sorted(list(written) + ["apple/nested/deep.JPG"])
    for key, label in zip(src.keys, src.labels):
        assert src.label_names[label] == key.split("/")[0]
    assert np.bincount(src.labels).tolist() == [4, 3, 3]
    assert src.has_labels and "3 classes" in src.description
    assert Path(src.paths[0]).is_file()


def test_one_stray_root_image_keeps_the_class_labels(class_folder):
    # Images beside class folders: the classes keep their labels, the root images are unlabelled rows.
    folder, written = class_folder
    Image.new("L", (12, 12)).save(folder / "loose.png")
    src = open_source(folder)
    assert src.keys == sorted(list(written) + ["loose.png"])
    assert src.label_names == ["circle", "square"]
    assert dict(zip(src.keys, src.labels.tolist())) == {**written, "loose.png": -1}
    assert src.description.endswith("(9 images, 2 classes, 1 unlabelled image at the root)")


def test_folder_with_images_only_at_the_root_is_flat(tmp_path):
    # Every image directly in the root (a sub-folder without images does not count): flat, no labels.
    folder = tmp_path / "flat"
    folder.mkdir()
    for name in ("b.png", "a.png"):
        Image.new("L", (4, 4)).save(folder / name)
    (folder / "notes").mkdir()
    (folder / "notes" / "x.txt").write_text("no image here")
    src = open_source(folder)
    assert src.keys == ["a.png", "b.png"] and src.labels.tolist() == [-1, -1] and "no labels" in src.description


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(SourceNotFoundError, match="nowhere/images"):
        open_source(tmp_path / "nowhere" / "images")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty.*no image files.*\.png, \.jpg"):
        open_source(tmp_path / "empty")
    (tmp_path / "texts" / "sub").mkdir(parents=True)
    (tmp_path / "texts" / "a.txt").write_text("x")
    (tmp_path / "texts" / "sub" / "b.csv").write_text("x")
    with pytest.raises(DataError, match="texts"):
        open_source(tmp_path / "texts")


def test_open_source_name_errors(tmp_path):
    with pytest.raises(ConfigError, match="digits, fashion-mnist, mnist, cifar10"):
        open_source("imagenet")
    with pytest.raises(ConfigError, match="all, train, test"):
        open_source("digits:validation")
    with pytest.raises(ConfigError, match="train, test"):
        open_source("fashion-mnist:all")
    with pytest.raises(SourceNotFoundError, match="missing.csv"):
        open_source(str(tmp_path / "missing.csv"))
    Image.new("L", (4, 4)).save(tmp_path / "one.png")
    with pytest.raises(DataError, match="one.png"):
        open_source(tmp_path / "one.png")
    assert BUILTIN_DATASETS == ("digits", "fashion-mnist", "mnist", "cifar10")


# --- manifests ---------------------------------------------------------------------------------------

def test_manifest_with_header_and_missing_file(class_folder):
    folder, written = class_folder
    rows = sorted(written)
    csv = folder / "list.csv"
    csv.write_text("path,label\n" + "".join(f"{p},{p.split('/')[0]}\n" for p in rows[:3])
                   + "gone/missing.png,square\n" + f"{rows[-1]},\n")
    src = open_source(csv)
    assert src.keys == rows[:3] + ["gone/missing.png", rows[-1]]  # manifest order
    assert src.label_names == ["circle", "square"]
    assert src.labels.tolist() == [0, 0, 0, 1, -1]
    with pytest.raises(DecodeError, match="^file not found$"):
        src.load(3, Preprocess(8, 1))
    images, idx, skipped = load_images(src, Preprocess(8, 1), workers=0)
    assert idx.tolist() == [0, 1, 2, 4] and skipped == [(3, "file not found")]
    assert images.shape == (4, 1, 8, 8)


def test_manifest_without_header_numeric_labels_and_absolute_paths(tmp_path, class_folder):
    folder, written = class_folder
    rows = sorted(written)
    csv = tmp_path / "elsewhere" / "m.csv"
    csv.parent.mkdir()
    csv.write_text(f"{folder / rows[0]},10\n{folder / rows[1]},2\n\n{folder / rows[2]}\n")
    src = open_source(str(csv))
    assert src.label_names == ["2", "10"]  # integers sort as numbers
    assert src.labels.tolist() == [1, 0, -1]
    assert decode_image(src.paths[0], Preprocess(12, 1)).shape == (1, 12, 12)
    plain = tmp_path / "plain.csv"
    plain.write_text("".join(f"../{folder.name}/{p}\n" for p in rows[:2]).replace("../", f"{folder.parent.name}/../"))
    src = open_source(plain)
    assert len(src) == 2 and not src.has_labels and src.label_names == []
    assert src.load(0, Preprocess(12, 1)).shape == (1, 12, 12)


def test_bad_manifests(tmp_path):
    (tmp_path / "empty.csv").write_text("path,label\n")
    with pytest.raises(DataError, match="lists no images"):
        open_source(tmp_path / "empty.csv")
    (tmp_path / "wide.csv").write_text("a.png,x,y\n")
    with pytest.raises(DataError, match="line 1.*3 columns"):
        open_source(tmp_path / "wide.csv")
    (tmp_path / "dup.csv").write_text("a.png,x\n./a.png,y\n")
    with pytest.raises(DataError, match="line 2.*line 1"):
        open_source(tmp_path / "dup.csv")


# --- built-ins -----------------------------------------------------------------------------------------

def test_digits_splits():
    full, train, test = open_source("digits"), open_source("digits:train"), open_source("digits:test")
    assert open_source("digits:all").keys == full.keys
    assert (len(full), len(train), len(test)) == (1797, 1347, 450)
    assert set(train.keys).isdisjoint(test.keys)
    rows = lambda s: {k.split("/")[1] for k in s.keys}  # noqa: E731
    assert rows(train) | rows(test) == rows(full) and not rows(train) & rows(test)
    assert train.keys[0].startswith("digits:train/") and full.keys[12] == "digits:all/00012"
    # stratified: every class keeps about 75 % of its rows in train
    counts, tr = np.bincount(full.labels), np.bincount(train.labels)
    assert np.abs(tr - 0.75 * counts).max() <= 1
    assert full.images.dtype == np.uint8 and full.images.shape == (1797, 1, 8, 8) and full.images.max() == 255
    assert full.native_size == 8 and full.native_channels == 1 and full.label_names == [str(i) for i in range(10)]
    assert open_source("digits:train").keys == train.keys  # deterministic


def test_fashion_mnist_from_idx_files(fake_fashion_dir, monkeypatch):
    folder, written = fake_fashion_dir
    src = open_source("fashion-mnist:test", data_dir=folder, download=False)
    images, labels = written["test"]
    assert len(src) == 10 and src.images.shape == (10, 1, 28, 28)
    assert np.array_equal(src.images[:, 0], images) and np.array_equal(src.labels, labels)
    assert src.label_names[0] == "T-shirt/top" and src.label_names[9] == "Ankle boot"
    assert src.keys[3] == "fashion-mnist:test/00003" and (src.native_size, src.native_channels) == (28, 1)
    # default split is train; $CVAE_DATA/fashion-mnist is searched too, uncompressed files work as well
    root = folder.parent / "cvae_data"
    write_fake_mnist(root / "fashion-mnist", n_train=7, n_test=3, gz=False, seed=1)
    monkeypatch.setenv("CVAE_DATA", str(root))
    train = open_source("fashion-mnist", download=False)
    assert len(train) == 7 and train.keys[0] == "fashion-mnist:train/00000"


def test_missing_data_set_gives_one_line_with_the_way_out(tmp_path, monkeypatch):
    monkeypatch.setattr(builtin, "SYSTEM_DATA_DIR", str(tmp_path / "system"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CVAE_DATA", raising=False)
    with pytest.raises(SourceNotFoundError) as info:
        open_source("fashion-mnist:test", download=False)
    message = str(info.value)
    assert "\n" not in message and "t10k-images-idx3-ubyte" in message
    assert "apt-get install dataset-fashion-mnist" in message and "CVAE_DATA" in message
    assert str(tmp_path / "system" / "fashion-mnist") in message and "downloads are off" in message
    with pytest.raises(SourceNotFoundError, match="mnist:train.*CVAE_DATA/mnist"):
        open_source("mnist", download=False)


def test_bad_idx_files_are_clear_errors(tmp_path):
    write_idx(tmp_path / "ok", np.arange(6, dtype=np.uint8).reshape(2, 3))
    assert read_idx(tmp_path / "ok").tolist() == [[0, 1, 2], [3, 4, 5]]
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x03" + b"\x00" * 20)
    with pytest.raises(DataError, match="bad magic number 0x01020803"):
        read_idx(tmp_path / "bad")
    data = (tmp_path / "ok").read_bytes()
    (tmp_path / "short").write_bytes(data[:-2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(tmp_path / "short")


def test_cifar10_batches_are_read_without_trusting_the_pickle(tmp_path, monkeypatch):
    monkeypatch.setattr(builtin, "SYSTEM_DATA_DIR", str(tmp_path / "system"))
    folder = tmp_path / "c" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ["test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 9]}
        (folder / name).write_bytes(pickle.dumps(batch))
    train = open_source("cifar10", data_dir=tmp_path / "c", download=False)
    assert train.images.shape == (20, 3, 32, 32) and train.labels.tolist()[:4] == [0, 1, 2, 9]
    assert train.label_names[1] == "automobile" and infer_preprocess(train) == Preprocess(32, 3)

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    (folder / "test_batch").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(DataError, match="refusing to load"):
        open_source("cifar10:test", data_dir=tmp_path / "c", download=False)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_test_split():
    src = open_source("fashion-mnist:test", download=False)
    assert len(src) == 10000 and src.images.shape == (10000, 1, 28, 28)
    assert np.bincount(src.labels).tolist() == [1000] * 10


# --- batching -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [0, 2])
def test_iter_batches_order_and_skipped(image_zoo, workers):
    folder, zoo = image_zoo
    src = open_source(folder)
    pre = Preprocess(8, 3)
    batches = list(iter_batches(src, pre, batch_size=4, workers=workers))
    assert len(batches) == -(-len(src) // 4) and all(isinstance(b, Batch) for b in batches)
    for k, b in enumerate(batches):
        chunk = set(range(4 * k, min(4 * k + 4, len(src))))
        assert set(b.indices.tolist()) | {r for r, _ in b.skipped} == chunk
        assert b.images.dtype == torch.uint8 and b.images.shape == (len(b.indices), 3, 8, 8)
    rows = np.concatenate([b.indices for b in batches])
    assert rows.dtype == np.int64 and (np.diff(rows) > 0).all()
    skipped = dict(s for b in batches for s in b.skipped)
    assert {src.keys[r] for r in skipped} == set(zoo["bad"])
    for row, reason in skipped.items():
        assert zoo["bad"][src.keys[row]] in reason
    # images match a direct decode of the same rows
    first = batches[0]
    assert np.array_equal(first.images[0].numpy(), decode_image(src.paths[first.indices[0]], pre))


def test_iter_batches_workers_agree_and_follow_requested_indices(class_folder):
    folder, _ = class_folder
    src = open_source(folder)
    pre = Preprocess(6, 1, "pad")
    order = [7, 0, 3, 5]
    a = list(iter_batches(src, pre, batch_size=3, workers=0, indices=order))
    b = list(iter_batches(src, pre, batch_size=3, workers=2, indices=order))
    assert [x.indices.tolist() for x in a] == [[7, 0, 3], [5]] == [x.indices.tolist() for x in b]
    assert all(torch.equal(x.images, y.images) for x, y in zip(a, b))
    assert list(iter_batches(src, pre, indices=[])) == []
    with pytest.raises(ConfigError, match="row 8 is out of range"):
        list(iter_batches(src, pre, indices=[8]))
    with pytest.raises(ConfigError, match="batch_size"):
        list(iter_batches(src, pre, batch_size=0))
    with pytest.raises(ConfigError, match="workers"):
        list(iter_batches(src, pre, workers=-1))


def _pixel_sum_and_pid(images):
    return images.sum(dim=(1, 2, 3)).numpy(), os.getpid()


@pytest.mark.parametrize("workers", [0, 2])
def test_iter_batches_transform_runs_where_the_batch_was_decoded(image_zoo, workers):
    folder, zoo = image_zoo
    src = open_source(folder)
    pre = Preprocess(8, 1)
    batches = list(iter_batches(src, pre, batch_size=4, workers=workers, transform=_pixel_sum_and_pid))
    for b in batches:  # chunks whose files all failed get an output too (of an empty batch)
        sums, pid = b.output
        assert np.array_equal(sums, b.images.sum(dim=(1, 2, 3)).numpy()) and len(sums) == len(b)
        assert (pid == os.getpid()) == (workers == 0)
    assert sum(len(b.skipped) for b in batches) == len(zoo["bad"])
    assert all(b.output is None for b in iter_batches(src, pre, batch_size=4, workers=workers))
    arrays = list(iter_batches(open_source("digits:test"), pre, batch_size=200, transform=_pixel_sum_and_pid))
    assert [len(b.output[0]) for b in arrays] == [200, 200, 50] and arrays[0].output[1] == os.getpid()


def test_array_source_fast_path_matches_per_row_load():
    src = open_source("digits:test")
    for pre in (Preprocess(8, 1), Preprocess(16, 3, "crop"), Preprocess(12, 1, "pad")):
        batches = list(iter_batches(src, pre, batch_size=100))
        assert [len(b) for b in batches] == [100, 100, 100, 100, 50]
        assert np.concatenate([b.indices for b in batches]).tolist() == list(range(450))
        assert batches[1].images.shape == (100, *pre.shape) and batches[1].images.dtype == torch.uint8
        assert np.array_equal(batches[1].images[5].numpy(), src.load(105, pre))
    same = next(iter_batches(src, Preprocess(8, 1), batch_size=10))
    assert np.array_equal(same.images.numpy(), src.images[:10])
    same.images[0] = 0  # a batch never aliases the (read-only) source array
    assert src.images[0].max() > 0


def test_array_resize_agrees_with_pillow():
    rng = np.random.default_rng(0)
    wide = np.repeat(np.repeat(rng.integers(0, 256, (1, 3, 6, 10), dtype=np.uint8), 4, 2), 4, 3)  # 24x40 blocks
    src = ArraySource(wide)
    assert src.native_size is None and src.native_channels == 3
    for pre in (Preprocess(12, 3, "crop"), Preprocess(12, 1, "stretch"), Preprocess(10, 3, "pad")):
        from_array = src.load(0, pre).astype(int)
        from_pil = pre(Image.fromarray(wide[0].transpose(1, 2, 0))).astype(int)
        assert from_array.shape == from_pil.shape
        assert np.abs(from_array - from_pil).mean() < 6, pre


def test_array_source_validation():
    assert ArraySource(np.zeros((2, 5, 5), np.float32)).images.shape == (2, 1, 5, 5)
    assert ArraySource(np.ones((1, 1, 2, 2))).images.max() == 255
    with pytest.raises(DataError, match="shape"):
        ArraySource(np.zeros((2, 4, 5, 5), np.uint8))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        ArraySource(np.full((1, 2, 2), 3.0))
    with pytest.raises(DataError, match="one per image"):
        ArraySource(np.zeros((2, 2, 2), np.uint8), labels=[0])
    sub = ArraySource(np.arange(3 * 4, dtype=np.uint8).reshape(3, 2, 2), labels=[0, 1, 1]).subset([2, 0])
    assert sub.keys == ["array/00002", "array/00000"] and sub.labels.tolist() == [1, 0]
    assert sub.label_names == ["0", "1"]


def test_load_images_and_its_errors(image_zoo, class_folder):
    folder, zoo = image_zoo
    src = open_source(folder)
    images, idx, skipped = load_images(src, Preprocess(8, 3), workers=0, progress=True)
    assert images.shape == (len(zoo["good"]), 3, 8, 8) and images.dtype == torch.uint8
    assert sorted(src.keys[i] for i in idx) == sorted(zoo["good"])
    assert {src.keys[r] for r, _ in skipped} == set(zoo["bad"])
    only_bad = src.subset([src.keys.index(n) for n in sorted(zoo["bad"])])
    assert only_bad.keys == sorted(zoo["bad"])
    with pytest.raises(DataError, match="none of the 5 images"):
        load_images(only_bad, Preprocess(8, 3), workers=0)
    digits = open_source("digits:test")
    x, idx, skipped = load_images(digits, Preprocess(8, 1), indices=np.arange(10, 20))
    assert x.shape == (10, 1, 8, 8) and idx.tolist() == list(range(10, 20)) and skipped == []
    assert np.array_equal(x.numpy(), digits.images[10:20])


# --- inferring the preprocessing ----------------------------------------------------------------------

def test_infer_preprocess(tmp_path, image_zoo):
    assert infer_preprocess(open_source("digits")) == Preprocess(8, 1)
    assert infer_preprocess(open_source("digits"), image_size=16, channels=3) == Preprocess(16, 3)
    gray = tmp_path / "gray"
    write_class_folder(gray, per_class=3, size=(20, 30), mode="L")
    assert infer_preprocess(open_source(gray)) == Preprocess(20, 1)
    colour = tmp_path / "colour"
    write_class_folder(colour, per_class=3, size=(10, 10), mode="RGB")
    assert infer_preprocess(open_source(colour)) == Preprocess(10, 3)
    assert infer_preprocess(open_source(colour), channels=1, resize="pad") == Preprocess(10, 1, "pad")
    big = tmp_path / "big"
    write_class_folder(big, per_class=2, size=(200, 100), mode="L")
    assert infer_preprocess(open_source(big)).size == 64  # clamped
    # RGB files whose channels are equal count as gray
    rgb_gray = tmp_path / "rgbgray"
    rgb_gray.mkdir()
    Image.new("RGB", (9, 9), (80, 80, 80)).save(rgb_gray / "a.png")
    assert infer_preprocess(open_source(rgb_gray)) == Preprocess(9, 1)
    folder, _ = image_zoo  # unreadable files are left out of the sample; there are colour images
    assert infer_preprocess(open_source(folder)).channels == 3
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match="none of 1 sampled images"):
        infer_preprocess(open_source(bad))
    with pytest.raises(ConfigError, match="channels"):
        infer_preprocess(open_source("digits"), channels=4)


def test_tiny_png_header_helper_claims_its_size(tmp_path):
    (tmp_path / "h.png").write_bytes(png_header_only(30, 20))
    with Image.open(tmp_path / "h.png") as im:
        assert im.size == (30, 20)
