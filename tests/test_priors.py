"""The latent prior (cvae_features.priors) and ConvVAE's loss seam: values, repeatability, unchanged model files."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from cvae_features.model import ConvVAE, VAEConfig, VAEOutput
from cvae_features.priors import StandardNormal


def test_kl_is_the_analytic_kl_to_the_standard_normal():
    prior = StandardNormal(3)
    mu = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]])
    logvar = torch.tensor([[0.0, 0.0, 0.0], [0.0, math.log(4.0), -1.0]])
    # by hand: 0.5 * (mu^2 + var - 1 - log var) per dimension
    by_hand = [0.0, 0.5 * (1 + 0) + 0.5 * (4 + 4 - 1 - math.log(4.0)) + 0.5 * (0.25 + math.exp(-1) - 1 + 1)]
    torch.testing.assert_close(prior.kl(mu, logvar), torch.tensor(by_hand), rtol=1e-6, atol=1e-7)
    reference = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0))
    torch.testing.assert_close(prior.kl_per_dim(mu, logvar), reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(prior.kl_per_dim(mu, logvar).sum(1), prior.kl(mu, logvar), rtol=1e-6, atol=1e-7)


def test_kl_is_summed_in_float32_from_half_precision_input():
    prior = StandardNormal(512)
    mu = torch.full((2, 512), 0.1, dtype=torch.bfloat16)
    logvar = torch.zeros(2, 512, dtype=torch.bfloat16)
    kl = prior.kl(mu, logvar)
    assert kl.dtype == torch.float32
    expected = 512 * 0.5 * float(torch.tensor(0.1, dtype=torch.bfloat16)) ** 2
    torch.testing.assert_close(kl, torch.full((2,), expected), rtol=1e-5, atol=0)


def test_sample_is_standard_normal_and_repeatable():
    prior = StandardNormal(4)
    a = prior.sample(20_000, generator=torch.Generator().manual_seed(3))
    b = prior.sample(20_000, generator=torch.Generator().manual_seed(3))
    assert a.shape == (20_000, 4) and a.dtype == torch.float32 and torch.equal(a, b)
    assert a.mean(0).abs().max() < 0.03 and (a.std(0) - 1).abs().max() < 0.03
    # the same draws as torch.randn with that generator: samples pictures stay as they were
    assert torch.equal(a, torch.randn(20_000, 4, generator=torch.Generator().manual_seed(3)))


def test_log_prob_mean_and_stddev():
    prior = StandardNormal(2)
    z = torch.tensor([[0.0, 0.0], [1.0, -3.0]])
    torch.testing.assert_close(prior.log_prob(z), Normal(0.0, 1.0).log_prob(z).sum(1))
    assert float(prior.log_prob(z[:1])) == pytest.approx(-math.log(2 * math.pi))
    assert torch.equal(prior.mean, torch.zeros(2)) and torch.equal(prior.stddev, torch.ones(2))
    with pytest.raises(ValueError, match="dim"):
        StandardNormal(0)


def test_the_model_owns_its_prior_and_its_files_do_not_change():
    torch.manual_seed(0)
    model = ConvVAE(VAEConfig(image_size=8, latent_dim=8))
    assert isinstance(model.prior, StandardNormal) and model.prior.dim == 8
    # Computed before the prior existed: the weights, state_dict keys and fingerprint are unchanged.
    assert model.fingerprint() == "448e3fc1ecfb16cd"
    assert not any("prior" in key for key in model.state_dict())
    torch.manual_seed(0)
    assert ConvVAE(VAEConfig()).fingerprint() == "1def940bc64f80c0"


def _batch(n=6, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"images": torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g),
            "labels": torch.tensor([3, -1, 0, 3, 1, -1])[:n], "index": torch.arange(n)}


def test_loss_on_a_batch_is_forward_on_its_images_and_the_old_elbo():
    torch.manual_seed(0)
    model = ConvVAE(image_size=8, latent_dim=5, beta=0.3).eval()
    batch = _batch()
    out = model.loss(batch)
    assert isinstance(out, VAEOutput) and out.beta == 0.3
    same = model(batch["images"])
    for name in ("loss", "recon", "kl", "mu", "logvar", "recon_per_sample", "kl_per_sample", "decoder_out"):
        assert torch.equal(getattr(out, name), getattr(same, name)), name
    # the ELBO as ConvVAE.forward computed it before the prior was an object
    x = batch["images"].float() / 255
    mu, logvar = model.encode(x)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    recon = bce(model.decode(mu), x, reduction="none").flatten(1).sum(1)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
    assert torch.equal(out.recon_per_sample, recon) and torch.equal(out.kl_per_sample, kl)
    assert torch.equal(out.loss, (recon + 0.3 * kl).mean())


def test_loss_in_train_mode_draws_the_same_noise_as_forward():
    torch.manual_seed(0)
    model = ConvVAE(image_size=8, latent_dim=5).train()
    batch = _batch()
    torch.manual_seed(7)
    a = model.loss(batch, beta=0.01)
    torch.manual_seed(7)
    b = model(batch["images"], beta=0.01)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.decoder_out, b.decoder_out)
    torch.manual_seed(8)
    assert not torch.equal(model.loss(batch, beta=0.01).loss, a.loss)  # z is sampled in train mode


def test_terms_and_weights_make_the_loss():
    torch.manual_seed(0)
    model = ConvVAE(image_size=8, latent_dim=5, beta=0.05).eval()
    out = model.loss(_batch(), beta=0.2)
    terms, weights, per_sample = out.terms(), out.term_weights(), out.per_sample_terms()
    assert list(terms) == ["recon", "kl"] and list(per_sample) == ["recon", "kl"]
    assert weights == {"recon": 1.0, "kl": 0.2}
    assert torch.equal(terms["recon"], out.recon) and torch.equal(per_sample["kl"], out.kl_per_sample)
    torch.testing.assert_close(sum(weights[k] * terms[k] for k in terms), out.loss)
    for k in terms:
        torch.testing.assert_close(per_sample[k].mean(), terms[k])
    assert model.loss(_batch()).term_weights()["kl"] == 0.05  # beta=None: the config's
