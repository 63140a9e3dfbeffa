"""How a training run is set up (cvae_features/_train_setup.py, TrainConfig and the checks of training.py):
each helper against its rule written out, on tiny generated data (8x8 images, one-epoch runs)."""

import dataclasses
import hashlib
import os

import numpy as np
import pytest
import torch
from PIL import Image

from cvae_features import _rundir as rd
from cvae_features import _train_setup as ts
from cvae_features.data import Preprocess
from cvae_features.errors import ConfigError, DataError
from cvae_features.m2vae import M2VAEConfig
from cvae_features.model import VAEConfig
from cvae_features.training import TrainConfig, train


def _images(n=12, size=8, channels=1, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, channels, size, size), dtype=np.uint8)


# -- derive_seed, _subset_rows, _as_image_tensor ---------------------------------------------------------------

def _seed_by_hand(seed, *keys):
    words = [seed] + [k if isinstance(k, int) else int.from_bytes(k.encode()[:8], "little") for k in keys]
    state = np.random.SeedSequence(words).generate_state(1, np.uint64)[0]
    return int(state) >> 1


def test_derive_seed_is_the_seed_sequence_of_the_seed_and_its_keys_shifted_to_63_bits():
    for seed, keys in ((0, ()), (7, ("split",)), (2**32 - 1, ("shuffle", 3)), (5, (0, "noise", 2**40))):
        value = ts.derive_seed(seed, *keys)
        assert value == _seed_by_hand(seed, *keys) and isinstance(value, int) and 0 <= value < 2**63
    assert ts.derive_seed(3, "abcdefgh") == ts.derive_seed(3, "abcdefghij")  # the first 8 bytes name the purpose
    assert ts.derive_seed(3, "abcdefgh") != ts.derive_seed(3, "abcdefgi")
    assert ts.derive_seed(3, "ab") == _seed_by_hand(3, int.from_bytes(b"ab", "little"))  # little-endian
    assert ts.derive_seed(3, "ab") != ts.derive_seed(3, int.from_bytes(b"ab", "big"))
    assert ts.derive_seed(3, 1) != ts.derive_seed(3, 1, 2) != ts.derive_seed(4, 1)
    assert max(ts.derive_seed(s, "x") for s in range(64)) >= 2**62  # the top bit of 63 is used


def test_the_subset_is_the_first_rows_of_a_seeded_permutation_in_row_order():
    tcfg = TrainConfig(max_images=5, seed=9)
    g = torch.Generator().manual_seed(ts.derive_seed(9, "subset"))
    expected = torch.randperm(40, generator=g)[:5].sort().values
    rows = ts._subset_rows(40, tcfg)
    assert torch.equal(rows, expected) and rows.dtype == torch.int64


def test_in_memory_images_are_uint8_square_with_one_or_three_channels():
    gray = torch.arange(2 * 8 * 8, dtype=torch.uint8).reshape(2, 8, 8)
    out = ts._as_image_tensor(gray.numpy())
    assert out.shape == (2, 1, 8, 8) and torch.equal(out[:, 0], gray) and out.device.type == "cpu"
    rgb = _images(3, 4, 3)
    assert torch.equal(ts._as_image_tensor(rgb), torch.as_tensor(rgb))
    assert ts._as_image_tensor(_images(1, 1, 1)).shape == (1, 1, 1, 1)
    with pytest.raises(DataError, match=r"in-memory images have dtype torch.int16: expected uint8 \(0..255\)"):
        ts._as_image_tensor(np.zeros((2, 1, 8, 8), np.int16))
    for shape in ((2, 2, 8, 8), (2, 4, 8, 8), (2, 1, 8, 6), (2, 1, 6, 8), (0, 1, 8, 8), (2, 1, 1, 8, 8), (8, 8)):
        with pytest.raises(DataError, match=r"in-memory images have shape \(.*\): expected \(n, C, S, S\) with "
                                            r"n >= 1, C in \{1, 3\} and square images"):
            ts._as_image_tensor(np.zeros(shape, np.uint8))


# -- model_overrides, agree, agree_preprocess --------------------------------------------------------------------

def test_model_overrides_drop_default_sizes_of_a_config_and_check_a_dicts_names_and_values():
    assert ts.model_overrides(None) == {}
    d = ts.model_overrides(VAEConfig(latent_dim=4))
    assert "image_size" not in d and "channels" not in d and d["latent_dim"] == 4 and d["beta"] == VAEConfig().beta
    d = ts.model_overrides(VAEConfig(image_size=32, channels=3, latent_dim=4))
    assert (d["image_size"], d["channels"]) == (32, 3)
    d = ts.model_overrides(VAEConfig(image_size=32))
    assert d["image_size"] == 32 and "channels" not in d
    d = ts.model_overrides(VAEConfig(channels=3))
    assert d["channels"] == 3 and "image_size" not in d
    m2 = ts.model_overrides(M2VAEConfig(n_classes=3), M2VAEConfig)
    assert m2["n_classes"] == 3 and "image_size" not in m2
    given = {"latent_dim": 4, "widths": [5, 6, 7, 8]}  # widths wait for the size (they would not fit 28 px)
    out = ts.model_overrides(given)
    assert out == given and out is not given
    with pytest.raises(ConfigError, match="invalid latent_dim=0"):
        ts.model_overrides({"latent_dim": 0})
    with pytest.raises(ConfigError, match="unknown model config keys \\['latent'\\]"):
        ts.model_overrides({"latent": 4})
    with pytest.raises(ConfigError, match="invalid n_classes=1"):
        ts.model_overrides({"n_classes": 1}, M2VAEConfig)
    with pytest.raises(ConfigError, match="^invalid model_config of type VAEConfig: expected a M2VAEConfig, a "
                                          "dict or None$"):
        ts.model_overrides(VAEConfig(), M2VAEConfig)
    with pytest.raises(ConfigError, match="^invalid model_config of type list: expected a VAEConfig, a dict or "
                                          "None$"):
        ts.model_overrides([1])


def test_agree_keeps_the_saved_config_and_takes_only_the_free_train_fields():
    saved = TrainConfig(epochs=3, lr=1e-3, seed=4)
    assert ts.agree("train", saved, None) is saved
    free = dict(device="cpu", amp=True, amp_dtype="float16", workers=2, cache_dir="/tmp/c", keep_cache=True)
    out = ts.agree("train", saved, TrainConfig(epochs=3, lr=1e-3, seed=4, **free))
    assert out == dataclasses.replace(saved, **free)
    assert ts.agree("train", saved, {"epochs": 3, "workers": 1}) == dataclasses.replace(saved, workers=1)
    with pytest.raises(ConfigError, match=r"^cannot resume with a different train config: epochs=5 \(checkpoint: "
                                          r"3\), lr=0.1 \(checkpoint: 0.001\); resume uses the run's recorded "
                                          r"settings \(or start again with overwrite\)$"):
        ts.agree("train", saved, {"epochs": 5, "lr": 0.1, "device": "cpu"})
    with pytest.raises(ConfigError, match=r"different train config: nope=1 \(checkpoint: None\)"):
        ts.agree("train", saved, {"nope": 1})
    # a model config: nothing is free; a config's default sizes are no choice, a dict's are
    msaved = VAEConfig(image_size=8, latent_dim=4)
    assert ts.agree("model", msaved, VAEConfig(latent_dim=4)) == msaved
    assert ts.agree("model", msaved, {"image_size": 8}) == msaved
    with pytest.raises(ConfigError, match=r"different model config: image_size=28 \(checkpoint: 8\)"):
        ts.agree("model", msaved, {"image_size": 28})
    with pytest.raises(ConfigError, match=r"different model config: beta=2.0 \(checkpoint: 0.05\)"):
        ts.agree("model", msaved, VAEConfig(latent_dim=4, beta=2))
    with pytest.raises(ConfigError, match=r"different model config: device='cpu' \(checkpoint: None\)"):
        ts.agree("model", msaved, {"device": "cpu"})
    m2 = M2VAEConfig(image_size=8, n_classes=3)
    assert ts.agree("model", m2, M2VAEConfig(n_classes=3), M2VAEConfig) == m2


def test_agree_preprocess_reads_the_saved_one_and_refuses_another():
    saved = {"size": 8, "channels": 1, "resize": "pad"}
    assert ts.agree_preprocess(saved, None) == Preprocess(8, 1, "pad")
    assert ts.agree_preprocess(saved, Preprocess(8, 1, "pad")) == Preprocess(8, 1, "pad")
    with pytest.raises(ConfigError, match=r"^cannot resume with preprocess .*crop.* \(checkpoint: .*pad.*\)$"):
        ts.agree_preprocess(saved, Preprocess(8, 1, "crop"))


# -- what a run dir holds, its lock and its claim ----------------------------------------------------------------

def _checkpoint(run_dir, **state):
    run_dir.mkdir(parents=True, exist_ok=True)
    base = {key: {} for key in rd._CHECKPOINT_KEYS}
    base.update(model={"w": torch.zeros(2)}, epoch=0)
    rd.save_checkpoint(run_dir / rd.CHECKPOINT, {**base, **state})


def test_what_a_run_dir_holds_and_the_advice_after_an_interrupt(tmp_path):
    run = tmp_path / "run"
    assert ts.existing_run(run) == (None, "no checkpoint")
    assert ts.interrupted_advice(run) == (
        f"interrupted before the first epoch ended, so no checkpoint was written in {run}: rerun the same command "
        "without --resume to start again")
    run.mkdir()
    (run / rd.MODEL).write_bytes(b"x")
    assert ts.existing_run(run) == ("stuck", "a model.pt without a checkpoint.pt")
    assert ts.interrupted_advice(run) == (f"interrupted; {run} holds a model.pt without a checkpoint.pt, which "
                                          "cannot be resumed: rerun with --overwrite to start again")
    (run / rd.CHECKPOINT).write_bytes(b"not a checkpoint")
    assert ts.existing_run(run) == ("stuck", "a damaged checkpoint.pt")
    _checkpoint(run, epoch=2, train_config={"epochs": 5}, finished=False)
    assert ts.existing_run(run) == ("resumable", "an unfinished run (epoch 2 of 5)")
    assert ts.interrupted_advice(run) == (f"interrupted; {run} holds an unfinished run (epoch 2 of 5): rerun with "
                                          "--resume to go on from its last checkpoint")
    _checkpoint(run, epoch=1, train_config={})
    assert ts.existing_run(run) == ("resumable", "an unfinished run (epoch 1 of ?)")
    _checkpoint(run, epoch=5, train_config={"epochs": 5}, finished=True)
    assert ts.existing_run(run) == ("finished", "a finished run")
    assert ts.interrupted_advice(run) == (f"interrupted after the last epoch; {run} holds a finished run: rerun "
                                          "with --resume for its summary")


def test_the_lock_is_held_until_closed_and_names_the_holders_pid(tmp_path):
    run = tmp_path / "a" / "run"
    held = ts.lock_run_dir(run)
    try:
        assert (run / ".lock").read_text() == str(os.getpid())
        with pytest.raises(ConfigError, match=f"^run_dir {run} is in use by another training process "
                                              rf"\(pid {os.getpid()}\): wait for it to finish or use another "
                                              "directory$"):
            ts.lock_run_dir(run)
    finally:
        held.close()
    (run / ".lock").write_text("12345678901")  # a longer pid left by an earlier holder is replaced
    again = ts.lock_run_dir(run)
    try:
        assert (run / ".lock").read_text() == str(os.getpid())
        (run / ".lock").write_text("not a pid")
        with pytest.raises(ConfigError, match="^run_dir .* is in use by another training process: wait"):
            ts.lock_run_dir(run)
    finally:
        again.close()


def test_claiming_a_run_dir_removes_only_run_files_of_a_run_that_holds_nothing_of_value(tmp_path):
    run = tmp_path / "run"
    ts.claim_run_dir(run, False)  # nothing there: nothing to do
    run.mkdir()
    for name in (rd.CONFIG, rd.HISTORY_CSV, "notes.txt"):
        (run / name).write_text("x")
    ts.claim_run_dir(run, False)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    (run / rd.MODEL).write_bytes(b"x")
    with pytest.raises(ConfigError, match=f"^run_dir {run} already holds a model.pt without a checkpoint.pt, so "
                                          r"it cannot be resumed: replace it \(--overwrite\) or pick another "
                                          "directory$"):
        ts.claim_run_dir(run, False)
    _checkpoint(run, epoch=5, train_config={"epochs": 5}, finished=True)
    with pytest.raises(ConfigError, match=f"^run_dir {run} already holds a finished run: resume it "
                                          r"\(--resume\) or replace it \(--overwrite\)$"):
        ts.claim_run_dir(run, False)
    _checkpoint(run, epoch=2, train_config={"epochs": 5})
    with pytest.raises(ConfigError, match=r"already holds an unfinished run \(epoch 2 of 5\): resume it"):
        ts.claim_run_dir(run, False)
    (run / rd.CONFIG).write_text("x")
    ts.claim_run_dir(run, True)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


# -- load_data ---------------------------------------------------------------------------------------------------

def _digest(images: torch.Tensor) -> str:
    return hashlib.blake2b(np.ascontiguousarray(images.numpy()).data, digest_size=8).hexdigest()


def _folder(tmp_path, n=10, broken=True, classes=("a", "b")):
    folder = tmp_path / "images"
    pixels = _images(n, 8, 1, seed=3)
    for i in range(n):
        sub = folder / classes[i % len(classes)]
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i, 0]).save(sub / f"img{i:02d}.png")
    if broken:
        (folder / classes[-1] / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def test_in_memory_images_are_taken_as_they_are_or_a_seeded_subset_of_them():
    images = _images(12)
    data = ts.load_data(images, TrainConfig(), {"latent_dim": 4}, None, None, False)
    assert torch.equal(data.images, torch.as_tensor(images)) and data.images.is_contiguous()
    assert data.model_config == VAEConfig(image_size=8, channels=1, latent_dim=4)
    assert (data.preprocess, data.spec, data.skipped, data.cache_dir) == (None, None, [], None)
    assert data.description == "in-memory array of shape (12, 1, 8, 8)"
    assert torch.equal(data.labels, torch.full((12,), -1, dtype=torch.int64))
    assert data.fingerprint == _digest(torch.as_tensor(images))
    tcfg = TrainConfig(max_images=5, seed=2)
    sub = ts.load_data(images, tcfg, {}, None, None, False)
    rows = ts._subset_rows(12, tcfg)
    assert torch.equal(sub.images, torch.as_tensor(images)[rows]) and len(sub.labels) == 5
    assert sub.description == "in-memory array of shape (5, 1, 8, 8)" and sub.fingerprint != data.fingerprint
    rgb = ts.load_data(_images(3, 16, 3), TrainConfig(), {"image_size": 16, "channels": 3}, None, None, False)
    assert (rgb.model_config.image_size, rgb.model_config.channels) == (16, 3)
    with pytest.raises(ConfigError, match="^model config image_size=16 does not match the images' image_size 8$"):
        ts.load_data(images, TrainConfig(), {"image_size": 16}, None, None, False)
    with pytest.raises(ConfigError, match="^model config channels=3 does not match the images' channels 1$"):
        ts.load_data(images, TrainConfig(), {"channels": 3}, None, None, False)
    with pytest.raises(ConfigError, match=r"^invalid latent_dim=0: .* \(image_size 8 and channels 1 come from the "
                                          r"data\)$"):
        ts.load_data(images, TrainConfig(), {"latent_dim": 0}, None, None, False)


def test_files_are_decoded_in_memory_or_into_the_cache_with_their_labels_and_skips(tmp_path):
    folder = _folder(tmp_path)
    plain = ts.load_data(folder, TrainConfig(workers=0), {}, None, None, False)
    assert isinstance(plain.images, torch.Tensor) and plain.images.shape == (10, 1, 8, 8)
    assert plain.preprocess == Preprocess(8, 1) and plain.cache_dir is None
    assert plain.spec == str(folder) and str(folder) in plain.description
    assert plain.skipped == [("b/zz_broken.png", plain.skipped[0][1])] and plain.skipped[0][1]
    assert plain.labels.dtype == torch.int64 and plain.labels.tolist() == [0] * 5 + [1] * 5
    assert plain.fingerprint == _digest(plain.images)
    assert plain.model_config == VAEConfig(image_size=8, channels=1)
    cached = ts.load_data(str(folder), TrainConfig(workers=0), {}, None, None, False, cache_dir=tmp_path / "c")
    assert not isinstance(cached.images, torch.Tensor) and cached.cache_dir == tmp_path / "c"
    assert torch.equal(cached.images.index_select(0, torch.arange(10)), plain.images)
    assert cached.fingerprint == plain.fingerprint and cached.skipped == plain.skipped
    assert torch.equal(cached.labels, plain.labels)
    # a given preprocess is used (16 px), and a size or channel count asked for must be the preprocess's
    big = ts.load_data(folder, TrainConfig(workers=0), {"channels": 1}, Preprocess(16, 1), None, False)
    assert big.images.shape == (10, 1, 16, 16) and big.model_config.image_size == 16
    with pytest.raises(ConfigError, match="^model config image_size=8 does not match the preprocess image_size 16$"):
        ts.load_data(folder, TrainConfig(workers=0), {"image_size": 8}, Preprocess(16, 1), None, False)
    with pytest.raises(ConfigError, match="^model config channels=1 does not match the preprocess channels 3$"):
        ts.load_data(folder, TrainConfig(workers=0), {"channels": 1}, Preprocess(8, 3), None, False)
    # a hint alone chooses the inferred preprocess
    rgb = ts.load_data(folder, TrainConfig(workers=0), {"image_size": 16, "channels": 3}, None, None, False)
    assert rgb.preprocess == Preprocess(16, 3) and rgb.images.shape == (10, 3, 16, 16)


def test_a_subset_of_files_keeps_the_labels_of_its_rows_and_an_array_source_stays_in_memory(tmp_path):
    from cvae_features.data import ArraySource, open_source

    folder = _folder(tmp_path, n=12, broken=False, classes=("a", "b", "c"))
    tcfg = TrainConfig(workers=0, max_images=7, seed=1)
    data = ts.load_data(folder, tcfg, {}, None, None, False, cache_dir=tmp_path / "c")
    rows = ts._subset_rows(12, tcfg).numpy()
    src = open_source(str(folder))
    assert data.labels.tolist() == np.asarray(src.labels)[rows].tolist() and len(data.images) == 7
    full = ts.load_data(folder, TrainConfig(workers=0), {}, None, None, False)
    assert torch.equal(data.images.index_select(0, torch.arange(7)), full.images[torch.as_tensor(rows)])
    pixels = _images(6, 8, 1, seed=4)[:, 0]
    arrays = ArraySource(pixels, labels=[0, 1, -1, 1, 0, 1], label_names=["x", "y"])
    data = ts.load_data(arrays, TrainConfig(workers=0), {}, None, None, False, cache_dir=tmp_path / "never")
    assert isinstance(data.images, torch.Tensor) and data.cache_dir is None and not (tmp_path / "never").exists()
    assert torch.equal(data.images[:, 0], torch.as_tensor(pixels)) and data.labels.tolist() == [0, 1, -1, 1, 0, 1]


def test_a_family_with_classes_takes_their_number_from_the_data_and_fingerprints_its_labels(tmp_path):
    from cvae_features.data import ArraySource

    pixels = _images(6, 8, 1, seed=5)[:, 0]

    def load(labels, names, overrides=None):
        src = ArraySource(pixels, labels=labels, label_names=names)
        return ts.load_data(src, TrainConfig(workers=0), overrides or {}, None, None, False, M2VAEConfig)

    data = load([0, 1, 2, -1, -1, 0], ["p", "q", "r"])
    assert data.model_config.n_classes == 3 and data.labels.tolist() == [0, 1, 2, -1, -1, 0]
    plain = _digest(data.images)
    names = b"p\nq\nr"
    assert data.fingerprint == hashlib.blake2b(plain.encode() + names + data.labels.numpy().astype("<i8").tobytes(),
                                               digest_size=8).hexdigest()
    assert load([0, 1, 2, -1, -1, 1], ["p", "q", "r"]).fingerprint != data.fingerprint
    assert load([0, 1, 2, -1, -1, 0], ["p", "q", "s"]).fingerprint != data.fingerprint
    assert load([0, 1, -1, -1, -1, 0], ["p", "q", "r"], {"n_classes": 5}).model_config.n_classes == 5
    assert load([0, 1, -1, -1, -1, 0], ["p", "q"]).model_config.n_classes == 2
    with pytest.raises(ConfigError, match=r"^n_classes=2 but .* has 3 classes$"):
        load([0, 1, 2, -1, -1, 0], ["p", "q", "r"], {"n_classes": 2})
    for labels in ([0, 0, -1, -1, -1, 0], [-1] * 6):
        n = len(set(labels) - {-1})
        with pytest.raises(ConfigError, match=rf"^a model with classes learns them from labelled images, and .* has "
                                              rf"labelled images of {n} class\(es\); label some images of at least 2"):
            load(labels, ["p", "q"])
    # without classes the labels are not part of the fingerprint
    src = ArraySource(pixels, labels=[0, 1, 2, -1, -1, 0], label_names=["p", "q", "r"])
    assert ts.load_data(src, TrainConfig(workers=0), {}, None, None, False).fingerprint == plain



# -- TrainConfig -------------------------------------------------------------------------------------------------

INTEGERS = [("epochs", 1, 100_000, False), ("batch_size", 1, 65_536, False), ("labelled_per_batch", 0, 65_536, False),
            ("patience", 1, 100_000, True), ("seed", 0, 2**32 - 1, False), ("max_images", 1, 2**40, True),
            ("workers", 0, 1024, True)]


@pytest.mark.parametrize("name, lo, hi, optional", INTEGERS)
def test_integer_settings_at_their_bounds(name, lo, hi, optional):
    expected = ("None or " if optional else "") + f"an integer from {lo} to {hi}"
    for ok in (lo, hi, np.int64(lo)):
        value = getattr(TrainConfig(**{name: ok}), name)
        assert value == ok and type(value) is int
    for bad in (lo - 1, hi + 1, float(lo), True, "1", None if not optional else "x"):
        with pytest.raises(ConfigError) as info:
            TrainConfig(**{name: bad})
        assert str(info.value) == f"invalid {name}={bad!r}: expected {expected}"
    if optional:
        assert getattr(TrainConfig(**{name: None}), name) is None


REALS = [("lr", 0, True, None, False), ("weight_decay", 0, False, None, False),
         ("beta_warmup_epochs", 0, False, None, False), ("val_fraction", 0, False, 1, False),
         ("grad_clip", 0, True, None, True)]


@pytest.mark.parametrize("name, lo, lo_open, hi, optional", REALS)
def test_real_settings_at_their_bounds(name, lo, lo_open, hi, optional):
    low = f"> {lo}" if lo_open else f">= {lo}"
    high = "" if hi is None else f" and < {hi}"
    expected = ("None or " if optional else "") + f"a finite number {low}{high}"
    oks = [5e-324, 0.5, np.float32(0.25), 1] + ([] if lo_open else [0, -0.0])
    if hi is not None:
        oks = [v for v in oks if v < hi] + [float(np.nextafter(hi, 0))]
    else:
        oks += [1e300]
    for ok in oks:
        value = getattr(TrainConfig(**{name: ok}), name)
        assert value == ok and type(value) is float
    bads = [-5e-324, float("nan"), float("inf"), -float("inf"), True, "0.5"] + ([0, 0.0] if lo_open else [])
    bads += [hi, hi + 1] if hi is not None else []
    bads += [] if optional else [None]
    for bad in bads:
        with pytest.raises(ConfigError) as info:
            TrainConfig(**{name: bad})
        assert str(info.value) == f"invalid {name}={bad!r}: expected {expected}"
    if optional:
        assert getattr(TrainConfig(**{name: None}), name) is None


def test_the_other_settings_and_the_record():
    for schedule in ("onecycle", "cosine", "constant"):
        assert TrainConfig(schedule=schedule).schedule == schedule
    for device in ("auto", "cpu", "cuda", "cuda:0", "cuda:12"):
        assert TrainConfig(device=device).device == device
    for device in ("gpu", "cuda:", "cuda:x", "CPU", " cpu", "cpu ", "cuda:1x", 0):
        with pytest.raises(ConfigError, match=f"^invalid device={device!r}: expected 'auto', 'cpu', 'cuda' or "
                                              "'cuda:N'$".replace("(", r"\(").replace(")", r"\)")):
            TrainConfig(device=device)
    for amp in (None, True, False):
        assert TrainConfig(amp=amp).amp is amp
    for amp in (1, 0, "yes"):
        with pytest.raises(ConfigError, match=f"^invalid amp={amp!r}: expected None, True or False$"):
            TrainConfig(amp=amp)
    for dtype in ("bfloat16", "float16"):
        assert TrainConfig(amp_dtype=dtype).amp_dtype == dtype
    with pytest.raises(ConfigError, match="^invalid amp_dtype='float32': expected 'bfloat16' or 'float16'$"):
        TrainConfig(amp_dtype="float32")
    with pytest.raises(ConfigError, match="^invalid schedule='Cosine': expected 'onecycle', 'cosine' or 'constant'$"):
        TrainConfig(schedule="Cosine")
    from pathlib import Path

    assert TrainConfig(cache_dir=Path("/tmp/x")).cache_dir == "/tmp/x"
    assert TrainConfig(cache_dir="c").cache_dir == "c" and TrainConfig().cache_dir is None
    for bad in ("", "  ", 3):
        with pytest.raises(ConfigError, match=f"^invalid cache_dir={bad!r}: expected None or a folder path$"):
            TrainConfig(cache_dir=bad)
    assert TrainConfig(keep_cache=True).keep_cache is True
    for bad in (1, None, "yes"):
        with pytest.raises(ConfigError, match=f"^invalid keep_cache={bad!r}: expected True or False$"):
            TrainConfig(keep_cache=bad)
    assert TrainConfig().augment == "auto" and TrainConfig(augment=" AUTO ").augment == "auto"
    assert TrainConfig(augment=None).augment is None
    with pytest.raises(ConfigError):
        TrainConfig(augment="wobble=3")
    cfg = TrainConfig(epochs=2, cache_dir="c", augment="AUTO")
    d = cfg.to_dict()
    assert d == {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)} and d["augment"] == "auto"
    assert TrainConfig.from_dict(d) == cfg and TrainConfig.from_dict({}) == TrainConfig()
    assert TrainConfig.from_saved({"epochs": 2}) == TrainConfig(epochs=2, augment=None)
    assert TrainConfig.from_saved({"augment": "auto"}).augment == "auto"
    with pytest.raises(ConfigError, match=r"^unknown train config keys \['x'\]"):
        TrainConfig.from_saved({"x": 1})


# -- a run: its checks, split, recorded config, result and cache ---------------------------------------------------

def _train(images, run_dir, **kw):
    tcfg = dict(dict(epochs=1, batch_size=4, augment=None), **kw.pop("train_config", {}))
    return train(images, run_dir, model_config=kw.pop("model_config", {"latent_dim": 2}), train_config=tcfg,
                 progress=False, **kw)


def test_a_run_splits_by_its_seed_and_records_its_config(tmp_path):
    import json

    from cvae_features import __version__

    images = _images(10)
    seen = []

    def callback(epoch, batch_index, logs):
        seen.append(logs["batch"]["images"].clone())

    result = _train(images, tmp_path / "run", callback=callback, train_config={"val_fraction": 0.3, "seed": 6})
    assert (result.n_train, result.n_val, result.epochs_run, result.best_epoch) == (7, 3, 1, 1)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(ts.derive_seed(6, "split")))
    expected = torch.as_tensor(images)[perm[3:]]
    got = torch.cat(seen)
    assert sorted(map(bytes, got.numpy())) == sorted(map(bytes, expected.numpy()))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config == {
        "tool_version": __version__, "torch_version": torch.__version__, "arch": "conv-vae",
        "model_config": result.model.config.to_dict(), "train_config": config["train_config"], "preprocess": None,
        "source": {"description": "in-memory array of shape (10, 1, 8, 8)", "spec": None, "n_images": 10,
                   "n_train": 7, "n_val": 3, "n_skipped": 0, "data_fingerprint": _digest(torch.as_tensor(images))},
        "device": "cpu", "amp": None, "processes": 1}
    assert TrainConfig.from_dict(config["train_config"]) == TrainConfig(epochs=1, batch_size=4, augment=None,
                                                                         val_fraction=0.3, seed=6)
    d = result.to_dict()
    assert d == {"run_dir": str(tmp_path / "run"), "epochs_run": 1, "best_epoch": 1,
                 "best_val_loss": result.history[0]["val_loss"], "stopped_early": False,
                 "final_train_loss": result.history[0]["train_loss"], "seconds": result.seconds,
                 "images_per_s": result.images_per_s, "n_train": 7, "n_val": 3, "n_skipped": 0,
                 "fingerprint": result.model.fingerprint()}
    assert type(result.seconds) is float and result.seconds > 0 and result.skipped == []
    assert type(result.stopped_early) is bool and result.history == json.loads(
        (tmp_path / "run" / "history.json").read_text())


@pytest.mark.parametrize("n, fraction, n_val", [(10, 0.01, 1), (10, 0.95, 9), (10, 0.0, 0), (1, 0.5, 0),
                                                (10, 0.25, 2), (10, 0.35, 4)])
def test_the_validation_rows_are_the_rounded_fraction_at_least_one_and_leave_one_to_train(tmp_path, n, fraction,
                                                                                          n_val):
    result = _train(_images(n), tmp_path / "run", train_config={"val_fraction": fraction})
    assert (result.n_train, result.n_val) == (n - n_val, n_val)


def test_with_few_labels_validation_takes_the_unlabelled_images_first(tmp_path):
    from cvae_features.data import ArraySource

    pixels = _images(10, seed=8)[:, 0]
    labels = [0, 1, -1, -1, 0, 1, -1, -1, 0, 1]
    seen = []

    def callback(epoch, batch_index, logs):
        seen.append((logs["batch"]["images"].clone(), logs["batch"]["labels"].clone()))

    src = ArraySource(pixels, labels=labels, label_names=["a", "b"])
    run = tmp_path / "run"
    result = train(src, run, arch="conv-m2", model_config={"latent_dim": 2},
                   train_config=dict(epochs=1, batch_size=4, augment=None, val_fraction=0.2, labelled_per_batch=1,
                                     seed=3, workers=0), progress=False, callback=callback)
    assert (result.n_train, result.n_val) == (8, 2)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(ts.derive_seed(3, "split")))
    known = torch.as_tensor(labels)[perm] >= 0
    perm = torch.cat([perm[~known], perm[known]])
    expected = {bytes(pixels[int(i)]): labels[int(i)] for i in perm[2:]}
    got = {bytes(img[0].numpy()): int(lab) for images, labs in seen for img, lab in zip(images, labs)}
    assert got == expected  # the two unlabelled validation images are never trained on; every labelled one is
    # the checkpoint records the family and the source; a resume without arch takes the run's own
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["arch"] == "conv-m2" and state["source"] == src.description
    again = train(src, run, resume=True, progress=False)
    assert again.model.fingerprint() == result.model.fingerprint() and type(again.model).arch == "conv-m2"


def test_autocast_is_recorded_only_when_it_is_on(tmp_path):
    import json

    for amp, dtype, recorded in ((True, "bfloat16", "bfloat16"), (False, "bfloat16", None), (None, "bfloat16", None)):
        run = tmp_path / f"run{amp}"
        _train(_images(6), run, train_config={"amp": amp, "amp_dtype": dtype})
        assert json.loads((run / "config.json").read_text())["amp"] == recorded


def test_the_run_checks_and_resume_rules(tmp_path):
    images = _images(8)
    with pytest.raises(ConfigError, match="^resume=True and overwrite=True exclude each other: pick one$"):
        _train(images, tmp_path / "x", resume=True, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=f"^run_dir={str(tmp_path / 'file')!r} is a file: expected a directory$"):
        _train(images, tmp_path / "file")
    with pytest.raises(ConfigError, match=f"^cannot resume: {tmp_path / 'none'} holds no checkpoint.pt"):
        _train(images, tmp_path / "none", resume=True)
    assert not (tmp_path / "none").exists()
    with pytest.raises(ConfigError, match=r"^invalid train_config of type list: expected a TrainConfig, a dict or "
                                          r"None$"):
        train(images, tmp_path / "y", train_config=[1], progress=False)
    cfg = TrainConfig(epochs=1, batch_size=4, augment=None)
    first = train(images, tmp_path / "run", train_config=cfg, model_config={"latent_dim": 2}, progress=False)
    with pytest.raises(ConfigError, match=r"^cannot resume a conv-vae run as arch='conv-m2': resume uses the run's "
                                          r"own model family \(or start again with overwrite\)$"):
        train(images, tmp_path / "run", resume=True, arch="conv-m2", progress=False)
    again = train(images, tmp_path / "run", resume=True, arch="conv-vae", train_config=cfg, progress=False)
    assert again.history == first.history and again.model.fingerprint() == first.model.fingerprint()
    assert (again.n_train, again.n_val) == (first.n_train, first.n_val)
    with pytest.raises(ConfigError, match=r"^cannot resume: the data differ from the checkpoint's \(8 images, "
                                          r"fingerprint \w+ vs \w+\); pass the same source$"):
        train(_images(8, seed=1), tmp_path / "run", resume=True, progress=False)


def test_a_finished_run_drops_its_image_cache_unless_asked_to_keep_it(tmp_path):
    folder = _folder(tmp_path, n=8, broken=False)
    run = tmp_path / "run"
    result = _train(folder, run, train_config={"workers": 0})
    assert not (run / "cache").exists() and result.n_train + result.n_val == 8
    _train(folder, tmp_path / "kept", train_config={"workers": 0, "keep_cache": True})
    assert (tmp_path / "kept" / "cache" / "meta.json").exists()
    _train(folder, tmp_path / "own", train_config={"workers": 0, "cache_dir": str(tmp_path / "mine"),
                                                   "keep_cache": True})
    assert (tmp_path / "mine" / "meta.json").exists() and not (tmp_path / "own" / "cache").exists()
    # a resume with another preprocess is refused; the recorded one is used without being given
    with pytest.raises(ConfigError, match="^cannot resume with preprocess"):
        train(folder, run, resume=True, preprocess=Preprocess(16, 1), progress=False)
    again = train(folder, run, resume=True, progress=False, train_config={"workers": 0})
    assert again.model.fingerprint() == result.model.fingerprint() and not (run / "cache").exists()


def test_an_error_in_a_single_process_comes_through_as_it_is_and_the_run_dir_is_unlocked(tmp_path):
    images, run = _images(8), tmp_path / "run"

    def stop(epoch, batch_index, logs):
        if epoch == 2:
            raise RuntimeError("Connection reset by peer")  # a lost process's words, but there is no other process

    with pytest.raises(RuntimeError, match="^Connection reset by peer$") as info:
        _train(images, run, callback=stop, train_config={"epochs": 2})
    # the error (and its traceback, which holds the run's frames) is still alive: the lock is released anyway
    assert info.type is RuntimeError
    assert _train(images, run, resume=True, train_config={"epochs": 2}).epochs_run == 2


def test_progress_is_shown_by_default_and_data_dir_reaches_the_source(tmp_path, capsys, monkeypatch):
    train(_images(6), tmp_path / "run", train_config=dict(epochs=1, batch_size=4, augment=None),
          model_config={"latent_dim": 2})
    assert "epoch 1/1" in capsys.readouterr().err
    from cvae_features.errors import SourceNotFoundError

    monkeypatch.setenv("CVAE_NO_DOWNLOAD", "1")
    with pytest.raises(SourceNotFoundError, match=str(tmp_path / "mine")):
        train("mnist", tmp_path / "run2", data_dir=tmp_path / "mine", progress=False)


def test_autocast_trains_in_its_dtype(tmp_path):
    images = _images(8)
    on = _train(images, tmp_path / "on", train_config={"amp": True, "seed": 1})
    off = _train(images, tmp_path / "off", train_config={"amp": False, "seed": 1})
    assert on.model.fingerprint() != off.model.fingerprint()
    assert _train(images, tmp_path / "off2", train_config={"amp": False, "seed": 1}).model.fingerprint() == \
        off.model.fingerprint()


def test_a_checkpoint_that_does_not_fit_is_named_by_the_first_line_of_the_error(tmp_path):
    images, run = _images(8), tmp_path / "run"
    _train(images, run, train_config={"epochs": 2})
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    ckpt["finished"] = False
    ckpt["model"].pop("to_latent.bias")
    torch.save(ckpt, run / "checkpoint.pt")
    with pytest.raises(ConfigError, match=rf"^cannot resume from {run / 'checkpoint.pt'}: its saved state does not "
                                          r"fit this run \(Error\(s\) in loading state_dict for ConvVAE:\); start "
                                          r"again with overwrite$"):
        _train(images, run, resume=True, train_config={"epochs": 2})


def test_a_family_gets_its_own_config_class_and_a_checkpoint_without_arch_is_the_default_family(tmp_path):
    from cvae_features.data import ArraySource

    src = ArraySource(_images(8, seed=2)[:, 0], labels=[0, 1] * 4, label_names=["a", "b"])
    tcfg = dict(epochs=1, batch_size=4, augment=None, workers=0)
    with pytest.raises(ConfigError, match="^invalid model_config of type VAEConfig: expected a M2VAEConfig"):
        train(src, tmp_path / "m2", arch="conv-m2", model_config=VAEConfig(latent_dim=2), train_config=tcfg,
              progress=False)
    train(src, tmp_path / "m2", arch="conv-m2", model_config=M2VAEConfig(latent_dim=2), train_config=tcfg,
          progress=False)
    with pytest.raises(ConfigError, match="^invalid model_config of type VAEConfig: expected a M2VAEConfig"):
        train(src, tmp_path / "m2", resume=True, model_config=VAEConfig(latent_dim=2), progress=False)
    # a checkpoint written before runs recorded their family is a conv-vae run
    images, run = _images(8), tmp_path / "run"
    first = _train(images, run)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    del ckpt["arch"]
    torch.save(ckpt, run / "checkpoint.pt")
    again = train(images, run, resume=True, progress=False)
    assert again.model.fingerprint() == first.model.fingerprint()


def test_a_given_preprocess_is_what_a_new_run_decodes_with(tmp_path):
    folder = _folder(tmp_path, n=6, broken=False)
    result = train(folder, tmp_path / "run", preprocess=Preprocess(16, 1),
                   train_config=dict(epochs=1, batch_size=4, augment=None, workers=0),
                   model_config={"latent_dim": 2}, progress=False)
    assert result.model.config.image_size == 16


def test_load_data_edges_all_rows_asked_for_arrays_without_labels_for_classes_and_the_progress_bars(tmp_path, capsys):
    from cvae_features.data import ArraySource

    src = ArraySource(_images(6, seed=6)[:, 0], labels=[0, 1] * 3, label_names=["a", "b"])
    data = ts.load_data(src, TrainConfig(workers=0, max_images=6), {}, None, None, False)
    assert data.description == src.description and len(data.images) == 6  # all rows: not a subset
    data = ts.load_data(_images(6), TrainConfig(max_images=6), {}, None, None, False)
    assert data.description == "in-memory array of shape (6, 1, 8, 8)"
    with pytest.raises(ConfigError, match=r"^a model with classes learns them from labelled images, and in-memory "
                                          r"array of shape \(4, 1, 8, 8\) has labelled images of 0 class\(es\)"):
        ts.load_data(_images(4), TrainConfig(), {}, None, None, False, M2VAEConfig)
    folder = _folder(tmp_path, n=4, broken=False)
    capsys.readouterr()
    ts.load_data(folder, TrainConfig(workers=0), {}, None, None, False)
    ts.load_data(folder, TrainConfig(workers=0), {}, None, None, False, cache_dir=tmp_path / "c0")
    assert capsys.readouterr().err == ""
    ts.load_data(folder, TrainConfig(workers=0), {}, None, None, True)
    assert "decoding images" in capsys.readouterr().err
    ts.load_data(folder, TrainConfig(workers=0), {}, None, None, True, cache_dir=tmp_path / "c1")
    assert "caching images" in capsys.readouterr().err


def test_the_data_are_loaded_once_with_the_decoding_shown_when_progress_is_on(tmp_path, capsys):
    from cvae_features.data import ArraySource

    class Counted(ArraySource):
        reads = 0

        @property
        def label_names(self):
            Counted.reads += 1
            return self._names

        @label_names.setter
        def label_names(self, value):
            self._names = value

    ts.load_data(Counted(_images(6, seed=9)[:, 0]), TrainConfig(), {}, None, None, False)
    once, Counted.reads = Counted.reads, 0
    _train(Counted(_images(6, seed=9)[:, 0]), tmp_path / "a")
    assert once > 0 and Counted.reads == once
    folder = _folder(tmp_path, n=6, broken=False)
    capsys.readouterr()
    train(folder, tmp_path / "b", train_config=dict(epochs=1, batch_size=4, augment=None, workers=0),
          model_config={"latent_dim": 2})
    assert "caching images" in capsys.readouterr().err


def test_a_source_without_per_row_labels_or_label_names_has_unknown_labels_and_one_image_is_enough(tmp_path):
    from cvae_features.data import ArraySource

    src = ArraySource(_images(5, seed=7)[:, 0], labels=[0, 1, 0, 1, 0], label_names=["a", "b"])
    src.labels = np.empty(0, dtype=np.int64)  # a source that gives no per-row labels
    del src.label_names  # nor class names
    data = ts.load_data(src, TrainConfig(workers=0), {}, None, None, False)
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == [-1] * 5
    folder = _folder(tmp_path, n=1, broken=True, classes=("a",))
    descriptions = []
    for cache_dir in (None, tmp_path / "c"):
        data = ts.load_data(folder, TrainConfig(workers=0), {}, None, None, False, cache_dir=cache_dir)
        assert len(data.images) == 1 and data.skipped[0][0] == "a/zz_broken.png"
        assert "not an image" in data.skipped[0][1]
        assert data.spec == str(folder)
        descriptions.append(data.description)
    assert descriptions[0] == descriptions[1] and str(folder) in descriptions[0]


def test_agree_takes_a_free_field_back_to_none(tmp_path):
    saved = TrainConfig(workers=2, cache_dir="c")
    assert ts.agree("train", saved, {"workers": None, "cache_dir": None}) == TrainConfig()


def test_a_result_without_epochs_has_no_losses():
    from cvae_features.model import ConvVAE
    from cvae_features.training import TrainResult

    model = ConvVAE(VAEConfig(image_size=8, latent_dim=2))
    result = TrainResult(model=model, run_dir="r", history=[], best_epoch=0, stopped_early=False, epochs_run=0,
                         seconds=0.0, n_train=4, n_val=0, skipped=[("k", "why")])
    d = result.to_dict()
    assert d["final_train_loss"] is None and d["best_val_loss"] is None and d["n_skipped"] == 1
    assert d["run_dir"] == "r" and d["fingerprint"] == model.fingerprint()


def test_a_second_training_in_the_same_run_dir_is_refused_while_the_first_runs(tmp_path):
    images, run = _images(8), tmp_path / "run"
    refused = []

    def second(epoch, batch_index, logs):
        if not refused:
            with pytest.raises(ConfigError) as info:
                _train(images, run, overwrite=True)
            refused.append(str(info.value))

    _train(images, run, callback=second)
    assert refused == [f"run_dir {run} is in use by another training process (pid {os.getpid()}): wait for it to "
                       "finish or use another directory"]


LOADED_IN = []


def test_the_workers_setting_reaches_the_decoding_with_and_without_the_cache(tmp_path):
    from cvae_features.data import open_source

    folder = _folder(tmp_path, n=4, broken=False)
    src = open_source(str(folder))

    class Recording(type(src)):
        def load(self, i, pre):
            LOADED_IN.append(os.getpid())
            return super().load(i, pre)

    src.__class__ = Recording
    for cache_dir in (None, tmp_path / "c"):
        LOADED_IN.clear()
        data = ts.load_data(src, TrainConfig(workers=0), {}, None, None, False, cache_dir=cache_dir)
        assert len(data.images) == 4 and LOADED_IN == [os.getpid()] * 4  # decoded here, in this process
