"""ConvVAE: shapes, config validation, the loss against a hand computation, the model file."""

import math
import pickle

import numpy as np
import pytest
import torch

from cvae_features.errors import ConfigError, ModelError
from cvae_features.model import LOGVAR_MAX, LOGVAR_MIN, ConvVAE, VAEConfig, load_model


def _tiny(**kw):
    """A small model with fixed weights (seeded) for exact checks."""
    torch.manual_seed(0)
    cfg = dict(image_size=8, channels=1, latent_dim=3, widths=(4,))
    cfg.update(kw)
    return ConvVAE(VAEConfig(**cfg))


def _images(n, c, s, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, s, s), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("size", [8, 27, 28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_of_forward_embed_decode(size, channels):
    torch.manual_seed(0)
    model = ConvVAE(VAEConfig(image_size=size, channels=channels, latent_dim=5))
    x = _images(3, channels, size)
    out = model(x)
    assert out.loss.shape == () and out.recon.shape == () and out.kl.shape == ()
    assert out.mu.shape == (3, 5) and out.logvar.shape == (3, 5)
    assert out.recon_per_sample.shape == (3,) and out.kl_per_sample.shape == (3,)
    assert out.decoder_out.shape == (3, channels, size, size)
    assert model.embed(x).shape == (3, 5)
    z = torch.randn(4, 5)
    assert model.decode(z).shape == (4, channels, size, size)
    mean = model.decode_mean(z).detach()
    assert mean.shape == (4, channels, size, size)
    assert float(mean.min()) >= 0.0 and float(mean.max()) <= 1.0
    # The smallest feature map is at most 4x4, so depth grows with the size.
    assert model.config.depth == {8: 1, 27: 3, 28: 3, 32: 3, 64: 4}[size]


@pytest.mark.parametrize("field, value, expected", [
    ("image_size", 7, "8 to 256"),
    ("image_size", 257, "8 to 256"),
    ("image_size", "28", "8 to 256"),
    ("channels", 2, "1 or 3"),
    ("latent_dim", 0, "1 to 4096"),
    ("likelihood", "poisson", "'bernoulli' or 'gaussian'"),
    ("beta", -1.0, ">= 0"),
    ("beta", float("nan"), ">= 0"),
    ("convs_per_level", 0, "1 to 4"),
    ("widths", (8, 16), "1 integers"),
])
def test_config_errors_name_parameter_value_and_range(field, value, expected):
    kwargs = {"image_size": 8, field: value}
    with pytest.raises(ConfigError) as info:
        VAEConfig(**kwargs)
    message = str(info.value)
    assert f"{field}={value!r}" in message
    assert expected in message
    assert isinstance(info.value, ValueError)


def test_config_dict_round_trip_and_unknown_keys():
    cfg = VAEConfig(image_size=32, channels=3, latent_dim=16, widths=(8, 16, 32), likelihood="gaussian", beta=0.5)
    assert VAEConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown model config keys \\['depth'\\]"):
        VAEConfig.from_dict({"depth": 3})


def _softplus(a):
    return np.maximum(a, 0) + np.log1p(np.exp(-np.abs(a)))


@torch.no_grad()
def test_bernoulli_loss_equals_hand_computation():
    model = _tiny(beta=0.7).eval()
    x = _images(5, 1, 8, seed=1)
    out = model(x)
    with torch.no_grad():
        h = model.to_latent(model.encoder(x.float() / 255)).double().numpy()
        logits = model.decode(torch.from_numpy(h[:, :3]).float()).double().numpy()
    mu, logvar = h[:, :3], h[:, 3:]
    xf = x.double().numpy() / 255
    # BCE with logits l: -x log s(l) - (1-x) log(1-s(l)) = softplus(l) - x l
    bce = (_softplus(logits) - xf * logits).reshape(5, -1).sum(1)
    kl = -0.5 * (1 + logvar - mu ** 2 - np.exp(logvar)).sum(1)
    np.testing.assert_allclose(out.recon_per_sample.detach().numpy(), bce, rtol=1e-5)
    np.testing.assert_allclose(out.kl_per_sample.detach().numpy(), kl, rtol=1e-5, atol=1e-6)
    assert float(out.loss) == pytest.approx(float(np.mean(bce + 0.7 * kl)), rel=1e-5)
    assert float(out.recon) == pytest.approx(float(bce.mean()), rel=1e-5)
    # beta given to forward overrides the config's
    assert float(model(x, beta=0.0).loss) == pytest.approx(float(bce.mean()), rel=1e-5)


@torch.no_grad()
def test_gaussian_loss_equals_hand_computation():
    model = _tiny(likelihood="gaussian", beta=2.0).eval()
    with torch.no_grad():
        model.log_sigma2.fill_(-1.5)
    x = _images(4, 1, 8, seed=2).float() / 255  # float input in [0, 1] is taken as is
    out = model(x)
    with torch.no_grad():
        mu, logvar = (t.double().numpy() for t in model.encode(x))
        mean = model.decode(torch.from_numpy(mu).float()).double().numpy()
    xf = x.double().numpy()
    nll = 0.5 * ((xf - mean) ** 2 / math.exp(-1.5) + (-1.5) + math.log(2 * math.pi))
    nll = nll.reshape(4, -1).sum(1)
    kl = -0.5 * (1 + logvar - mu ** 2 - np.exp(logvar)).sum(1)
    np.testing.assert_allclose(out.recon_per_sample.detach().numpy(), nll, rtol=1e-5)
    assert float(out.loss) == pytest.approx(float(np.mean(nll + 2.0 * kl)), rel=1e-5)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("bias", [1e4, -1e4])
def test_extreme_log_variance_keeps_loss_kl_and_gradients_finite(bias, training):
    # Without the log-variance clamp, +1e4 makes exp(logvar) and so the KL infinite (and the gradients NaN),
    # and -1e4 leaves the range where the KL is bounded by the clamp floor.
    model = _tiny().train(training)
    latent = model.config.latent_dim
    with torch.no_grad():
        model.to_latent.bias[latent:] = bias  # the second half of to_latent's output is the log-variance
    out = model(_images(4, 1, 8))
    assert LOGVAR_MIN <= float(out.logvar.detach().min()) and float(out.logvar.detach().max()) <= LOGVAR_MAX
    assert torch.isfinite(out.loss) and torch.isfinite(out.kl) and torch.isfinite(out.kl_per_sample).all()
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


def test_gaussian_log_variance_floor_keeps_the_loss_finite():
    # Without the floor on log_sigma2, exp(-1e4) is 0 and the squared error is divided by zero.
    model = _tiny(likelihood="gaussian")
    with torch.no_grad():
        model.log_sigma2.fill_(-1e4)
    out = model(_images(4, 1, 8))
    assert torch.isfinite(out.loss) and torch.isfinite(out.recon)
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


@torch.no_grad()
def test_train_mode_samples_eval_mode_is_deterministic():
    model = _tiny()
    x = _images(6, 1, 8)
    torch.manual_seed(1)
    a = model(x).loss
    torch.manual_seed(2)
    b = model(x).loss
    assert float(a) != float(b)  # z is sampled in train mode
    model.eval()
    assert torch.equal(model(x).loss, model(x).loss)


def test_embed_is_encoder_mean_in_eval_mode_and_restores_train_mode():
    model = _tiny(batch_norm=True)
    model.train()
    x = _images(6, 1, 8)
    emb = model.embed(x)
    assert model.training  # restored
    assert not emb.requires_grad
    model.eval()
    with torch.no_grad():
        mu, _ = model.encode(x)
    assert torch.equal(emb, mu)
    assert not model.training
    model.embed(x)
    assert not model.training  # eval stays eval


def test_save_load_round_trip(tmp_path):
    model = _tiny(image_size=27, channels=3, widths=(4, 8, 8), likelihood="gaussian").eval()
    x = _images(3, 3, 27)
    path = model.save(tmp_path / "m.pt")
    loaded = load_model(path)
    assert loaded.config == model.config
    assert loaded.fingerprint() == model.fingerprint()
    assert torch.equal(loaded.embed(x), model.embed(x))
    assert torch.equal(loaded(x).loss, model(x).loss)
    # a run directory holding model.pt loads too
    run = tmp_path / "run"
    model.save(run)
    assert (run / "model.pt").exists()
    assert load_model(run).fingerprint() == model.fingerprint()


def test_fingerprint_changes_with_any_weight():
    model = _tiny()
    before = model.fingerprint()
    with torch.no_grad():
        model.decoder[0].weight[0, 0, 0, 0] += 1e-3
    assert model.fingerprint() != before


def test_missing_and_damaged_model_files(tmp_path):
    with pytest.raises(ModelError, match="model not found"):
        load_model(tmp_path / "nope.pt")
    with pytest.raises(ModelError, match="no model.pt in run directory"):
        load_model(tmp_path)
    path = _tiny().save(tmp_path / "m.pt")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    for bad in (truncated, text, other):
        with pytest.raises(ModelError) as info:
            load_model(bad)
        assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_tampered_weights_fail_the_fingerprint(tmp_path):
    path = _tiny().save(tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["to_latent.bias"] += 1.0
    torch.save(payload, path)
    with pytest.raises(ModelError, match="do not match their recorded fingerprint"):
        load_model(path)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_loading_never_unpickles_arbitrary_objects(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"format": "cvae-model", "obj": _Evil(str(marker))}, fh, protocol=2)
    with pytest.raises(ModelError):
        load_model(path)
    assert not marker.exists()
