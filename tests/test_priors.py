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


def test_each_prior_says_what_it_is_in_words():
    from cvae_features.priors import MixturePrior

    assert StandardNormal(3).describe() == "N(0, I)"  # the figure captions' words (cvae show)
    assert MixturePrior(5, 2).describe() == "a learnt mixture of 5 diagonal gaussians"

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


# --------------------------------------------------------------------------- the mixture prior

def _mixture(k=3, dim=2, seed=0):
    from cvae_features.priors import MixturePrior

    torch.manual_seed(seed)
    prior = MixturePrior(k, dim)
    with torch.no_grad():
        prior.logits.copy_(torch.randn(k))
        prior.means.mul_(2.0)
        prior.logvars.copy_(torch.randn(k, dim) * 0.5)
    return prior


def _reference(prior):
    from torch.distributions import Categorical, Independent, MixtureSameFamily

    comps = Independent(Normal(prior.means.detach(), (0.5 * prior.logvars.detach()).exp()), 1)
    return MixtureSameFamily(Categorical(logits=prior.logits.detach()), comps), comps


def test_mixture_log_prob_moments_and_responsibilities_match_torch_distributions():
    prior = _mixture()
    reference, comps = _reference(prior)
    z = torch.randn(7, 2, generator=torch.Generator().manual_seed(1)) * 3
    torch.testing.assert_close(prior.log_prob(z), reference.log_prob(z), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(prior.mean, reference.mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(prior.stddev, reference.stddev, rtol=1e-5, atol=1e-6)
    # p(c | z) by Bayes with the reference's component densities
    joint = torch.log_softmax(prior.logits.detach(), 0) + comps.log_prob(z.unsqueeze(1))
    gamma = prior.responsibilities(z)
    torch.testing.assert_close(gamma, torch.softmax(joint, 1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gamma.sum(1), torch.ones(7))
    assert torch.equal(prior.assign(z), joint.argmax(1))
    assert prior.assign(z).dtype == torch.int64


def test_mixture_kl_is_the_hershey_olsen_bound_and_splits_exactly_over_dimensions():
    prior = _mixture()
    _, comps = _reference(prior)
    mu = torch.tensor([[0.5, -1.0], [3.0, 2.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, -1.0], [0.5, 0.2], [-2.0, 1.0]])
    q = _independent_normal(mu, logvar)
    kl_c = torch.stack([kl_divergence(q, _independent_normal(prior.means[c].detach(), prior.logvars[c].detach()))
                        for c in range(3)], 1)
    log_pi = torch.log_softmax(prior.logits.detach(), 0)
    torch.testing.assert_close(prior.kl(mu, logvar), -torch.logsumexp(log_pi - kl_c, 1), rtol=1e-5, atol=1e-5)
    per_dim = prior.kl_per_dim(mu, logvar)
    assert per_dim.shape == (3, 2)
    torch.testing.assert_close(per_dim.sum(1), prior.kl(mu, logvar), rtol=1e-6, atol=1e-5)
    # the split: each dimension's expected component KL plus half the categorical KL(gamma || pi)
    gamma = prior.responsibilities(mu, logvar)
    torch.testing.assert_close(gamma, torch.softmax(log_pi - kl_c, 1), rtol=1e-5, atol=1e-6)
    kl_d = torch.stack([kl_divergence(Normal(mu, (0.5 * logvar).exp()),
                                      Normal(prior.means[c].detach(), (0.5 * prior.logvars[c].detach()).exp()))
                        for c in range(3)], 1)
    cat = (gamma * (gamma.log() - log_pi)).sum(1, keepdim=True)
    torch.testing.assert_close(per_dim, (gamma.unsqueeze(2) * kl_d).sum(1) + cat / 2, rtol=1e-5, atol=1e-5)


def _independent_normal(mu, logvar):
    from torch.distributions import Independent

    return Independent(Normal(mu, (0.5 * logvar).exp()), 1)


def test_mixture_kl_bounds_the_monte_carlo_kl_and_is_exact_for_one_component():
    prior = _mixture(k=3, dim=2, seed=2)
    reference, _ = _reference(prior)
    mu, logvar = torch.tensor([[0.3, 0.8], [1.5, -0.5]]), torch.tensor([[0.2, -0.3], [0.0, 0.5]])
    z = _independent_normal(mu, logvar).sample((200_000,))  # (S, n, dim)
    mc = (_independent_normal(mu, logvar).log_prob(z) - reference.log_prob(z.reshape(-1, 2)).view(z.shape[:2])).mean(0)
    bound = prior.kl(mu, logvar)
    assert (bound >= mc - 0.01).all() and (bound - mc).max() > 0.02  # an upper bound, not the KL itself
    one = _mixture(k=1, dim=2, seed=3)
    exact = kl_divergence(_independent_normal(mu, logvar),
                          _independent_normal(one.means[0].detach(), one.logvars[0].detach()))
    torch.testing.assert_close(one.kl(mu, logvar), exact, rtol=1e-5, atol=1e-6)


def test_mixture_samples_follow_the_mixture_and_are_repeatable():
    prior = _mixture()
    a = prior.sample(40_000, generator=torch.Generator().manual_seed(4))
    b = prior.sample(40_000, generator=torch.Generator().manual_seed(4))
    assert a.shape == (40_000, 2) and torch.equal(a, b)
    torch.testing.assert_close(a.mean(0), prior.mean, atol=0.06, rtol=0)
    torch.testing.assert_close(a.std(0), prior.stddev, atol=0.06, rtol=0)
    shares = torch.bincount(prior.assign(a), minlength=3).float() / len(a)
    # components overlap a little, so assignment shares are near, not at, the weights
    torch.testing.assert_close(shares, torch.softmax(prior.logits.detach(), 0), atol=0.08, rtol=0)


def test_mixture_parameters_are_model_state_and_log_variances_are_clamped():
    from cvae_features.priors import COMPONENT_LOGVAR_MAX, MixturePrior

    prior = MixturePrior(2, 3)
    assert sorted(prior.state_dict()) == ["logits", "logvars", "means"]
    with torch.no_grad():
        prior.logvars.fill_(50.0)
    assert torch.equal(prior.component_logvars(), torch.full((2, 3), COMPONENT_LOGVAR_MAX))
    assert torch.isfinite(prior.kl(torch.zeros(1, 3), torch.zeros(1, 3))).all()
    prior.set_components(torch.tensor([0.25, 0.75]), torch.ones(2, 3), torch.full((2, 3), 4.0))
    torch.testing.assert_close(prior.log_weights().exp(), torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(prior.stddev, torch.full((3,), 2.0))
    # set_components stores the log-variances clamped, so that training moves them from inside the range
    prior.set_components(torch.tensor([0.5, 0.5]), torch.zeros(2, 3), torch.tensor([[1e-6, 1.0, 1e6]] * 2))
    assert torch.equal(prior.logvars.detach(), torch.tensor([[-10.0, 0.0, 10.0]] * 2))
    assert repr(prior) == "MixturePrior(n_components=2, dim=3)"
    assert prior.describe() == "a learnt mixture of 2 diagonal gaussians"
    with torch.no_grad():
        prior.logvars.fill_(-50.0)
    assert torch.equal(prior.component_logvars(), torch.full((2, 3), -10.0))  # the floor, COMPONENT_LOGVAR_MIN
    for args, message in (((0, 3), "invalid n_components=0: expected a positive integer"),
                          ((2.5, 3), "invalid n_components=2.5"), ((True, 3), "invalid n_components=True"),
                          ((2, 0), "invalid dim=0: expected a positive integer")):
        with pytest.raises(ValueError, match=message):
            MixturePrior(*args)
