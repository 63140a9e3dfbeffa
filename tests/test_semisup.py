"""Kingma's M2 on feature vectors (cvae_features.semisup): its terms against independent formulas, the fit, errors."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Normal, kl_divergence
from torch.nn import functional as F

from cvae_features.errors import ConfigError
from cvae_features.semisup import LOG_SIGMA_MIN, M2Config, M2Net, fit_m2, warmup_weight

TINY = {"hidden": 16, "latent_dim": 2, "steps": 150, "batch_size": 32, "labelled_batch": 16, "warmup_steps": 30}


@pytest.fixture
def net():
    torch.manual_seed(0)
    m = M2Net(3, 2, hidden=5, latent_dim=2)
    with torch.no_grad():  # one log std below the floor: the floor must apply
        m.log_sigma.copy_(torch.tensor([0.3, -0.7, LOG_SIGMA_MIN - 2.0]))
    return m


def _by_hand(net, x, y1h, noise):
    """L(x, y) from torch.distributions: -log N(x; mean, sigma) + KL(N(mu, std) || N(0, 1)) + log K."""
    mu, logvar = net.encoder(torch.cat([x, y1h], 1)).chunk(2, dim=1)
    std = torch.exp(0.5 * logvar)
    z = mu + noise * std
    mean = net.decoder(torch.cat([z, y1h], 1))
    sigma = net.log_sigma.detach().clamp(min=LOG_SIGMA_MIN).exp()
    nll = -Normal(mean, sigma).log_prob(x).sum(1)
    kl = kl_divergence(Normal(mu, std), Normal(torch.zeros_like(mu), torch.ones_like(std))).sum(1)
    return nll + kl + math.log(net.n_classes)


def test_neg_elbo_is_the_gaussian_nll_plus_kl_plus_log_k(net):
    x = torch.randn(4, 3)
    y1h = F.one_hot(torch.tensor([0, 1, 1, 0]), 2).float()
    noise = torch.randn(4, 2)
    got = net.neg_elbo(x, y1h, noise)
    assert got.shape == (4,)
    torch.testing.assert_close(got, _by_hand(net, x, y1h, noise))
    assert not torch.allclose(got, net.neg_elbo(x, 1 - y1h, noise))  # the class reaches encoder and decoder


def test_unlabelled_loss_marginalises_every_class_and_subtracts_the_entropy(net):
    x = torch.randn(5, 3)
    noise = torch.randn(5, 2, 2)
    q = F.softmax(net.logits(x), dim=1)
    per_class = torch.stack([_by_hand(net, x, F.one_hot(torch.full((5,), c), 2).float(), noise[:, c])
                             for c in range(2)], dim=1)
    expected = (q * per_class).sum(1) - Categorical(probs=q).entropy()
    torch.testing.assert_close(net.unlabelled_loss(x, noise), expected)


def test_objective_weighs_the_terms_as_documented(net):
    x_lab, y_lab, x_unl = torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), torch.randn(6, 3)
    torch.manual_seed(3)
    got = net.objective(x_lab, y_lab, x_unl, alpha=0.2, n_lab=10, n_unl=90, unlabelled_weight=0.4)
    torch.manual_seed(3)  # the same noise, drawn in the same order
    lab = net.neg_elbo(x_lab, F.one_hot(y_lab, 2).float()).mean()
    unl = net.unlabelled_loss(x_unl).mean()
    ce = F.cross_entropy(net.logits(x_lab), y_lab)
    torch.testing.assert_close(got, lab + 0.2 * 100 / 10 * ce + 0.4 * unl)
    torch.manual_seed(3)
    alone = net.objective(x_lab, y_lab, None, alpha=0.2, n_lab=10, n_unl=90)
    torch.testing.assert_close(alone, lab + 0.2 * 100 / 10 * ce)
    torch.manual_seed(3)
    torch.testing.assert_close(net.objective(x_lab, y_lab, x_unl, alpha=0.2, n_lab=10, n_unl=90,
                                             unlabelled_weight=0.0), lab + 0.2 * 100 / 10 * ce)


def test_warmup_weight_rises_linearly():
    assert [warmup_weight(s, 4) for s in (0, 1, 2, 3, 4, 9)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert warmup_weight(0, 0) == 1.0


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    from cvae_features.probes import draw_labelled

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    lab = draw_labelled(y[:1200], 10, 0)
    unl = np.setdiff1d(np.arange(1200), lab)
    return X[lab], y[lab], X[unl], X[1200:], y[1200:]


def test_fit_m2_classifies_digits_and_is_seeded(digits):
    X_lab, y_lab, X_unl, X_test, y_test = digits
    config = M2Config(hidden=64, latent_dim=4, n_components=20, steps=300, batch_size=64, labelled_batch=50,
                      warmup_steps=50)
    state = torch.get_rng_state()
    model = fit_m2(X_lab, y_lab + 3, X_unl, config, seed=1)  # labels need not be 0..K-1
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is left alone
    pred = model.predict(X_test)
    assert set(np.unique(pred)) <= set(range(3, 13)) and list(model.classes_) == list(range(3, 13))
    assert np.mean(pred == y_test + 3) > 0.8
    proba = model.predict_proba(X_test)
    assert proba.shape == (X_test.shape[0], 10)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(model.classes_[proba.argmax(1)], pred)
    assert [h["step"] for h in model.history] == [100, 200, 300]
    short = M2Config(**dict(TINY, steps=20))  # seeds and inputs: a few steps show it
    first = fit_m2(X_lab, y_lab, X_unl, short, seed=1).predict_proba(X_test)
    np.testing.assert_array_equal(fit_m2(X_lab, y_lab, X_unl, short, seed=1).predict_proba(X_test), first)
    assert not np.allclose(fit_m2(X_lab, y_lab, X_unl, short, seed=2).predict_proba(X_test), first)
    assert not np.allclose(fit_m2(X_lab, y_lab, None, short, seed=1).predict_proba(X_test), first)

def test_inputs_are_projected_on_their_principal_axes():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1]) + 7.0
    y = np.arange(40) % 2
    model = fit_m2(X[:10], y[:10], X[10:], M2Config(**dict(TINY, n_components=3, steps=1)))
    Z = model.transform(X).numpy()
    assert Z.shape == (40, 3)
    np.testing.assert_allclose(Z.mean(0), 0, atol=1e-5)  # centred on all rows
    assert Z.std() == pytest.approx(1.0, rel=1e-5)  # one scale for all columns: their ratios are kept
    var = Z.var(0)
    assert var[0] > var[1] > var[2] and var[0] / var[2] > 10
    whole = fit_m2(X[:10], y[:10], X[10:], M2Config(**dict(TINY, n_components=0, steps=1))).transform(X).numpy()
    assert whole.shape == (40, 6)
    np.testing.assert_allclose(whole * (X - X.mean(0)).std(), X - X.mean(0), rtol=1e-5, atol=1e-5)
    capped = fit_m2(X[:4], y[:4], None, M2Config(**dict(TINY, n_components=50, steps=1))).transform(X).numpy()
    assert capped.shape == (40, 3)  # at most rows - 1 axes


@pytest.mark.parametrize("kwargs, words", [
    ({"steps": 0}, "steps"), ({"hidden": True}, "hidden"), ({"latent_dim": 2.0}, "latent_dim"),
    ({"n_components": -1}, "n_components"), ({"warmup_steps": -2}, "warmup_steps"),
    ({"alpha": -0.1}, "alpha"), ({"alpha": float("nan")}, "alpha"), ({"lr": 0}, "lr"), ({"lr": "fast"}, "lr")])
def test_bad_settings_are_one_line_errors(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        M2Config(**kwargs)


def test_bad_rows_are_one_line_errors():
    X, y = np.zeros((4, 3)), np.array([0, 1, 0, 1])
    with pytest.raises(ConfigError, match="at least 2 are needed"):
        fit_m2(X, np.zeros(4, int), None, M2Config(**TINY))
    with pytest.raises(ConfigError, match="expected labelled rows"):
        fit_m2(X, y[:3], None, M2Config(**TINY))
    with pytest.raises(ConfigError, match="unlabelled rows have shape"):
        fit_m2(X, y, np.zeros((5, 2)), M2Config(**TINY))
    with pytest.raises(ConfigError, match="NaN or infinite"):
        fit_m2(X, y, np.full((5, 3), np.inf), M2Config(**TINY))
