"""Kingma's M2 on feature vectors (cvae_features.semisup): its terms against independent formulas, the fit, errors."""

import math
import warnings

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


# -- tests written for the mutation run's survivors (benchmarks/mutation.py, semisup group) --

def test_settings_at_their_boundaries_and_the_record():
    low = M2Config(n_components=0, hidden=1, latent_dim=1, alpha=0, steps=1, batch_size=1, labelled_batch=1,
                   lr=1e-12, warmup_steps=0)
    assert low.to_dict() == {"n_components": 0, "hidden": 1, "latent_dim": 1, "alpha": 0, "steps": 1,
                             "batch_size": 1, "labelled_batch": 1, "lr": 1e-12, "warmup_steps": 0}
    assert M2Config().to_dict() == {"n_components": 50, "hidden": 128, "latent_dim": 8, "alpha": 0.1, "steps": 2000,
                                    "batch_size": 128, "labelled_batch": 64, "lr": 1e-3, "warmup_steps": 300}
    assert M2Config(alpha=True).alpha is True  # a bool is a number here (0 or 1)
    for name in ("hidden", "latent_dim", "steps", "batch_size", "labelled_batch"):
        for bad in (0, -1, True, 1.0, "2", None):
            with pytest.raises(ConfigError, match=f"M2 {name}: expected a positive integer"):
                M2Config(**{name: bad})
    for name in ("n_components", "warmup_steps"):
        for bad in (-1, True, False, 1.5, "3", None):
            with pytest.raises(ConfigError, match=f"M2 {name}: expected an integer >= 0"):
                M2Config(**{name: bad})
    for bad in (-1e-9, float("inf"), float("nan"), "0.1", None):
        with pytest.raises(ConfigError, match="M2 alpha"):
            M2Config(alpha=bad)
    for bad in (0, -1e-3, float("inf"), float("nan"), "fast", None):
        with pytest.raises(ConfigError, match="M2 lr"):
            M2Config(lr=bad)


def test_the_networks_widths_and_their_defaults():
    m = M2Net(np.int64(5), np.int64(3))
    assert (m.n_in, m.n_classes, m.latent_dim) == (5, 3, 8) and type(m.n_in) is int and type(m.n_classes) is int
    assert type(m.latent_dim) is int

    def widths(seq):
        return [(layer.in_features, layer.out_features) for layer in seq if isinstance(layer, torch.nn.Linear)]

    assert widths(m.classifier) == [(5, 128), (128, 128), (128, 3)]
    assert widths(m.encoder) == [(8, 128), (128, 128), (128, 16)]
    assert widths(m.decoder) == [(11, 128), (128, 128), (128, 5)]
    assert torch.equal(m.log_sigma.detach(), torch.zeros(5)) and m.log_sigma.requires_grad
    small = M2Net(4, 2, hidden=3, latent_dim=np.int64(2))
    assert type(small.latent_dim) is int
    assert widths(small.encoder) == [(6, 3), (3, 3), (3, 4)] and widths(small.decoder) == [(4, 3), (3, 3), (3, 4)]
    x = torch.randn(3, 4)
    torch.testing.assert_close(small.logits(x), small.classifier(x))


def test_neg_elbo_clamps_the_log_variance_and_draws_its_own_noise(net):
    last = net.encoder[-1]
    x, y1h = torch.randn(3, 3), F.one_hot(torch.tensor([0, 1, 1]), 2).float()
    noise = torch.randn(3, 2)
    mu = torch.tensor([0.5, -0.25])
    # q(z | x, y) = N(mu, exp(logvar)) with mu and logvar fixed by the last layer's bias; below the floor, above
    # the ceiling (each case apart: KL's exp(20) would hide a wrong floor in float32)
    for logvar_out, logvar in (([-50.0, -40.0], [-30.0, -30.0]), ([25.0, 30.0], [20.0, 20.0])):
        with torch.no_grad():
            last.weight.zero_()
            last.bias.copy_(torch.cat([mu, torch.tensor(logvar_out)]))
        logvar = torch.tensor(logvar)
        z = mu + noise * torch.exp(0.5 * logvar)
        mean = net.decoder(torch.cat([z, y1h], 1))
        sigma = net.log_sigma.detach().clamp(min=LOG_SIGMA_MIN).exp()
        nll = -Normal(mean, sigma).log_prob(x).sum(1)
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1.0 - logvar).sum()
        torch.testing.assert_close(net.neg_elbo(x, y1h, noise), nll + kl + math.log(2))
    with torch.no_grad():
        last.bias.copy_(torch.tensor([0.5, -0.25, -1.0, -2.0]))
    torch.manual_seed(5)
    drawn = net.neg_elbo(x, y1h)
    torch.manual_seed(5)
    torch.testing.assert_close(drawn, net.neg_elbo(x, y1h, torch.randn(3, 2)))
    torch.manual_seed(5)
    drawn = net.unlabelled_loss(x)
    torch.manual_seed(5)
    torch.testing.assert_close(drawn, net.unlabelled_loss(x, torch.randn(3, 2, 2)))


def test_the_unlabelled_term_is_left_out_for_no_rows_or_no_weight(net):
    x_lab, y_lab = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    torch.manual_seed(3)
    expected = net.objective(x_lab, y_lab, None, alpha=0.5, n_lab=4, n_unl=0)
    torch.manual_seed(3)
    torch.testing.assert_close(net.objective(x_lab, y_lab, torch.empty(0, 3), alpha=0.5, n_lab=4, n_unl=0), expected)
    torch.manual_seed(3)  # weight 0: the unlabelled rows are not even looked at (NaN rows leave the loss finite)
    torch.testing.assert_close(net.objective(x_lab, y_lab, torch.full((2, 3), float("nan")), alpha=0.5, n_lab=4,
                                             n_unl=0, unlabelled_weight=0.0), expected)
    torch.manual_seed(3)
    x_unl = torch.randn(2, 3)
    with_unl = net.objective(x_lab, y_lab, x_unl, alpha=0.5, n_lab=4, n_unl=2, unlabelled_weight=1e-3)
    assert not torch.allclose(with_unl, expected)
    torch.manual_seed(3)  # the default weight is 1
    default = net.objective(x_lab, y_lab, x_unl, alpha=0.5, n_lab=4, n_unl=2)
    torch.manual_seed(3)
    torch.testing.assert_close(default, net.objective(x_lab, y_lab, x_unl, alpha=0.5, n_lab=4, n_unl=2,
                                                      unlabelled_weight=1.0))


def test_the_unlabelled_term_stays_on_the_rows_device_and_warns_nothing():
    meta = M2Net(3, 2, hidden=4, latent_dim=2).to("meta")  # the classes' one-hot rows are made where x is
    got = meta.unlabelled_loss(torch.empty(4, 3, device="meta"))
    assert got.shape == (4,) and got.device.type == "meta"
    torch.manual_seed(0)
    net = M2Net(3, 2, hidden=4, latent_dim=2)
    with warnings.catch_warnings():  # the softmax dimension is given (an implicit one warns)
        warnings.simplefilter("error")
        net.unlabelled_loss(torch.randn(4, 3))


def test_the_classifier_transforms_in_float64_and_answers_in_float64():
    rng = np.random.default_rng(1)
    X = 1e8 + rng.normal(size=(12, 3))  # float32 would lose the rows' differences
    y = np.arange(12) % 3
    model = fit_m2(X, y, None, M2Config(**dict(TINY, n_components=0, steps=2)))
    assert model.net.training is False
    Z = model.transform(X)
    assert Z.dtype == torch.float32
    centred = X - X.mean(0)
    np.testing.assert_allclose(Z.numpy(), centred / centred.std(), rtol=1e-5, atol=1e-5)
    model.net.train()
    with warnings.catch_warnings():  # the softmax dimension is given (an implicit one warns)
        warnings.simplefilter("error")
        proba = model.predict_proba(X[:5])
    assert model.net.training is False and proba.dtype == np.float64 and proba.shape == (5, 3)
    with torch.no_grad():
        expected = F.softmax(model.net.logits(torch.as_tensor(centred[:5] / centred.std(), dtype=torch.float32)), 1)
    np.testing.assert_allclose(proba, expected.numpy(), rtol=1e-5)
    pred = model.predict(X[:5])
    assert pred.shape == (5,)
    np.testing.assert_array_equal(pred, model.classes_[proba.argmax(1)])


def test_projection_keeps_all_axes_unrotated_and_guards_its_scale():
    from cvae_features.semisup import _projection

    rng = np.random.default_rng(2)
    X = rng.normal(size=(10, 3)) * np.array([3.0, 1.0, 0.3])
    for n in (3, 5):  # as many axes as columns or more: the inputs as they are, centred and scaled
        centre, axes, scale = _projection(X, n)
        assert axes is None and scale == pytest.approx((X - X.mean(0)).std())
        np.testing.assert_allclose(centre, X.mean(0))
    centre, axes, scale = _projection(X, 1)  # one axis: the first principal one
    assert axes.shape == (3, 1) and abs(axes[0, 0]) > 0.9
    assert scale == pytest.approx(((X - X.mean(0)) @ axes).std())
    assert _projection(X * 0.01, 0)[2] == pytest.approx((X - X.mean(0)).std() * 0.01)  # a spread below 1
    centre, axes, scale = _projection(X[:1], 2)  # one row: no axis to fit, nothing spread
    assert axes is None and scale == 1.0
    centre, axes, scale = _projection(np.full((4, 3), 7.0), 2)
    assert scale == 1.0
    np.testing.assert_allclose(centre, [7.0, 7.0, 7.0])
    with np.errstate(over="ignore", invalid="ignore"):
        assert _projection(np.array([[1e200], [-1e200]]), 0)[2] == 1.0  # an infinite spread


def test_bad_rows_of_other_shapes_and_nan_labelled_rows():
    X, y = np.zeros((4, 3)), np.array([0, 1, 0, 1])
    with pytest.raises(ConfigError, match="expected labelled rows"):
        fit_m2(np.zeros(4), y, None, M2Config(**TINY))
    with pytest.raises(ConfigError, match="expected labelled rows"):
        fit_m2(X, y.reshape(4, 1), None, M2Config(**TINY))
    with pytest.raises(ConfigError, match="unlabelled rows have shape"):
        fit_m2(X, y, np.zeros(3), M2Config(**TINY))
    with pytest.raises(ConfigError, match="NaN or infinite"):
        fit_m2(np.full((4, 3), np.nan), y, np.zeros((5, 3)), M2Config(**TINY))


def _reference_fit(model, X_lab, y_idx, X_unl, config, seed):
    """fit_m2's loop written out: the same draws, batches, warm-up, objective and Adam steps."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        x_lab, x_unl = model.transform(X_lab), model.transform(X_unl)
        y_t = torch.as_tensor(y_idx, dtype=torch.long)
        net = M2Net(x_lab.shape[1], int(y_idx.max()) + 1, config.hidden, config.latent_dim)
        opt = torch.optim.Adam(net.parameters(), lr=config.lr)
        n_lab, n_unl = len(X_lab), len(X_unl)
        order, pos, losses = torch.randperm(n_unl, generator=gen), 0, []
        for step in range(config.steps):
            li = torch.randint(0, n_lab, (min(config.labelled_batch, n_lab),), generator=gen)
            if pos >= n_unl:
                order, pos = torch.randperm(n_unl, generator=gen), 0
            xb = x_unl[order[pos:pos + config.batch_size]]
            pos += config.batch_size
            w = 1.0 if step >= config.warmup_steps else step / config.warmup_steps
            loss = net.objective(x_lab[li], y_t[li], xb, alpha=config.alpha, n_lab=n_lab, n_unl=n_unl,
                                 unlabelled_weight=w)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.item()))
    return net, losses


def test_the_fit_is_its_loop_written_out():
    rng = np.random.default_rng(3)
    X_lab, y = rng.normal(size=(5, 4)), np.array([2, 7, 2, 7, 9])
    X_unl = rng.normal(size=(8, 4))
    config = M2Config(n_components=3, hidden=6, latent_dim=3, alpha=0.3, steps=7, batch_size=4, labelled_batch=7,
                      lr=0.02, warmup_steps=3)
    model = fit_m2(X_lab, y, X_unl, config, seed=4)
    net, losses = _reference_fit(model, X_lab, np.array([0, 1, 0, 1, 2]), X_unl, config, seed=4)
    for (name, got), (_, want) in zip(model.net.state_dict().items(), net.state_dict().items()):
        torch.testing.assert_close(got, want, msg=name)
    assert model.history == [{"step": 7, "loss": losses[-1]}] and model.config is config
    long = M2Config(**dict(TINY, steps=201))
    assert [h["step"] for h in fit_m2(X_lab, y, X_unl, long).history] == [100, 200, 201]
    np.testing.assert_array_equal(fit_m2(X_lab, y, X_unl, M2Config(**dict(TINY, steps=3))).predict_proba(X_unl),
                                  fit_m2(X_lab, y, X_unl, M2Config(**dict(TINY, steps=3)), seed=0).predict_proba(X_unl))


def test_no_settings_are_the_defaults(monkeypatch):
    from cvae_features import semisup

    monkeypatch.setattr(semisup, "M2Config", lambda: M2Config(**dict(TINY, steps=2)))
    model = fit_m2(np.eye(4), [0, 1, 0, 1])
    assert model.config == M2Config(**dict(TINY, steps=2)) and [h["step"] for h in model.history] == [2]


def test_a_diverging_fit_is_a_one_line_training_error():
    from sklearn.datasets import load_digits

    from cvae_features.errors import TrainingError

    X, y = load_digits(return_X_y=True)
    with pytest.raises(TrainingError, match=r"^M2: the objective became nan at step 2 of 50: the fit diverged; "
                                            r"try a smaller lr \(now 1000\)$"):
        fit_m2(X[:50], y[:50], X[50:300], M2Config(steps=50, lr=1e3), seed=0)
