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


def test_config_and_family():
    assert "conv-vade" in model_families()
    model = create_model("conv-vade", dict(SMALL))
    assert isinstance(model, ConvVaDE) and isinstance(model.prior, MixturePrior)
    assert model.prior.n_components == 3 and model.prior.dim == 2
    assert {"prior.logits", "prior.means", "prior.logvars", "steps_seen", "codes_seen", "init_codes"} <= \
        set(model.state_dict())
    assert VaDEConfig.from_dict(VaDEConfig(**SMALL).to_dict()) == VaDEConfig(**SMALL)
    for bad, message in (({"n_clusters": 1}, "invalid n_clusters=1: expected an integer from 2 to 1000"),
                         ({"pretrain_steps": -1}, "invalid pretrain_steps=-1"),
                         ({"init_rows": 2}, "invalid init_rows=2: expected an integer from 3 to")):
        with pytest.raises(ConfigError, match=message):
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


def test_augmented_inputs_reach_the_encoder_and_the_clean_images_are_reconstructed():
    torch.manual_seed(0)
    model = ConvVaDE(**SMALL).eval()
    g = torch.Generator().manual_seed(4)
    clean = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8, generator=g)
    inputs = torch.rand(5, 1, 8, 8, generator=g)
    out = model.loss({"images": clean, "inputs": inputs, "index": torch.arange(5)})
    mu = model.encode(inputs)[0]
    assert torch.equal(out.mu, mu)
    assert torch.allclose(out.recon_per_sample, model.reconstruction_nll(model.decode(mu), clean.float() / 255))
