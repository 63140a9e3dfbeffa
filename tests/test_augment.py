"""Training-time augmentation: the spec string, each perturbation's values, the keyed draws and the loop's use."""

import json
import math
import warnings

import pytest
import torch
from click.testing import CliRunner

from cvae_features._train_loop import Loop
from cvae_features._train_setup import derive_seed
from cvae_features.augment import Augment, _uniform, check_augment, resolve_augment
from cvae_features.errors import ConfigError
from cvae_features.model import ConvVAE, VAEConfig
from cvae_features.vade import ConvVaDE, VaDEConfig
from cvae_features.noise import keyed_normal
from cvae_features.training import TrainConfig, train
from test_train_seams import _RecordingVAE  # a ConvVAE that keeps every batch it is given


# -- the spec string -----------------------------------------------------------------------------

def test_spec_round_trip_and_canonical_form():
    a = Augment.parse(" noise=0.10 , shift=2,flip, erase=0.25,crop=0.8, target=same")
    assert a == Augment(shift=2, crop=0.8, flip=True, noise=0.1, erase=0.25, target="same")
    assert a.spec() == "shift=2,crop=0.8,flip,noise=0.1,erase=0.25,target=same"
    assert Augment.parse(a.spec()) == a and a.active
    for one in ("shift=1", "crop=0.9", "flip", "noise=0.1", "erase=0.1", "flip,target=same"):
        assert Augment.parse(one).active and Augment.parse(one).spec() is not None
    assert Augment.parse("shift=1,target=clean").spec() == "shift=1"  # clean is the default: not written
    for nothing in (None, "", "  ", "none", "NONE", "target=same", "shift=0,noise=0,crop=1"):
        assert Augment.parse(nothing).spec() is None and not Augment.parse(nothing).active
    assert check_augment("noise=0.2,shift=3") == "shift=3,noise=0.2"
    assert TrainConfig(augment="noise=0.20,shift=1").augment == "shift=1,noise=0.2"
    assert TrainConfig(augment="none").augment is None and TrainConfig(augment=None).augment is None
    assert TrainConfig.from_dict(TrainConfig(augment="flip").to_dict()).augment == "flip"


@pytest.mark.parametrize("spec, message", [
    ("rotate=10", "unknown augmentation 'rotate'"),
    ("shift=1,shift=2", "'shift' given twice"),
    ("flip=1", "flip takes no value"),
    ("shift", "'shift' needs a value"),
    ("noise=", "'noise' needs a value"),
    ("shift=1.5", "invalid augment shift='1.5': expected an integer from 0 to 64"),
    ("shift=-1", "invalid augment shift=-1"),
    ("shift=65", "invalid augment shift=65"),
    ("crop=0", "invalid augment crop=0.0: expected a number in (0, 1]"),
    ("crop=1.2", "invalid augment crop=1.2"),
    ("noise=1.5", "invalid augment noise=1.5: expected a number from 0 to 1"),
    ("noise=-0.1", "invalid augment noise=-0.1"),
    ("noise=nan", "invalid augment noise=nan"),
    ("erase=2", "invalid augment erase=2.0"),
    ("noise=abc", "invalid augment noise='abc'"),
    ("target=both", "invalid augment target='both': expected 'clean' or 'same'"),
])
def test_bad_specs_name_what_is_wrong(spec, message):
    with pytest.raises(ConfigError, match="^.*$") as err:
        TrainConfig(augment=spec)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_spec_that_is_not_a_string_is_refused():
    with pytest.raises(ConfigError, match="expected a spec string"):
        TrainConfig(augment=3)
    with pytest.raises(ConfigError, match="True or False"):
        Augment(flip=1)


# -- what each perturbation does -----------------------------------------------------------------

def _dots(n, size=12, at=(5, 6)):
    x = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    x[:, 0, at[0], at[1]] = 255
    return x


def test_shift_moves_a_dot_by_whole_pixels_and_every_offset_occurs():
    y = Augment(shift=2)(_dots(400), 7, torch.arange(400))
    assert y.dtype == torch.float32 and y.shape == (400, 1, 12, 12)
    offsets = set()
    for img in y[:, 0]:
        assert torch.allclose(img.sum(), torch.tensor(1.0), atol=1e-5)  # moved whole, not smeared
        (r, c), = (img > 0.5).nonzero().tolist()
        assert img[r, c] == pytest.approx(1.0, abs=1e-5)
        offsets.add((r - 5, c - 6))
    assert offsets == {(dr, dc) for dr in range(-2, 3) for dc in range(-2, 3)}


def test_flip_mirrors_half_of_the_images_exactly():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (200, 3, 6, 6), dtype=torch.uint8, generator=g)
    y = Augment(flip=True)(x, 1, torch.arange(200))
    xf = x.float() / 255
    same = torch.isclose(y, xf, atol=1e-5).flatten(1).all(1)
    mirrored = torch.isclose(y, xf.flip(-1), atol=1e-5).flatten(1).all(1)
    assert bool((same ^ mirrored).all())  # each image is one or the other
    assert 70 < int(mirrored.sum()) < 130


def test_crop_zooms_in_by_a_factor_between_the_bound_and_one():
    size = 32
    ramp = torch.linspace(0, 1, size).repeat(size, 1)[None, None].repeat(300, 1, 1, 1)
    y = Augment(crop=0.5)(ramp, 3, torch.arange(300))
    # the horizontal gradient in the middle rows: the ramp's slope times the window's side share
    slope = (y[:, 0, 10:22, 12:20].diff(dim=-1).mean(dim=(-1, -2))) / (1 / (size - 1))
    assert bool((slope > 0.5 - 0.02).all()) and bool((slope < 1.0 + 0.02).all())
    assert float(slope.min()) < 0.6 and float(slope.max()) > 0.9  # the range is used
    assert float(y.min()) >= 0 and float(y.max()) <= 1


def test_erase_zeroes_one_square_of_the_given_side():
    x = torch.full((50, 1, 10, 10), 255, dtype=torch.uint8)
    y = Augment(erase=0.3)(x, 2, torch.arange(50))
    corners = set()
    for img in y[:, 0]:
        zero = (img == 0).nonzero()
        assert len(zero) == 9 and bool(((img == 0) | (img == 1)).all())
        (r0, c0), (r1, c1) = zero.min(0).values.tolist(), zero.max(0).values.tolist()
        assert (r1 - r0, c1 - c0) == (2, 2)  # a 3 x 3 square
        corners.add((r0, c0))
    assert len(corners) > 20 and min(r for r, _ in corners) == 0 and max(r for r, _ in corners) == 7


def test_noise_has_the_asked_standard_deviation_and_is_clipped():
    x = torch.full((20, 1, 16, 16), 128, dtype=torch.uint8)
    y = Augment(noise=0.1)(x, 4, torch.arange(20))
    residual = y - 128 / 255
    assert abs(float(residual.mean())) < 0.01 and float(residual.std()) == pytest.approx(0.1, rel=0.05)
    z = Augment(noise=1.0)(x, 4, torch.arange(20))
    assert float(z.min()) == 0.0 and float(z.max()) == 1.0  # clipped to the pixel range


def test_draws_depend_on_key_and_row_only():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (16, 1, 12, 12), dtype=torch.uint8, generator=g)
    aug = Augment(shift=2, crop=0.9, flip=True, noise=0.05, erase=0.2)
    rows = torch.arange(100, 116)
    y = aug(x, 9, rows)
    perm = torch.randperm(16, generator=g)
    assert torch.equal(aug(x[perm], 9, rows[perm]), y[perm])  # batch order does not matter
    assert torch.equal(aug(x[:5], 9, rows[:5]), y[:5])  # nor the batch's other images
    assert not torch.allclose(aug(x, 10, rows), y)  # another key (epoch) draws again
    assert not torch.allclose(aug(x, 9, rows + 1), y)  # another row too
    assert torch.equal(Augment()(x, 9, rows), x.float() / 255)  # nothing asked: the clean images


# -- the model and the loop ----------------------------------------------------------------------

@pytest.mark.parametrize("family", ["conv-vae", "conv-vade"])
def test_the_encoder_sees_the_inputs_and_the_decoder_is_scored_against_the_images(family):
    torch.manual_seed(0)
    small = {"image_size": 8, "latent_dim": 4, "widths": (8,)}
    model = (ConvVAE(VAEConfig(**small)) if family == "conv-vae"
             else ConvVaDE(VaDEConfig(**small, n_clusters=3, pretrain_steps=2, init_rows=8))).eval()
    g = torch.Generator().manual_seed(2)
    clean = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8, generator=g)
    inputs = torch.rand(6, 1, 8, 8, generator=g)
    out = model.loss({"images": clean, "inputs": inputs, "index": torch.arange(6)}, beta=0.5)
    mu, logvar = model.encode(inputs)
    assert torch.equal(out.mu, mu)
    expected = model.reconstruction_nll(model.decode(mu), clean.float() / 255)
    assert torch.allclose(out.recon_per_sample, expected)
    plain = model.loss({"images": clean, "index": torch.arange(6)}, beta=0.5)
    assert torch.equal(plain.mu, model.encode(clean)[0]) and not torch.allclose(plain.mu, out.mu)


def _loop_batches(tmp_path, augment):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=g)
    tcfg = TrainConfig(epochs=2, batch_size=16, device="cpu", seed=3, augment=augment)
    loop = Loop(VAEConfig(image_size=8, latent_dim=4, widths=(8,)), tcfg, torch.device("cpu"), None,
                images[8:], images[:8], False, model_class=_RecordingVAE, is_main_process=False)
    (tmp_path / "run").mkdir()
    loop.run(tmp_path / "run", {})
    return images[8:], loop.model.seen


@pytest.mark.parametrize("target", ["clean", "same"])
def test_the_loop_hands_the_keyed_perturbation_of_each_row_to_the_model(tmp_path, target):
    spec = "shift=1,noise=0.1" + (",target=same" if target == "same" else "")
    train_x, seen = _loop_batches(tmp_path, spec)
    training = [b for t, b in seen if t]
    assert len(training) == 2 * 2
    for i, batch in enumerate(training):
        epoch = 1 + i // 2
        expected = Augment.parse(spec)(train_x[batch["index"]], derive_seed(3, "augment", epoch), batch["index"])
        if target == "clean":
            assert set(batch) == {"images", "labels", "index", "noise_key", "inputs"}
            assert torch.equal(batch["images"], train_x[batch["index"]])
            assert torch.equal(batch["inputs"], expected)
        else:
            assert "inputs" not in batch and torch.equal(batch["images"], expected)
    for _, batch in (b for b in seen if not b[0]):  # validation: the clean images only
        assert "inputs" not in batch and batch["images"].dtype == torch.uint8


def test_augmented_training_differs_from_plain_and_resumes_exactly(tmp_path, digits8):
    cfg = dict(epochs=2, batch_size=64, augment="shift=1,erase=0.25")
    plain = train(digits8, tmp_path / "plain", model_config={"latent_dim": 4}, train_config=dict(cfg, augment=None),
                  progress=False)
    full = train(digits8, tmp_path / "full", model_config={"latent_dim": 4}, train_config=cfg, progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(plain.model.state_dict().values(),
                                                      full.model.state_dict().values()))

    class Stop(Exception):
        pass

    def crash(epoch, batch_index, logs):
        if epoch == 2 and batch_index == 1:
            raise Stop()

    with pytest.raises(Stop):
        train(digits8, tmp_path / "cut", model_config={"latent_dim": 4}, train_config=cfg, progress=False,
              callback=crash)
    resumed = train(digits8, tmp_path / "cut", resume=True, progress=False)
    for k, v in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    with pytest.raises(ConfigError, match="augment"):  # a resume keeps the run's own augmentation
        train(digits8, tmp_path / "cut", train_config=dict(cfg, augment="noise=0.1"), resume=True, progress=False)
    saved = json.loads((tmp_path / "full" / "config.json").read_text())
    assert saved["train_config"]["augment"] == "shift=1,erase=0.25"


@pytest.fixture(scope="module")
def digits8():
    from sklearn.datasets import load_digits

    return torch.from_numpy((load_digits().images[:300] * 255 / 16).round()).to(torch.uint8)[:, None]


def test_cli_augment_option_and_its_one_line_error(tmp_path):
    from cvae_cli.main import cli

    ok = CliRunner().invoke(cli, ["train", "digits", "-o", str(tmp_path / "r"), "--epochs", "1", "--latent-dim", "4",
                                  "--max-images", "200", "--augment", "noise=0.05,shift=1", "--no-progress"])
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "r" / "config.json").read_text())["train_config"]["augment"] == "shift=1,noise=0.05"
    bad = CliRunner().invoke(cli, ["train", "digits", "-o", str(tmp_path / "b"), "--augment", "blur=2",
                                   "--no-progress"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output
    assert bad.output.strip().splitlines() == [bad.output.strip()] and "unknown augmentation 'blur'" in bad.output


# -- each draw where the recipe puts it (the values, not only their spread) ----------------------

def _u(key, rows):
    """The draws of each row mapped to (0, 1) by the normal distribution function (float64 erfc, then float32)."""
    z = keyed_normal(key, rows, 8).double()
    return torch.tensor([[0.5 * math.erfc(-v / math.sqrt(2)) for v in r] for r in z.tolist()]).float() \
        .clamp(1e-7, 1 - 1e-7)


def test_uniform_is_the_normal_distribution_function_kept_inside_0_and_1():
    z = torch.tensor([-40.0, -6.0, -1.0, 0.0, 0.5, 2.0, 6.0, 40.0])
    expected = torch.tensor([1e-7, 1e-7] + [0.5 * math.erfc(-v / math.sqrt(2)) for v in (-1.0, 0.0, 0.5, 2.0)]
                            + [1 - 1e-7, 1 - 1e-7], dtype=torch.float32)
    got = _uniform(z)
    assert got.dtype == torch.float32 and torch.equal(got, expected)


def test_shift_crop_and_flip_move_each_image_by_its_own_draws():
    """Two ramps (x in channel 0, y in channel 1) read back where each output pixel was sampled from."""
    h, w, n, key = 12, 16, 96, 11
    rows = torch.arange(n) * 7 + 3
    gx, gy = torch.arange(w, dtype=torch.float64) / (w - 1), torch.arange(h, dtype=torch.float64) / (h - 1)
    x = torch.stack([gx.repeat(h, 1), gy[:, None].repeat(1, w)]).float()[None].repeat(n, 1, 1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (torch warns when align_corners is left to its default)
        y = Augment(shift=2, crop=0.6, flip=True)(x, key, rows.int())  # any integer rows
    u = _u(key, rows).double()
    dx, dy = (u[:, 0] * 5).floor() - 2, (u[:, 1] * 5).floor() - 2
    scale = 0.6 + 0.4 * u[:, 2]
    sign = torch.where(u[:, 5] < 0.5, -1.0, 1.0)
    # output pixel centre j at (2j + 1) / w - 1; it samples the source at sign * scale * that + centre + shift
    ox = (2 * torch.arange(w, dtype=torch.float64) + 1) / w - 1
    oy = (2 * torch.arange(h, dtype=torch.float64) + 1) / h - 1
    sx = sign[:, None] * scale[:, None] * ox + ((2 * u[:, 3] - 1) * (1 - scale) + 2 * dx / w)[:, None]
    sy = scale[:, None] * oy + ((2 * u[:, 4] - 1) * (1 - scale) + 2 * dy / h)[:, None]
    px, py = ((sx + 1) * w - 1) / 2, ((sy + 1) * h - 1) / 2  # in source pixels
    inside = ((px >= 0) & (px <= w - 1))[:, None, :] & ((py >= 0) & (py <= h - 1))[:, :, None]
    expected = torch.stack([(px / (w - 1))[:, None, :].expand(n, h, w), (py / (h - 1))[:, :, None].expand(n, h, w)], 1)
    mask = inside[:, None].expand(n, 2, h, w)
    assert int(inside.sum()) > n * h * w // 2
    torch.testing.assert_close(y[mask].double(), expected[mask], rtol=0, atol=2e-5)
    outside = ((px < -1) | (px > w))[:, None, :] | ((py < -1) | (py > h))[:, :, None]
    assert bool((y.permute(1, 0, 2, 3)[:, outside] == 0).all())  # zeros come in
    assert set(dx.tolist()) == set(dy.tolist()) == {-2.0, -1.0, 0.0, 1.0, 2.0} and 0 < int((sign < 0).sum()) < n


def test_erase_and_noise_use_their_own_draws_on_images_that_are_not_square():
    h, w, n, key = 10, 14, 40, 5
    rows = torch.arange(n) + 1000
    x = torch.randint(1, 256, (n, 2, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    u = _u(key, rows)
    for erase, side in ((0.3, 3), (0.04, 1), (1.0, 10)):  # side = round(erase * min(h, w)), at least 1
        y = Augment(erase=erase)(x, key, rows)
        expected = x.float() / 255
        for i in range(n):
            top, left = int(u[i, 6] * (h - side + 1)), int(u[i, 7] * (w - side + 1))
            expected[i, :, top:top + side, left:left + side] = 0
        assert torch.equal(y, expected), erase
    tops = (u[:, 6] * 8).floor()
    assert int(tops.min()) == 0 and int(tops.max()) == 7  # every position occurs, both ends included
    eps = keyed_normal(key + 1, rows, 2 * h * w).view(n, 2, h, w)  # a second key for the pixel noise
    y = Augment(erase=0.3, noise=0.5)(x, torch.tensor(key), rows)
    erased = Augment(erase=0.3)(x, key, rows)
    torch.testing.assert_close(y, (erased + 0.5 * eps).clamp(0, 1), rtol=0, atol=1e-6)
    top = 2 ** 31 - 1  # the second key is one more, in 64 bits, whatever integer type the key came in
    y = Augment(noise=0.5)(x, torch.tensor(top, dtype=torch.int32), rows)
    eps = keyed_normal(2 ** 31, rows, 2 * h * w).view(n, 2, h, w)
    torch.testing.assert_close(y, (x.float() / 255 + 0.5 * eps).clamp(0, 1), rtol=0, atol=1e-6)


def test_the_setting_checks_its_values_types_and_bounds():
    assert Augment(shift=64).shift == 64 and Augment(erase=1).erase == 1.0
    for name in ("crop", "noise", "erase"):
        value = getattr(Augment(**{name: 1}), name)
        assert type(value) is float and value == 1.0  # int given: stored as float
    for bad, words in (({"shift": True}, "shift=True: expected an integer from 0 to 64"),
                       ({"shift": 2.0}, "shift=2.0: expected an integer"),
                       ({"noise": True}, "noise=True: expected a number from 0 to 1"),
                       ({"erase": False}, "erase=False: expected a number from 0 to 1 (a share of the image side)"),
                       ({"crop": "0.5"}, "crop='0.5': expected a number in (0, 1]"),
                       ({"crop": float("inf")}, "crop=inf"), ({"erase": 1.01}, "erase=1.01"),
                       ({"flip": "yes"}, "flip='yes': expected True or False"),
                       ({"target": "CLEAN"}, "target='CLEAN': expected 'clean' or 'same'")):
        with pytest.raises(ConfigError) as err:
            Augment(**bad)
        assert str(err.value).startswith("invalid augment ") and words in str(err.value)


def test_a_draw_of_exactly_one_half_does_not_flip():
    row = torch.tensor([18376697])  # key 3: its flip draw is exactly 0 (u = 0.5), found by a search over rows
    assert float(keyed_normal(3, row, 8)[0, 5]) == 0.0 and float(_uniform(keyed_normal(3, row, 8))[0, 5]) == 0.5
    x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4) * 16
    assert torch.equal(Augment(flip=True)(x, 3, row), x.float() / 255)  # flipped only below one half
    assert torch.equal(Augment(flip=True)(x, 3, row + 1), x.float().flip(-1) / 255)


def test_images_on_another_device_keep_every_tensor_there_and_the_default_dtype_does_not_matter():
    """The meta device stands in for an accelerator: any tensor made on the CPU beside it fails."""
    aug = Augment(shift=1, crop=0.9, flip=True, noise=0.1, erase=0.2)
    y = aug(torch.zeros(3, 1, 8, 8, device="meta"), 5, torch.arange(3))  # rows on the CPU
    assert y.device.type == "meta" and y.shape == (3, 1, 8, 8) and y.dtype == torch.float32
    x = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    expected = aug(x, 5, torch.arange(3))
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert torch.equal(aug(x, 5, torch.arange(3)), expected)
    finally:
        torch.set_default_dtype(default)


def test_the_default_is_two_pixel_shifts_reconstructed_and_old_runs_resume_without_it(tmp_path, digits8):
    assert TrainConfig().augment == "auto" == TrainConfig(augment=" AUTO ").augment
    assert TrainConfig.from_dict({"epochs": 3}).augment == "auto"  # overrides keep the default
    assert TrainConfig.from_saved({"epochs": 3}).augment is None  # a run recorded before augmentation had none
    assert TrainConfig.from_saved({"epochs": 3, "augment": "flip"}).augment == "flip"

    cfg = dict(epochs=2, batch_size=64, augment=None)
    full = train(digits8, tmp_path / "full", model_config={"latent_dim": 4}, train_config=cfg, progress=False)

    class Stop(Exception):
        pass

    def crash(epoch, batch_index, logs):
        if epoch == 2:
            raise Stop()

    with pytest.raises(Stop):
        train(digits8, tmp_path / "old", model_config={"latent_dim": 4}, train_config=cfg, progress=False,
              callback=crash)
    ckpt_path = tmp_path / "old" / "checkpoint.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    del ckpt["train_config"]["augment"]  # as a checkpoint written before the field existed
    torch.save(ckpt, ckpt_path)
    resumed = train(digits8, tmp_path / "old", resume=True, progress=False)
    for k, v in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k


@pytest.mark.parametrize("size, shift", [(8, 0), (13, 0), (14, 1), (27, 1), (28, 2), (64, 4), (256, 18)])
def test_auto_shifts_by_a_fourteenth_of_the_side_and_reconstructs_the_shifted_image(size, shift):
    assert resolve_augment("auto", size) == Augment(shift=shift, target="same")
    assert resolve_augment("Auto", size).active == (shift > 0)
    assert resolve_augment("shift=1,noise=0.1", size) == Augment(shift=1, noise=0.1)  # a spec is taken as written
    assert resolve_augment(None, size) == Augment()


def test_the_loop_resolves_auto_with_the_models_image_size(tmp_path):
    train_x, seen = _loop_batches(tmp_path, "auto")  # 8 px: nothing to shift
    assert all("inputs" not in b and b["images"].dtype == torch.uint8 for _, b in seen)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8, generator=g)
    loop = Loop(VAEConfig(image_size=28, latent_dim=4, widths=(4, 4, 4)), TrainConfig(epochs=1, batch_size=10,
                device="cpu", seed=5), torch.device("cpu"), None, images[4:], images[:4], False,
                model_class=_RecordingVAE, is_main_process=False)
    assert loop.augment == Augment(shift=2, target="same")
    (tmp_path / "r28").mkdir()
    loop.run(tmp_path / "r28", {})
    for training, batch in loop.model.seen:
        if training:
            expected = Augment(shift=2, target="same")(images[4:][batch["index"]], derive_seed(5, "augment", 1),
                                                         batch["index"])
            assert torch.equal(batch["images"], expected)
