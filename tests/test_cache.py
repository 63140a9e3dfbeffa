"""The image cache training reads from: same images as decoding into memory, resumable, rebuilt when the files
change, and training from it gives the weights training from memory gives."""

import hashlib
import os

import numpy as np
import pytest
import torch
from PIL import Image

from cvae_features.data import Preprocess, load_images, open_source
from cvae_features.data import cache as cache_module
from cvae_features.data.cache import CachedImages, build_cache, open_cache
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
