"""The image cache training reads from: same images as decoding into memory, resumable, rebuilt when the files
change, and training from it gives the weights training from memory gives."""

import gc
import hashlib
import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from cvae_features.data import Preprocess, load_images, open_source
from cvae_features.data import cache as cache_module
from cvae_features.data.cache import CachedImages, build_cache, cache_identity, open_cache, remove_cache
from cvae_features.errors import DataError
from cvae_features.training import train


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from sklearn.datasets import load_digits

    digits = (load_digits().images[:40] * 16).clip(0, 255).astype(np.uint8)
    root = tmp_path_factory.mktemp("cache") / "images"
    for i, image in enumerate(digits):
        (root / str(i % 3)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / str(i % 3) / f"d{i:02d}.png")
    (root / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


PRE = Preprocess(8, 1)


def test_the_cache_holds_what_decoding_into_memory_gives(tmp_path, folder):
    src = open_source(folder)
    images, kept, bad = load_images(src, PRE, workers=0)
    cache = build_cache(src, PRE, tmp_path / "c", workers=0)
    assert cache.kept.tolist() == list(kept)
    assert cache.skipped == [(int(r), str(reason)) for r, reason in bad] and len(bad) == 1
    np.testing.assert_array_equal(cache.images[:].numpy(), np.asarray(images))
    # the content fingerprint is the in-memory path's (so runs keep resuming across the change)
    assert cache.fingerprint == hashlib.blake2b(np.ascontiguousarray(images).data, digest_size=8).hexdigest()
    # random access in any order, and views of views
    order = torch.tensor([5, 0, 39, 5, 17])
    np.testing.assert_array_equal(cache.images.index_select(0, order).numpy(), np.asarray(images)[order.numpy()])
    view = cache.images[torch.tensor([3, 1, 2])]
    assert isinstance(view, CachedImages) and len(view) == 3
    np.testing.assert_array_equal(view[1:3].numpy(), np.asarray(images)[[1, 2]])


def test_an_interrupted_build_finishes_with_the_pending_rows_only(tmp_path, folder, monkeypatch):
    src = open_source(folder)
    real = cache_module.iter_batches
    asked = []

    def cut_after_two(*args, **kw):
        asked.append(list(kw["indices"]))
        for i, batch in enumerate(real(*args, **kw)):
            if i == 2 and len(asked) == 1:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(cache_module, "iter_batches", cut_after_two)
    with pytest.raises(KeyboardInterrupt):
        build_cache(src, PRE, tmp_path / "c", workers=0, batch_size=8)
    with pytest.raises(DataError, match="holds no complete image cache"):
        open_cache(tmp_path / "c")
    cache = build_cache(src, PRE, tmp_path / "c", workers=0, batch_size=8)
    assert asked[1] == list(range(16, len(src)))  # two batches of 8 were committed, the rest was pending
    fresh = build_cache(src, PRE, tmp_path / "fresh", workers=0)
    np.testing.assert_array_equal(cache.images[:].numpy(), fresh.images[:].numpy())
    assert cache.fingerprint == fresh.fingerprint and cache.skipped == fresh.skipped


def test_a_cache_of_other_files_or_preprocessing_is_rebuilt_never_mixed(tmp_path, folder):
    import shutil

    root = tmp_path / "images"
    shutil.copytree(folder, root)
    first = build_cache(open_source(root), PRE, tmp_path / "c", workers=0)
    path = root / "0" / "d00.png"
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(path)
    os.utime(path, ns=(1, 1))  # another size and modification time
    second = build_cache(open_source(root), PRE, tmp_path / "c", workers=0)
    assert second.meta["identity"] != first.meta["identity"]
    assert (second.images[0:1].numpy() == 200).all() and second.fingerprint != first.fingerprint
    third = build_cache(open_source(root), Preprocess(8, 1, "pad"), tmp_path / "c", workers=0)
    assert third.meta["identity"] != second.meta["identity"] and third.meta["preprocess"]["resize"] == "pad"


def test_training_from_the_cache_equals_training_from_memory(tmp_path, folder):
    src = open_source(folder)
    images, _, _ = load_images(src, PRE, workers=0)
    config = {"epochs": 2, "batch_size": 8, "workers": 0, "val_fraction": 0.2}
    from_cache = train(folder, tmp_path / "a", train_config={**config, "keep_cache": True}, progress=False)
    in_memory = train(np.asarray(images), tmp_path / "b", train_config=config, progress=False)
    assert from_cache.model.fingerprint() == in_memory.model.fingerprint()
    assert [r["train_loss"] for r in from_cache.history] == [r["train_loss"] for r in in_memory.history]
    assert (tmp_path / "a" / "cache" / "images.u8").is_file()  # kept as asked
    again = train(folder, tmp_path / "c", train_config={**config, "cache_dir": str(tmp_path / "elsewhere")},
                  progress=False)
    assert again.model.fingerprint() == in_memory.model.fingerprint()
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "c" / "cache").exists()  # removed when done


def test_an_interrupted_run_keeps_its_cache_and_resume_reuses_it(tmp_path, folder, monkeypatch):
    config = {"epochs": 2, "batch_size": 8, "workers": 0}

    def stop(epoch, batch_index, logs):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(folder, tmp_path / "run", train_config=config, callback=stop, progress=False)
    assert open_cache(tmp_path / "run" / "cache").kept.size == 40  # complete, kept for the resume
    decoded = []
    real = cache_module.iter_batches
    monkeypatch.setattr(cache_module, "iter_batches", lambda *a, **kw: decoded.append(1) or real(*a, **kw))
    resumed = train(folder, tmp_path / "run", train_config=config, resume=True, progress=False)
    assert decoded == []  # nothing decoded again: the resume read the cache
    whole = train(folder, tmp_path / "whole", train_config=config, progress=False)
    assert resumed.model.fingerprint() == whole.model.fingerprint()
    assert not (tmp_path / "run" / "cache").exists()  # removed once the run finished


def test_cli_train_cache_options(tmp_path, folder):
    from click.testing import CliRunner

    from cvae_cli.main import cli

    args = ["train", str(folder), "--epochs", "1", "--batch-size", "8", "--workers", "0", "--no-progress"]
    result = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "a"), "--cache-dir", str(tmp_path / "c"),
                                      "--keep-cache"])
    assert result.exit_code == 0, result.output
    assert open_cache(tmp_path / "c").kept.size == 40 and not (tmp_path / "a" / "cache").exists()
    result = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "b" / "cache").exists()  # the default cache went with the finished run


class _Listed:
    """A source of keys only (no files: their sizes and times are -1), with or without a spec."""

    def __init__(self, keys, spec=None):
        self.keys = keys
        if spec is not None:
            self.spec = spec

    def __len__(self):
        return len(self.keys)


def test_the_identity_of_a_source_stays_what_earlier_versions_computed():
    # a kept cache (--keep-cache, --cache-dir) is reused by later runs only while these values hold
    keys = ["a.png", "b/c.png", "d\udcff.png"]  # an undecodable byte in a file name, kept as a surrogate
    assert cache_identity(_Listed(keys, "folder:/data/images"), PRE) == "1d4f758d699803d5"
    assert cache_identity(_Listed(["a.png"]), Preprocess(8, 1, "pad")) == "fb2de7da061a5f82"
    assert cache_identity(_Listed(["a.png"], ""), Preprocess(8, 1, "pad")) == "fb2de7da061a5f82"


def test_cached_images_read_any_rows_views_pickle_and_close_their_file(tmp_path):
    data = np.arange(20, dtype=np.uint8).reshape(5, 1, 2, 2)
    path = tmp_path / "images.u8"
    path.write_bytes(data.tobytes())
    images = CachedImages(path, (5, 1, 2, 2))
    assert len(images) == 5 and images.shape == torch.Size((5, 1, 2, 2)) and images.numel() == 20
    assert images.dtype == torch.uint8 and images.device == torch.device("cpu")
    assert images.cpu() is images and images.contiguous() is images
    np.testing.assert_array_equal(images[:].numpy(), data)
    np.testing.assert_array_equal(images.index_select(0, torch.tensor([4, 0, 4, 2])).numpy(), data[[4, 0, 4, 2]])
    view = images[np.array([3, 1])]
    assert view.shape == torch.Size((2, 1, 2, 2)) and view.numel() == 8
    np.testing.assert_array_equal(view[::-1].numpy(), data[[1, 3]])
    np.testing.assert_array_equal(view[[1]][:].numpy(), data[[1]])
    copy = pickle.loads(pickle.dumps(images))  # a worker gets no open file of the parent's
    assert images._fd is not None and copy._fd is None
    np.testing.assert_array_equal(copy[1:3].numpy(), data[1:3])
    fd = images._fd
    del images
    gc.collect()
    with pytest.raises(OSError):
        os.fstat(fd)  # closed with its object
    with pytest.raises(ValueError, match="rows"):
        view.index_select(1, torch.tensor([0]))
    with pytest.raises(TypeError, match="not str"):
        view["0"]
    with pytest.raises(DataError, match="shorter than its rows"):
        CachedImages(path, (6, 1, 2, 2))[5:6]


def test_cached_images_that_failed_to_initialise_go_quietly(tmp_path, monkeypatch):
    import sys

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with pytest.raises(TypeError):
        CachedImages(tmp_path / "images.u8", None)  # no shape: fails before it has a file to close
    gc.collect()
    assert unraisable == []


def test_the_fingerprint_of_more_rows_than_one_chunk(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, (4100, 1, 1, 1), dtype=np.uint8)  # 4096 a chunk
    path = tmp_path / "images.u8"
    path.write_bytes(data.tobytes())
    assert CachedImages(path, data.shape).fingerprint() == hashlib.blake2b(data.tobytes(), digest_size=8).hexdigest()
    rows = np.arange(1, 4100, 2)
    assert CachedImages(path, data.shape, rows).fingerprint() == hashlib.blake2b(
        data[rows].tobytes(), digest_size=8).hexdigest()


def test_a_build_shows_its_progress_from_the_rows_already_cached_and_records_its_meta(tmp_path, folder, monkeypatch):
    import tqdm.auto

    bars, asked = [], []

    class Bar:
        def __init__(self, **kw):
            self.kw, self.n = kw, kw["initial"]
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            self.n += n

    real = cache_module.iter_batches

    def cut_after_two(*args, **kw):
        asked.append((kw["batch_size"], kw["workers"]))
        for i, batch in enumerate(real(*args, **kw)):
            if i == 2 and len(asked) == 1:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    monkeypatch.setattr(cache_module, "iter_batches", cut_after_two)
    src = open_source(folder)
    target = tmp_path / "not" / "yet" / "there"  # its parents are made
    with pytest.raises(KeyboardInterrupt):
        build_cache(src, PRE, target, workers=0, batch_size=8)
    assert (target / "images.u8").stat().st_size == 41 * 64  # every row has its place from the start
    cache = build_cache(src, PRE, target, workers=0, progress=True)
    assert asked == [(8, 0), (256, 0)]  # the default batch
    assert bars[0].kw == {"total": 41, "initial": 0, "disable": True, "unit": "img", "desc": "caching images",
                          "leave": False}
    assert bars[1].kw == dict(bars[0].kw, initial=16, disable=False) and bars[1].n == 41
    meta = json.loads((target / "meta.json").read_text())
    assert meta == cache.meta == {
        "format": "cvae-image-cache", "version": 1, "identity": cache_identity(src, PRE), "shape": [41, 1, 8, 8],
        "source": src.description, "preprocess": PRE.to_dict(), "complete": True,
        "content_fingerprint": cache.fingerprint}
    del meta["shape"]  # a damaged meta: rebuilt, not trusted
    (target / "meta.json").write_text(json.dumps(meta))
    assert build_cache(src, PRE, target, workers=0).meta["shape"] == [41, 1, 8, 8] and len(bars) == 3


def test_a_complete_cache_is_reused_without_reading_it_again(tmp_path, folder, monkeypatch):
    src = open_source(folder)
    first = build_cache(src, PRE, tmp_path / "c", workers=0)
    assert (tmp_path / "c" / "meta.json").read_text() == json.dumps(first.meta, sort_keys=True)
    monkeypatch.setattr(CachedImages, "fingerprint", lambda self: pytest.fail("read the whole cache again"))
    again = build_cache(src, PRE, tmp_path / "c", workers=0)
    assert again.meta == first.meta and again.kept.tolist() == first.kept.tolist()


def _pngs(root, good, bad):
    root.mkdir()
    for i in range(good):
        Image.fromarray(np.full((8, 8), 30 * i, np.uint8)).save(root / f"g{i}.png")
    for i in range(bad):
        (root / f"x{i}.png").write_bytes(b"not a png")
    return open_source(root)


def test_one_decodable_image_is_enough_and_none_is_one_line(tmp_path):
    one = build_cache(_pngs(tmp_path / "one", 1, 1), PRE, tmp_path / "c1", workers=0)
    assert one.kept.tolist() == [0] and [row for row, _ in one.skipped] == [1]
    none = _pngs(tmp_path / "none", 0, 2)
    with pytest.raises(DataError, match=r"no image of .* could be decoded \(2 skipped\)"):
        build_cache(none, PRE, tmp_path / "c0", workers=0)


def test_skip_reasons_survive_lines_cut_short_and_default_to_could_not_be_decoded(tmp_path, folder):
    cache = build_cache(open_source(folder), PRE, tmp_path / "c", workers=0)
    (broken, _), = cache.skipped
    status = np.fromfile(tmp_path / "c" / "status.i1", dtype=np.int8)
    status[[0, 5]] = 2  # two more skipped rows
    status.tofile(tmp_path / "c" / "status.i1")
    (tmp_path / "c" / "skipped.jsonl").write_text(
        f'[{broken}, "bad png"]\n[0, "cut sh\n7\n[0, "first"]\n[{broken}, "bad png again"]\n')
    assert open_cache(tmp_path / "c").skipped == [(0, "first"), (5, "could not be decoded"),
                                                  (broken, "bad png again")]


def test_what_is_not_a_complete_cache_and_removing_one(tmp_path, folder, monkeypatch):
    folder_c = tmp_path / "c"
    build_cache(open_source(folder), PRE, folder_c, workers=0)
    meta = json.loads((folder_c / "meta.json").read_text())
    for bad in ([meta], dict(meta, format="other"), dict(meta, version=2), dict(meta, complete=False)):
        (folder_c / "meta.json").write_text(json.dumps(bad))
        with pytest.raises(DataError, match="holds no complete image cache"):
            open_cache(folder_c)
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("cut")))
    with pytest.raises(OSError, match="cut"):
        cache_module._write_meta(folder_c, meta)  # a write cut before its rename leaves meta.json.tmp
    monkeypatch.undo()
    (folder_c / "images.u8").unlink()
    (folder_c / "images.u8").mkdir()  # a folder where a file of the cache should be
    remove_cache(folder_c)
    assert not folder_c.exists()
    keep = tmp_path / "shared"
    build_cache(open_source(folder), PRE, keep, workers=0)
    (keep / "notes.txt").write_text("mine")
    remove_cache(keep)
    assert [p.name for p in keep.iterdir()] == ["notes.txt"]
