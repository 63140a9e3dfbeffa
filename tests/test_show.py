"""Tests of cvae_features.show and `cvae show`: a tiny digits model, real PNG files, real HTML."""

import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cvae_features.errors import ConfigError, DataError, ModelError
from cvae_features.model import load_model
from cvae_features.show import INPAINT_STEPS, MASKS, ShowResult, inpaint, mask_for, show

VIEWS = ("reconstructions", "samples", "interpolations", "traversals", "inpainting", "embedding_map")
LATENT = 6
STEPS = 3  # inpainting steps where their number is not what a test looks at (the default is 100)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from cvae_features.training import TrainConfig, train

    out = tmp_path_factory.mktemp("run") / "digits-run"
    train("digits", out, model_config={"latent_dim": LATENT, "widths": [16]},
          train_config=TrainConfig(epochs=2, batch_size=64, device="cpu", seed=0), progress=False)
    return out


@pytest.fixture(scope="module")
def shown(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("show") / "look"
    return show(run_dir, out, n=16, seed=0, inpaint_steps=STEPS), out


@pytest.fixture(scope="module")
def digits_images():
    from sklearn.datasets import load_digits

    x = load_digits().images  # (1797, 8, 8) in 0..16
    return torch.as_tensor(np.round(x * 255.0 / 16.0).astype(np.uint8)).unsqueeze(1)


class _ImgSources(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.tags = [], set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def test_every_view_is_a_png_of_sensible_size(shown):
    result, out = shown
    assert isinstance(result, ShowResult)
    assert sorted(result.files) == sorted(VIEWS)
    for name in VIEWS:
        path = result.files[name]
        assert path == out / f"{name}.png" and path.is_file()
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert img.format == "PNG"
            w, h = img.size
            # 8x8 digits are scaled up to 64x64 tiles: every grid is at least one tile in each direction.
            assert 64 <= w <= 4000 and 64 <= h <= 4000, (name, img.size)
            if name != "embedding_map":
                assert img.mode == "L"  # one channel is drawn in grayscale
    with Image.open(result.files["reconstructions"]) as img:
        # 16 images, 8 a row: 4 rows (original / reconstruction twice) of 64-px tiles and 8 columns.
        assert img.size[1] >= 4 * 64 and img.size[0] >= 8 * 64
    with Image.open(result.files["traversals"]) as img:
        assert img.size[1] >= LATENT * 64  # one row per traversed dimension (latent 6 < 8)


def test_result_records_what_was_shown(shown, run_dir):
    result, out = shown
    model = load_model(run_dir)
    assert result.fingerprint == model.fingerprint()
    assert result.config == model.config.to_dict()
    assert result.n_images == 16
    assert result.map_from == "source" and result.map_points == 1797  # all digits, under the 2000 cap
    assert sorted(result.traversal_dims) == list(range(LATENT))  # every dimension of a 6-d latent, once
    assert result.traversal_kl == sorted(result.traversal_kl, reverse=True)  # most active first
    assert all(k >= 0 for k in result.traversal_kl)
    assert "digits" in result.source
    assert result.inpaint_mask == "right" and result.inpaint_steps == STEPS
    saved = json.loads((out / "show.json").read_text())
    assert saved["fingerprint"] == result.fingerprint and saved["files"]["samples"] == "samples.png"
    assert saved["inpaint_steps"] == STEPS and saved["inpaint_mask"] == "right"
    assert saved["index"] == "index.html" and all((out / name).is_file() for name in saved["files"].values())


def test_index_html_references_exactly_the_written_files(shown, run_dir):
    result, out = shown
    text = result.index.read_text(encoding="utf-8")
    parser = _ImgSources()
    parser.feed(text)
    assert sorted(parser.srcs) == sorted(f"{name}.png" for name in VIEWS)
    for src in parser.srcs:
        assert "/" not in src and (out / src).is_file()  # relative, in the same folder
    assert not re.search(r"https?://", text)
    assert "script" not in parser.tags and "link" not in parser.tags
    assert result.fingerprint in text
    assert f"{STEPS} Adam steps" in text and f"{INPAINT_STEPS} Adam steps" not in text
    assert "latent_dim" in text and "<h2>" in text
    assert text.count("<h2>") >= len(VIEWS)


def test_inpainting_keeps_known_pixels_and_fills_the_rest(run_dir, digits_images):
    model = load_model(run_dir)
    images = digits_images[:12]
    for mask in MASKS:
        known = mask_for(mask, 1, 8)
        assert 0 < int(known.sum()) < 64
        filled = inpaint(model, images, known, steps=5)
        assert filled.dtype == torch.uint8 and filled.shape == images.shape
        k = known.expand_as(images)
        assert torch.equal(filled[k], images[k])
        # The hidden part comes from the decoder, not from the mid-grey start value.
        assert not torch.all(filled[~k] == 128)
    assert mask_for("right", 1, 8)[0, :, :4].all() and not mask_for("right", 1, 8)[0, :, 4:].any()


def test_inpainting_leaves_the_model_as_it_was(run_dir, digits_images):
    model = load_model(run_dir)
    before = model.fingerprint()
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    inpaint(model, digits_images[:4], mask_for("centre", 1, 8), steps=3)
    assert model.fingerprint() == before and model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    # a submodule the caller froze in eval mode stays so; and it works under inference_mode
    first = next(m for m in model.modules() if m is not model)
    first.eval()
    with torch.inference_mode():
        filled = inpaint(model, digits_images[:4], mask_for("right", 1, 8), steps=3)
    assert filled.shape == digits_images[:4].shape and model.training and not first.training


def test_inpainting_error_on_bad_arguments(run_dir, digits_images):
    model = load_model(run_dir)
    with pytest.raises(ConfigError, match="mask='left'"):
        mask_for("left", 1, 8)
    with pytest.raises(ConfigError, match="steps=0"):
        inpaint(model, digits_images[:2], mask_for("right", 1, 8), steps=0)
    for lr in (0, True, float("nan")):
        with pytest.raises(ConfigError, match="lr="):
            inpaint(model, digits_images[:2], mask_for("right", 1, 8), lr=lr)
    assert inpaint(model, digits_images[:2], mask_for("right", 1, 8), steps=1, lr=np.float32(0.1)).shape[0] == 2


def test_same_seed_same_pictures_other_seed_other_samples(run_dir, tmp_path):
    a = show(run_dir, tmp_path / "a", n=4, seed=3, map_points=200, inpaint_steps=STEPS)
    b = show(run_dir, tmp_path / "b", n=4, seed=3, map_points=200, inpaint_steps=STEPS)
    c = show(run_dir, tmp_path / "c", n=4, seed=4, map_points=200, inpaint_steps=STEPS)
    for name in ("samples", "reconstructions", "inpainting"):
        assert a.files[name].read_bytes() == b.files[name].read_bytes(), name
        assert a.files[name].read_bytes() != c.files[name].read_bytes(), name
    assert a.files["embedding_map"].read_bytes() == b.files["embedding_map"].read_bytes()
    assert a.n_images == 4


def test_inpaint_steps_change_only_the_inpainting_view(run_dir, tmp_path):
    a = show(run_dir, tmp_path / "a", n=4, seed=3, map_points=200, inpaint_steps=1)
    b = show(run_dir, tmp_path / "b", n=4, seed=3, map_points=200, inpaint_steps=40)
    assert (a.inpaint_steps, b.inpaint_steps) == (1, 40)
    for name in VIEWS:
        same = a.files[name].read_bytes() == b.files[name].read_bytes()
        assert same == (name != "inpainting"), name
    assert "1 Adam steps" in a.index.read_text() and "40 Adam steps" in b.index.read_text()
    # the view is what inpaint() gives with that many steps
    model = load_model(run_dir)
    with Image.open(b.files["inpainting"]) as img:
        grid = np.asarray(img)
    known = mask_for("right", 1, 8)
    images = torch.as_tensor(np.stack([_tile(grid, 2, c) for c in range(4)]))[:, None]
    filled = inpaint(model, images, known, steps=40)
    for c in range(4):
        np.testing.assert_array_equal(_tile(grid, 1, c), filled[c, 0].numpy())
    assert not all(np.array_equal(_tile(grid, 1, c), inpaint(model, images, known, steps=1)[c, 0].numpy())
                   for c in range(4))
    for bad in (0, -3, True, 2.0, "5"):
        with pytest.raises(ConfigError, match="inpaint_steps="):
            show(run_dir, tmp_path / "bad", inpaint_steps=bad)
    assert not (tmp_path / "bad").exists()


def test_show_on_a_labelled_folder_and_an_array(run_dir, digits_images, tmp_path):
    from sklearn.datasets import load_digits

    y = load_digits().target
    folder = tmp_path / "imgs"
    for cls in (0, 1, 7):
        (folder / f"class{cls}").mkdir(parents=True)
        for i in np.flatnonzero(y == cls)[:8]:
            Image.fromarray(digits_images[i, 0].numpy(), mode="L").save(folder / f"class{cls}" / f"{i}.png")
    result = show(run_dir, tmp_path / "from-folder", source=str(folder), n=8, inpaint_steps=STEPS)
    assert result.map_points == 24 and result.n_images == 8
    assert str(folder) in result.source

    model = load_model(run_dir)
    result = show(model, tmp_path / "from-array", source=digits_images[:30], n=6, inpaint_steps=STEPS)
    assert result.map_points == 30 and result.n_images == 6
    assert all(p.is_file() for p in result.files.values())
    with pytest.raises(DataError, match="expected uint8 of shape"):
        show(model, tmp_path / "bad", source=digits_images[:30].float())


def test_recorded_source_that_cannot_be_opened_asks_for_source(run_dir, tmp_path):
    moved = tmp_path / "run"
    moved.mkdir()
    (moved / "model.pt").write_bytes((run_dir / "model.pt").read_bytes())
    config = json.loads((run_dir / "config.json").read_text())
    config["source"] = {"description": "folder /no/such/folder (3 images, unlabelled)"}
    (moved / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="pass --source") as err:
        show(moved, tmp_path / "out")
    assert "\n" not in str(err.value) and "/no/such/folder" in str(err.value)

    bare = tmp_path / "bare.pt"
    bare.write_bytes((run_dir / "model.pt").read_bytes())
    with pytest.raises(DataError, match="no source is recorded"):
        show(bare, tmp_path / "out")
    assert show(bare, tmp_path / "out", source="digits", n=2, inpaint_steps=STEPS).n_images == 2


def test_bad_model_paths_and_arguments(tmp_path, run_dir):
    with pytest.raises(ModelError, match="not found"):
        show(tmp_path / "missing", tmp_path / "out")
    junk = tmp_path / "junk.pt"
    junk.write_text("not a model")
    with pytest.raises(ModelError):
        show(junk, tmp_path / "out")
    with pytest.raises(ModelError, match="no model.pt"):
        show(tmp_path, tmp_path / "out")
    with pytest.raises(ConfigError, match="n=1"):
        show(run_dir, tmp_path / "out", n=1)
    with pytest.raises(ConfigError, match="seed=-1"):
        show(run_dir, tmp_path / "out", seed=-1)
    assert not (tmp_path / "out").exists()  # nothing written on bad input


def test_show_a_store_maps_its_own_features(run_dir, tmp_path):
    from cvae_features.extraction import extract
    from cvae_features.store import FeatureStore

    store = tmp_path / "digits.h5"
    extract("digits", store, model=run_dir, carry_weights=True, device="cpu", progress=False)
    result = show(store, tmp_path / "out", n=4, map_points=500, inpaint_steps=STEPS)
    assert result.map_from == "store" and result.map_points == 500  # subsampled from the store's 1797 rows
    assert result.fingerprint == load_model(run_dir).fingerprint()
    with FeatureStore(store) as fs:
        assert result.source.startswith(fs.source.split(" ", 1)[0])  # reopened from the recorded source
    assert all(p.is_file() for p in result.files.values())

    bare = tmp_path / "no-weights.h5"
    extract("digits:test", bare, model=run_dir, carry_weights=False, device="cpu", progress=False)
    with pytest.raises(ModelError, match="only the fingerprint"):
        show(bare, tmp_path / "out2")


def _tile(grid, row, col, side=8, scale=8, pad=2):
    """The image at (row, col) of a _save_grid picture with row labels, at its original side."""
    label_w = grid.shape[1] - pad - 4 * (side * scale + pad)  # 4 columns
    y, x = pad + row * (side * scale + pad), label_w + pad + col * (side * scale + pad)
    return grid[y:y + side * scale:scale, x:x + side * scale:scale]


def _cli():
    from cvae_cli.main import cli

    return cli


def test_cli_show_lists_the_folder_and_files(run_dir, tmp_path):
    out = tmp_path / "cli-out"
    result = CliRunner().invoke(_cli(), ["show", str(run_dir), "-o", str(out), "--n", "4", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and "index.html" in result.output
    for name in VIEWS:
        assert f"{name}.png" in result.output
        assert (out / f"{name}.png").is_file()
    assert json.loads((out / "show.json").read_text())["inpaint_steps"] == INPAINT_STEPS == 100  # the default

    result = CliRunner().invoke(_cli(), ["show", str(run_dir), "-o", str(tmp_path / "j"), "--n", "2", "--json",
                                         "--inpaint-steps", "2"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["n_images"] == 2 and json.loads(result.output)["inpaint_steps"] == 2

    result = CliRunner().invoke(_cli(), ["show", str(run_dir), "-o", str(tmp_path / "z"), "--inpaint-steps", "0"])
    assert result.exit_code == 2 and "--inpaint-steps" in result.output and not (tmp_path / "z").exists()


@pytest.mark.parametrize("make", ["missing", "junk"])
def test_cli_bad_path_is_one_line(tmp_path, make):
    path = tmp_path / "model.pt"
    if make == "junk":
        path.write_text("hello")
    result = CliRunner().invoke(_cli(), ["show", str(path), "-o", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith("Error:") and str(path) in result.output
    assert "Traceback" not in result.output


# -- the views follow model.prior --------------------------------------------------------------

class _NarrowPrior:
    """N(c, s^2 I): far from N(0, I), so a view that assumes N(0, I) instead of asking model.prior shows it."""

    def __init__(self, c, s):
        self.c, self.s, self.dim = c, s, len(c)

    def sample(self, n, generator=None, device=None):
        return self.c + self.s * torch.randn(n, self.dim, generator=generator)

    def log_prob(self, z):
        return (-0.5 * ((z - self.c) / self.s).pow(2) - np.log(self.s) - 0.5 * np.log(2 * np.pi)).sum(1)

    def kl_per_dim(self, mu, logvar):
        var = logvar.float().exp()
        return 0.5 * ((var + (mu.float() - self.c) ** 2) / self.s ** 2 - 1 - logvar.float() + 2 * np.log(self.s))

    @property
    def mean(self):
        return self.c

    @property
    def stddev(self):
        return torch.full((self.dim,), self.s)


def _tiles(path, size=8, scale=8, pad=2):
    """The (S, S) images of a samples.png grid (no row labels), at their original size."""
    canvas = np.asarray(Image.open(path))
    cell = size * scale
    rows, cols = (canvas.shape[0] - pad) // (cell + pad), (canvas.shape[1] - pad) // (cell + pad)
    return [canvas[pad + r * (cell + pad):pad + r * (cell + pad) + cell:scale,
                   pad + c * (cell + pad):pad + c * (cell + pad) + cell:scale]
            for r in range(rows) for c in range(cols)]


def test_samples_traversals_and_ranking_come_from_the_models_prior(run_dir, digits_images, tmp_path):
    from cvae_features.show import _active_dims, _decode, _traversal_codes

    model = load_model(run_dir)
    c = torch.linspace(-1.5, 1.5, LATENT)
    target = _decode(model, c[None])[0, 0].numpy()
    standard = show(model, tmp_path / "standard", source=digits_images[:40], n=16, seed=0)
    spread = [np.abs(t.astype(int) - target).max() for t in _tiles(standard.files["samples"])]
    assert len(spread) == 16 and max(spread) > 20  # N(0, I) samples are varied digits

    model.prior = _NarrowPrior(c, 1e-4)
    narrow = show(model, tmp_path / "narrow", source=digits_images[:40], n=16, seed=0)
    tiles = _tiles(narrow.files["samples"])
    assert len(tiles) == 16 and all(np.abs(t.astype(int) - target).max() <= 1 for t in tiles)
    for result, words in ((standard, "(N(0, I))"), (narrow, "(_NarrowPrior)")):  # the captions name the prior
        page = (result.out_dir / "index.html").read_text()
        assert f"Codes drawn from the model&#x27;s prior {words} and decoded" in page
        assert f"standard deviations (prior: {words[1:-1]})" in page

    base = torch.zeros(LATENT)
    z = _traversal_codes(model.prior, base, 2)
    torch.testing.assert_close(z[:, 2], c[2] + 1e-4 * torch.linspace(-3, 3, 9))
    assert torch.equal(z[:, [0, 1, 3, 4, 5]], torch.zeros(9, 5))
    standard_z = _traversal_codes(load_model(run_dir).prior, base, 2)
    assert torch.equal(standard_z[:, 2], torch.linspace(-3, 3, 9))

    mu, logvar = model.encode(digits_images[:40].float() / 255)
    dims, kl = _active_dims(model.prior, mu.detach(), logvar.detach())
    expected = model.prior.kl_per_dim(mu.detach(), logvar.detach()).mean(0)
    assert dims == torch.argsort(expected, descending=True).tolist()
    assert kl == pytest.approx(expected[dims].tolist(), rel=1e-6)
    assert min(kl) > 1e3  # the standard prior's KL of these codes is about 1 per dimension


def test_inpainting_uses_the_models_prior(run_dir, digits_images):
    from cvae_features.show import _decode

    model = load_model(run_dir)
    images, known = digits_images[:8], mask_for("right", 1, 8)
    hidden = ~known.expand_as(images)
    c = torch.linspace(-1.5, 1.5, LATENT)
    target = _decode(model, c[None]).expand_as(images)
    standard = inpaint(model, images, known)
    assert (standard[hidden].float() - target[hidden].float()).abs().mean() > 1.0
    model.prior = _NarrowPrior(c, 0.01)  # a prior this narrow pins the code at c: the fill is decode(c)
    filled = inpaint(model, images, known, steps=300)  # Adam moves z at most lr (0.05) a step
    assert (filled[hidden].int() - target[hidden].int()).abs().max() <= 2
    assert torch.equal(filled[~hidden], images[~hidden])
