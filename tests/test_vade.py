"""The conv-vade family (VaDE: a mixture prior on the conv VAE): its initialisation, training schedule,
checkpoint/resume, the 'prior' cluster method and the command line."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from sklearn.datasets import load_digits

from cvae_features.errors import ConfigError
from cvae_features.families import create_model, model_families
from cvae_features.model import ConvVAE
from cvae_features.priors import MixturePrior, StandardNormal
from cvae_features.probes import cluster_probe, probe_stores
from cvae_features.probes.suite import ProbeData, run_probes
from cvae_features.store import StoreWriter
from cvae_features.training import train
from cvae_features.vade import ConvVaDE, VaDEConfig, fit_diagonal_gmm

from _stores import vae_fields

SMALL = {"image_size": 8, "latent_dim": 2, "widths": [4], "n_clusters": 3, "pretrain_steps": 2, "init_rows": 8}


def _digits():
    return (load_digits().images * 255 / 16).round().astype(np.uint8)[:, None]


def _blobs(n=90, seed=0):
    """Three well-separated blobs in 2-d and their labels."""
    centres = np.array([[-6.0, 0.0], [6.0, 0.0], [0.0, 8.0]])
    y = np.arange(n) % 3
    x = centres[y] + np.random.default_rng(seed).normal(size=(n, 2)) * np.array([0.5, 1.0])
    return torch.tensor(x), y, centres


def test_fit_diagonal_gmm_recovers_separated_blobs_and_repeats_with_the_generator():
    x, y, centres = _blobs(300)
    weights, means, variances = fit_diagonal_gmm(x, 3, torch.Generator().manual_seed(5))
    # match components to blobs: the left, the right and the top one
    order = torch.tensor([int(means[:, 0].argmin()), int(means[:, 0].argmax()), int(means[:, 1].argmax())])
    blobs = [x[torch.from_numpy(y) == c] for c in range(3)]  # separated blobs: the fit is each blob's moments
    torch.testing.assert_close(means[order], torch.stack([b.mean(0) for b in blobs]), atol=1e-6, rtol=0)
    torch.testing.assert_close(variances[order], torch.stack([b.var(0, unbiased=False) for b in blobs]), atol=1e-6,
                               rtol=0)
    torch.testing.assert_close(means[order], torch.tensor(centres), atol=0.35, rtol=0)
    torch.testing.assert_close(weights, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.01, rtol=0)
    again = fit_diagonal_gmm(x, 3, torch.Generator().manual_seed(5))
    assert all(torch.equal(a, b) for a, b in zip((weights, means, variances), again))
    with pytest.raises(ConfigError, match="cannot fit 3 mixture components to 2 codes"):
        fit_diagonal_gmm(x[:2], 3, torch.Generator())


class _Recorded:
    """Codes that record how they are converted (``x.detach().to(...)``)."""

    def __init__(self, x):
        self.x, self.calls = x, []

    def detach(self):
        return self

    def to(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.x.to(*args, **kwargs)


def test_fit_diagonal_gmm_in_float64_on_the_cpu_for_as_many_codes_as_components_and_for_equal_codes():
    x, _, _ = _blobs(30)
    codes = _Recorded(x.float())
    weights, means, variances = fit_diagonal_gmm(codes, 3, torch.Generator().manual_seed(0))
    assert codes.calls == [(("cpu", torch.float64), {})]
    assert weights.dtype == means.dtype == variances.dtype == torch.float64
    # n == k: each code its own component, of the variance floor (1e-4 of the codes' mean variance)
    three = x[:3]
    weights, means, variances = fit_diagonal_gmm(three, 3, torch.Generator().manual_seed(0))
    order = means[:, 0].argsort()
    torch.testing.assert_close(means[order], three[three[:, 0].argsort()])
    torch.testing.assert_close(weights, torch.full((3,), 1 / 3, dtype=torch.float64))
    floor = 1e-4 * float(three.var(0, unbiased=False).mean())
    torch.testing.assert_close(variances, torch.full((3, 2), floor, dtype=torch.float64))
    # equal codes: no distance to draw the next centre by, so it is drawn uniformly; one component takes them all
    same = torch.tensor([[1.0, 2.0]] * 5, dtype=torch.float64)
    weights, means, variances = fit_diagonal_gmm(same, 2, torch.Generator().manual_seed(0))
    torch.testing.assert_close(weights, torch.tensor([1.0, 0.0], dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(means[0], same[0])
    torch.testing.assert_close(variances, torch.full((2, 2), 1e-16, dtype=torch.float64))


def _gmm_by_hand(x, k, seed, kmeans_iters, em_iters):
    """fit_diagonal_gmm's recipe in numpy and scipy: k-means++ (torch's draws), Lloyd, then EM from hard labels."""
    from scipy.special import softmax
    from scipy.stats import norm

    g = torch.Generator().manual_seed(seed)
    X = x.numpy()
    n = len(X)
    first = int(torch.randint(n, (1,), generator=g))
    centres, d2 = [X[first]], ((X - X[first]) ** 2).sum(1)
    while len(centres) < k:
        p = torch.from_numpy(d2) if d2.sum() > 0 else torch.ones(n, dtype=torch.float64)
        i = int(torch.multinomial(p, 1, generator=g))
        centres.append(X[i])
        d2 = np.minimum(d2, ((X - X[i]) ** 2).sum(1))
    C = np.array(centres)
    for _ in range(kmeans_iters):
        label = ((X[:, None] - C) ** 2).sum(2).argmin(1)
        C = np.array([X[label == c].mean(0) if (label == c).any() else C[c] for c in range(k)])
    R = np.eye(k)[((X[:, None] - C) ** 2).sum(2).argmin(1)]
    floor = 1e-4 * X.var(0).mean()
    for step in range(em_iters + 1):
        mass = R.sum(0) + 1e-10
        w, m = mass / n, R.T @ X / mass[:, None]
        v = np.maximum(R.T @ X ** 2 / mass[:, None] - m ** 2, floor)
        if step < em_iters:
            R = softmax(np.log(w) + norm.logpdf(X[:, None, :], m, np.sqrt(v)).sum(2), axis=1)
    return w, m, v


def _overlapping():
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x[:5] += 4.0  # a small far group
    return x


@pytest.mark.parametrize("case, k, seed, iters", [
    ("overlapping", 4, 2, (0, 0)), ("overlapping", 4, 2, (2, 0)), ("overlapping", 4, 2, (50, 3)),
    ("overlapping", 4, 2, None),  # the defaults: 50 and 30
    ("small", 4, 2, (2, 0)),  # squared distances summing to less than 1 still weight the k-means++ draws
    ("three values", 4, 0, (5, 2)),  # fewer distinct codes than components: a uniform draw, an empty component
    ("singleton", 3, 2, (10, 0)),  # Lloyd passes through a component of one code that is not its centre
    ("emptied", 6, 0, (50, 0))])  # Lloyd empties a component, whose centre stays where it was
def test_fit_diagonal_gmm_is_kmeans_plus_plus_lloyd_and_em(case, k, seed, iters):
    x = {"overlapping": _overlapping, "small": lambda: _overlapping() * 1e-2,
         "three values": lambda: torch.tensor([5.0, 3, 4, 3, 3, 4, 4, 4, 3, 3], dtype=torch.float64)[:, None],
         "singleton": lambda: torch.from_numpy(np.random.default_rng(304).normal(size=(8, 2))),
         "emptied": lambda: torch.from_numpy(np.random.default_rng(8236).normal(size=(13, 1)))}[case]()
    kwargs = {} if iters is None else dict(zip(("kmeans_iters", "em_iters"), iters))
    fit = fit_diagonal_gmm(x, k, torch.Generator().manual_seed(seed), **kwargs)
    for got, want in zip(fit, _gmm_by_hand(x, k, seed, *(iters or (50, 30)))):
        torch.testing.assert_close(got, torch.from_numpy(want), rtol=1e-9, atol=1e-9)


def test_config_and_family():
    assert "conv-vade" in model_families()
    model = create_model("conv-vade", dict(SMALL))
    assert isinstance(model, ConvVaDE) and isinstance(model.prior, MixturePrior)
    assert model.prior.n_components == 3 and model.prior.dim == 2
    assert {"prior.logits", "prior.means", "prior.logvars", "steps_seen", "codes_seen", "init_codes"} <= \
        set(model.state_dict())
    assert VaDEConfig.from_dict(VaDEConfig(**SMALL).to_dict()) == VaDEConfig(**SMALL)
    assert model.steps_seen.dtype == model.codes_seen.dtype == torch.int64 and int(model.steps_seen) == 0
    assert torch.equal(model.init_codes, torch.zeros(8, 2))  # init_rows codes of latent_dim
    assert ConvVaDE(**{**SMALL, "pretrain_steps": 0}).init_codes.shape == (0, 2)  # no pretraining: no buffer
    for bad, message in (({"n_clusters": 1}, "invalid n_clusters=1: expected an integer from 2 to 1000"),
                         ({"pretrain_steps": -1}, "invalid pretrain_steps=-1"),
                         ({"init_rows": 2}, "invalid init_rows=2: expected an integer from 3 to")):
        with pytest.raises(ConfigError, match=message):
            VaDEConfig(**{**SMALL, **bad})
    for good in ({"n_clusters": 1000, "init_rows": 1000}, {"pretrain_steps": 0}, {"pretrain_steps": 10_000_000},
                 {"init_rows": 3}, {"init_rows": 1_000_000}):
        assert VaDEConfig(**{**SMALL, **good}).to_dict().items() >= good.items()
    for bad in ({"n_clusters": 1001}, {"n_clusters": 2.5}, {"n_clusters": True}, {"pretrain_steps": 10_000_001},
                {"init_rows": 1_000_001}):
        (name, value), = bad.items()
        with pytest.raises(ConfigError, match=f"invalid {name}={value!r}: expected an integer from"):
            VaDEConfig(**{**SMALL, **bad})
    with pytest.raises(ConfigError, match="conv-vade takes a config of type VaDEConfig, not VAEConfig"):
        ConvVaDE(ConvVAE(image_size=8).config)
    with pytest.raises(ConfigError, match=r"unknown model config keys \['n_clusters'\]"):
        create_model("conv-vae", {"n_clusters": 3})


def _batch(seed, n=5, key=11):
    g = torch.Generator().manual_seed(seed)
    return {"images": torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g),
            "labels": torch.full((n,), -1), "index": torch.arange(n), "noise_key": torch.tensor(key)}


def test_pretraining_uses_the_standard_normal_then_fits_the_mixture_to_the_buffered_codes():
    torch.manual_seed(0)
    model = ConvVaDE(**SMALL).train()
    start = {k: v.clone() for k, v in model.prior.state_dict().items()}
    standard = StandardNormal(2)
    outs = [model.loss(_batch(s), beta=1.0) for s in range(2)]
    for out in outs:  # pretraining: the KL against N(0, I)
        torch.testing.assert_close(out.kl_per_sample, standard.kl(out.mu, out.logvar))
    assert int(model.steps_seen) == 2 and int(model.codes_seen) == 10 and not model.pretraining
    # the ring buffer of 8 rows holds the 10 codes' last 8: rows 8, 9 overwrote rows 0, 1
    codes = torch.cat([o.mu.detach() for o in outs])
    torch.testing.assert_close(model.init_codes, torch.cat([codes[8:], codes[2:8]]))
    expected = fit_diagonal_gmm(model.init_codes, 3, torch.Generator().manual_seed(11))  # noise_key's seed
    torch.testing.assert_close(model.prior.log_weights().exp(), expected[0].float())
    torch.testing.assert_close(model.prior.means.detach(), expected[1].float())
    torch.testing.assert_close(model.prior.component_logvars(), expected[2].float().log().clamp(-10, 10))
    assert not torch.equal(model.prior.means, start["means"])
    after = model.loss(_batch(3), beta=1.0)  # from now on the KL against the mixture
    torch.testing.assert_close(after.kl_per_sample, model.prior.kl(after.mu, after.logvar))
    assert int(model.steps_seen) == 3
    model.eval()  # eval-mode losses count no step
    model.loss(_batch(4))
    assert int(model.steps_seen) == 3


def test_the_loss_draws_the_keyed_noise_in_training_only_and_forward_is_the_loss_of_the_images():
    from cvae_features.noise import keyed_normal

    torch.manual_seed(0)
    model = ConvVaDE(**{**SMALL, "pretrain_steps": 100}).train()
    batch = _batch(1)
    out = model.loss(batch, beta=0.3)
    eps = keyed_normal(11, batch["index"], 2)
    z = out.mu + eps * (0.5 * out.logvar).exp()
    assert out.beta == 0.3 and torch.equal(out.decoder_out, model.decode(z))
    torch.manual_seed(5)  # no noise_key: torch's generator draws the noise
    unkeyed = model.loss({k: v for k, v in batch.items() if k != "noise_key"}, beta=0.3)
    torch.manual_seed(5)
    eps = torch.randn(5, 2)
    assert torch.equal(unkeyed.decoder_out, model.decode(unkeyed.mu + eps * (0.5 * unkeyed.logvar).exp()))
    torch.manual_seed(5)
    called = model(batch["images"], beta=0.4)
    assert called.beta == 0.4 and torch.equal(called.decoder_out, unkeyed.decoder_out)
    assert int(model.steps_seen) == 3  # every train-mode call is a step
    model.eval()
    out = model(batch["images"], beta=0.2)
    assert out.beta == 0.2 and torch.equal(out.decoder_out, model.loss(batch).decoder_out)
    assert torch.equal(out.decoder_out, model.decode(out.mu)) and int(model.steps_seen) == 3


def test_cluster_is_the_argmax_of_the_responsibilities_of_mu():
    torch.manual_seed(1)
    model = ConvVaDE(**SMALL)
    x = _batch(7, n=12)["images"]
    mu = model.embed(x)
    log_joint = torch.stack([model.prior.log_weights()[c] + torch.distributions.Normal(
        model.prior.means[c], (0.5 * model.prior.component_logvars()[c]).exp()).log_prob(mu).sum(1)
        for c in range(3)], 1)
    torch.testing.assert_close(model.cluster_probabilities(x), torch.softmax(log_joint, 1))
    assert torch.equal(model.cluster(x), log_joint.argmax(1))


def test_several_processes_are_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    with pytest.raises(ConfigError, match=r"conv-vade with pretrain_steps > 0 trains in one process only") as err:
        ConvVaDE(**SMALL)
    assert "\n" not in str(err.value)
    assert isinstance(ConvVaDE(**{**SMALL, "pretrain_steps": 0}).prior, MixturePrior)  # nothing to fit: allowed
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 1)
    assert isinstance(ConvVaDE(**SMALL).prior, MixturePrior)  # one process of one


class _Interrupt(Exception):
    pass


def test_resume_across_the_mixture_fit_gives_the_uninterrupted_weights(tmp_path):
    images = _digits()[:240]  # 4 batches of 64 an epoch; the mixture is fitted after step 6 (epoch 2)
    kwargs = dict(arch="conv-vade", progress=False,
                  model_config={"latent_dim": 3, "widths": [8], "n_clusters": 3, "pretrain_steps": 6, "init_rows": 64},
                  train_config={"epochs": 3, "batch_size": 64, "val_fraction": 0.0})
    full = train(images, tmp_path / "full", **kwargs)

    def crash(epoch, batch_index, logs):
        if epoch == 2 and batch_index == 2:
            raise _Interrupt()

    with pytest.raises(_Interrupt):
        train(images, tmp_path / "cut", callback=crash, **kwargs)
    resumed = train(images, tmp_path / "cut", resume=True, progress=False)
    assert isinstance(resumed.model, ConvVaDE) and int(resumed.model.steps_seen) == 12
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert full.model.fingerprint() == resumed.model.fingerprint()


# -- the 'prior' cluster method ------------------------------------------------------------------------------

def _write_store(path, model, X, y, carry_weights=True):
    keys = [f"img/{i:04d}.png" for i in range(len(X))]
    with StoreWriter.create(path, feature_kind="vae", dim=X.shape[1], source="generated", plan_keys=keys,
                            preprocess={"size": 8, "channels": 1, "resize": "crop"}, label_names=["a", "b", "c"],
                            **vae_fields(model, carry_weights)) as w:
        w.write_batch(np.arange(len(X)), X, y)
    return path


def _blob_model():
    """A conv-vade model whose mixture is the three blobs of :func:`_blobs`."""
    torch.manual_seed(0)
    model = ConvVaDE(**SMALL)
    _, _, centres = _blobs()
    model.prior.set_components(torch.tensor([0.2, 0.3, 0.5]), torch.tensor(centres),
                               torch.tensor([[0.25, 1.0]] * 3))
    return model


def test_prior_method_assigns_rows_by_the_mixture_and_scores_them(tmp_path):
    model = _blob_model()
    x, y, _ = _blobs(90)
    X = x.float().numpy()
    # by hand, in nats from each centre: (0, -8) is 72 + 32 from blobs 0 and 1 (x std 0.5, y std 1) and 128 from
    # blob 2, so the weights .2 < .3 pick 1; (-3, 6) is 18 + 18 from 0 and 18 + 2 from 2; (-3, 0) 18 from 0
    X[:3] = [[0.0, -8.0], [-3.0, 6.0], [-3.0, 0.0]]
    res = cluster_probe(X, y, methods=("prior", "kmeans"), prior=model.prior)
    pred = res.assignments["prior"]
    torch.testing.assert_close(torch.from_numpy(pred), model.prior.responsibilities(torch.from_numpy(X)).argmax(1))
    assert pred[:3].tolist() == [1, 2, 0]
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from cvae_features.probes.cluster import cluster_accuracy

    entry = res.methods["prior"]
    assert entry["acc"] == cluster_accuracy(y, pred) and entry["nmi"] == normalized_mutual_info_score(y, pred)
    assert entry["ari"] == adjusted_rand_score(y, pred) and entry["cluster_sizes"] == np.bincount(pred).tolist()
    assert 0.9 < entry["acc"] < 1.0
    with pytest.raises(ConfigError, match="the 'prior' cluster method needs the mixture prior of the model"):
        cluster_probe(X, y, methods=("prior",))
    # through the stores: the TRAIN store's model is loaded and its prior assigns the TEST rows
    train_path, test_path = _write_store(tmp_path / "tr.h5", model, X, y), tmp_path / "te.h5"
    xt, yt, _ = _blobs(60, seed=1)
    _write_store(test_path, model, xt.float().numpy(), yt)
    run = probe_stores([("vade", train_path, test_path)], "cluster", cluster_methods=("kmeans", "prior"))
    record = run.results["vade"][0]
    assert record.assignments["prior"].tolist() == model.prior.assign(xt.float()).tolist()
    assert record.methods["prior"]["acc"] == 1.0 and record.summary()["prior_ari"] == 1.0


def test_prior_method_refuses_stores_without_a_mixture_model_in_one_line(tmp_path):
    x, y, _ = _blobs(30)
    X = x.float().numpy()
    torch.manual_seed(0)
    plain = _write_store(tmp_path / "vae.h5", ConvVAE(image_size=8, latent_dim=2, widths=[4]), X, y)
    light = _write_store(tmp_path / "light.h5", _blob_model(), X, y, carry_weights=False)
    for path, message in ((plain, r"cluster method 'prior': .*vae.h5 was made by a conv-vae model, whose prior "
                                  r"\(StandardNormal\) has no clusters; it needs a mixture-prior model"),
                          (light, r"cluster method 'prior' needs the store's model \(conv-vade\): .*light.h5 "
                                  r"carries only the fingerprint")):
        with pytest.raises(ConfigError, match=message) as err:
            probe_stores([("s", path, None)], "cluster", cluster_methods=("prior",))
        assert "\n" not in str(err.value)
    data = ProbeData(X_train=X, y_train=y, X_test=X, y_test=y, label_names=[], keys_test=[])
    with pytest.raises(ConfigError, match="cluster method 'prior': the features come from no store"):
        run_probes(data, "cluster", cluster_methods=("kmeans", "prior"))


class _SpyPrior:
    """A prior with an ``assign`` that records the codes it is given (and, as asked, a ``dim`` and parameters)."""

    def __init__(self, dim=None, params=None):
        if dim is not None:
            self.dim = dim
        if params is not None:
            self.parameters = lambda: iter(params)
        self.seen = []

    def assign(self, codes):
        self.seen.append(codes)
        return torch.arange(codes.shape[0]) % 2


def test_prior_assignments_hand_float32_codes_on_the_priors_device_and_check_their_width():
    from cvae_features.probes.cluster import prior_assignments

    X = np.arange(6, dtype=np.float64).reshape(3, 2)
    for spy in (_SpyPrior(), _SpyPrior(dim=2, params=[]), _SpyPrior(dim=2, params=[torch.zeros(1)])):
        pred = prior_assignments(spy, X)  # no dim, no parameters or none: the rows as given, on the CPU
        assert pred.dtype == np.int64 and pred.tolist() == [0, 1, 0]
        (codes,) = spy.seen
        assert codes.dtype == torch.float32 and codes.device.type == "cpu" and codes.tolist() == X.tolist()
    meta = _SpyPrior(dim=2, params=[torch.zeros(1, device="meta"), torch.zeros(1)])
    assert prior_assignments(meta, X).tolist() == [0, 1, 0]
    assert meta.seen[0].device.type == "meta"  # the device of the prior's first parameter
    for rows, width in ((np.zeros((3, 3)), r"\(3,\)"), (np.zeros(3), r"\(\)")):
        with pytest.raises(ConfigError, match=rf"the 'prior' cluster method: rows of width {width} for a prior over "
                                              r"codes of width 2"):
            prior_assignments(_SpyPrior(dim=2), rows)


def test_a_store_model_without_a_prior_attribute_is_refused_in_one_line(monkeypatch, tmp_path):
    from types import SimpleNamespace

    import cvae_features.resolve

    class NoPrior:
        arch = "odd"

    monkeypatch.setattr(cvae_features.resolve, "resolve_model", lambda path: SimpleNamespace(model=NoPrior()))
    x, y, _ = _blobs(30)
    data = ProbeData(X_train=x.float().numpy(), y_train=y, X_test=x.float().numpy(), y_test=y, label_names=[],
                     keys_test=[], sources={"train": str(tmp_path / "s.h5"), "test": None})
    with pytest.raises(ConfigError, match=r"s.h5 was made by a odd model, whose prior \(NoneType\) has no clusters"):
        run_probes(data, "cluster", cluster_methods=("prior",))


# -- the command line: train, extract, probe -----------------------------------------------------------------

def test_cli_train_extract_and_probe_report_the_prior_clusters(tmp_path):
    from cvae_cli.main import cli

    d = load_digits()
    images = _digits()
    root = tmp_path / "digits"
    for r in range(1000):
        folder = root / str(d.target[r])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[r, 0]).save(folder / f"{r:04d}.png")
    runner = CliRunner()
    result = runner.invoke(cli, ["train", str(root), "-o", str(tmp_path / "run"), "--arch", "conv-vade",
                                 "--latent-dim", "10", "--epochs", "20", "--batch-size", "64", "--pretrain-steps",
                                 "200", "--val-fraction", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["extract", str(root), "-o", str(tmp_path / "f.h5"), "--model", str(tmp_path / "run"),
                                 "--with-weights", "--no-progress"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["probe", str(tmp_path / "f.h5"), "--task", "cluster",
                                 "--cluster-methods", "kmeans,prior", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    (store,) = report["stores"]
    methods = next(r for r in report["stores"][store] if r["probe"] == "cluster")["methods"]
    assert methods["prior"]["acc"] > 0.5, methods  # chance is 0.1-0.2; 0.70 when written (k-means 0.72)
    assert set(methods) == {"kmeans", "prior"} and {"acc", "nmi", "ari"} <= set(methods["prior"])
    result = runner.invoke(cli, ["train", str(root), "-o", str(tmp_path / "m2"), "--arch", "conv-vade",
                                 "--labels", "source"])
    assert result.exit_code != 0 and "--labels trains the conv-m2 family, not conv-vade" in result.output
    result = runner.invoke(cli, ["train", str(root), "-o", str(tmp_path / "plain"), "--clusters", "5"])
    assert result.exit_code != 0 and "--clusters: needs --arch conv-vade" in result.output.replace("'", "")

