"""The conv-m2 family (Kingma's M2 on images): its loss against the per-class pieces, the embedding, training."""

import json
import math
import re
import shutil
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch.nn import functional as F

from cvae_features.errors import ConfigError
from cvae_features.families import create_model, model_families
from cvae_features.m2vae import ConvM2, M2VAEConfig
from cvae_features.model import LOGVAR_MAX, LOGVAR_MIN, VAEConfig, load_model
from cvae_features.noise import keyed_normal
from cvae_features.training import train

SMALL = {"image_size": 8, "latent_dim": 3, "n_classes": 3, "widths": (4,), "alpha": 2.0}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ConvM2(**SMALL)


def _images(n, seed=0):
    return torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _per_class(model, x):
    """recon(x | y, z = mu_y) and KL(q(z | x, y)) for every class, shape (n, K), from the model's pieces."""
    h = model.encoder(x.float() / 255)
    k = model.config.n_classes
    recon, kl = [], []
    for c in range(k):
        y1h = F.one_hot(torch.full((x.shape[0],), c), k).float()
        mu, logvar = model._posterior(h, y1h)
        recon.append(model.reconstruction_nll(model.decode(mu, y1h), x.float() / 255))
        kl.append(0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(1))
    return torch.stack(recon, 1), torch.stack(kl, 1), F.softmax(model.classifier(h), dim=1)


def test_loss_uses_the_label_where_known_and_marginalises_the_class_elsewhere(model):
    x, labels = _images(6), torch.tensor([0, -1, 2, -1, 1, -1])
    model.eval()  # z = mu: the terms are deterministic
    out = model.loss({"images": x, "labels": labels, "index": torch.arange(6)}, beta=0.5)
    recon_y, kl_y, q = _per_class(model, x)
    lab = labels >= 0
    rows = torch.arange(6)
    expected_recon = torch.where(lab, recon_y[rows, labels.clamp_min(0)], (q * recon_y).sum(1))
    expected_kl = torch.where(lab, kl_y[rows, labels.clamp_min(0)], (q * kl_y).sum(1))
    torch.testing.assert_close(out.recon_per_sample, expected_recon)
    torch.testing.assert_close(out.kl_per_sample, expected_kl, rtol=1e-4, atol=1e-5)
    neg_entropy = torch.where(lab, torch.zeros(6), (q * q.log()).sum(1))
    ce = torch.where(lab, -q[rows, labels.clamp_min(0)].log(), torch.zeros(6))
    torch.testing.assert_close(out.per_sample_terms()["neg_entropy"], neg_entropy)
    torch.testing.assert_close(out.per_sample_terms()["class_ce"], ce)
    assert out.term_weights() == {"recon": 1.0, "kl": 0.5, "neg_entropy": 1.0, "class_ce": 2.0}
    torch.testing.assert_close(out.loss, (expected_recon + 0.5 * expected_kl + neg_entropy + 2.0 * ce).mean(),
                               rtol=1e-5, atol=1e-5)
    # the training loop's contract: the loss is the weighted sum of the term means
    torch.testing.assert_close(out.loss, sum(w * out.terms()[n] for n, w in out.term_weights().items()))


def test_training_noise_is_keyed_and_shared_by_every_class(model):
    batch = {"images": _images(4), "labels": torch.tensor([-1, 1, -1, 0]), "index": torch.arange(4),
             "noise_key": torch.tensor(7)}
    model.train()
    a, b = model.loss(batch), model.loss(batch)
    torch.testing.assert_close(a.loss, b.loss)  # keyed noise: the same batch, the same loss
    other = model.loss(dict(batch, noise_key=torch.tensor(8)))
    assert not torch.allclose(a.loss, other.loss)


def test_the_embedding_is_the_mean_of_the_class_mixture(model):
    x = _images(5, seed=1)
    model.eval()
    h = model.encoder(x.float() / 255)
    q = F.softmax(model.classifier(h), dim=1)
    mus, variances = [], []
    for c in range(3):
        mu, logvar = model._posterior(h, F.one_hot(torch.full((5,), c), 3).float())
        mus.append(mu)
        variances.append(logvar.exp())
    mus, variances = torch.stack(mus, 1), torch.stack(variances, 1)
    mean = (q.unsqueeze(2) * mus).sum(1)
    var = (q.unsqueeze(2) * (variances + mus ** 2)).sum(1) - mean ** 2
    mu, logvar = model.encode(x)
    torch.testing.assert_close(mu, mean)
    torch.testing.assert_close(logvar.exp(), var, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model.embed(x), mean)
    torch.testing.assert_close(model.class_probabilities(x), q)
    scores = model.scores(x)
    recon_y, kl_y, _ = _per_class(model, x)
    torch.testing.assert_close(scores["recon_error"], (q * recon_y).sum(1))
    torch.testing.assert_close(scores["neg_elbo"], (q * (recon_y + kl_y + q.log())).sum(1) + math.log(3),
                               rtol=1e-4, atol=1e-4)


def test_config_and_labels_are_checked(model):
    assert "conv-m2" in model_families()
    assert isinstance(create_model("conv-m2", {"image_size": 8, "widths": [4], "n_classes": 4}), ConvM2)
    for bad in ({"n_classes": 1}, {"n_classes": True}, {"alpha": -1.0}, {"alpha": float("inf")},
                {"classifier_hidden": 0}, {"latent_dim": 0}):
        with pytest.raises(ConfigError):
            M2VAEConfig(**bad)
    with pytest.raises(ConfigError, match=r"conv-m2: label 3 for a model of 3 classes \(0..2\)"):
        model.loss({"images": _images(2), "labels": torch.tensor([3, -1]), "index": torch.arange(2)})
    assert M2VAEConfig.from_dict(M2VAEConfig(**SMALL).to_dict()) == M2VAEConfig(**SMALL)


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory):
    """Digits 0-2 as 8x8 PNGs: 10 labelled images per class in class folders, the other training images
    unlabelled at the root; 150 held-out images with their labels."""
    d = load_digits()
    images, y = (d.images * 255 / 16).round().astype(np.uint8), d.target
    keep = np.flatnonzero(y < 3)
    np.random.default_rng(0).shuffle(keep)
    held, rows = keep[:150], keep[150:]
    root = tmp_path_factory.mktemp("m2") / "src"
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True)
    labelled = set()
    for c in range(3):
        for r in [r for r in rows if y[r] == c][:10]:
            Image.fromarray(images[r]).save(root / f"c{c}" / f"{r}.png")
            labelled.add(r)
    for r in rows:
        if r not in labelled:
            Image.fromarray(images[r]).save(root / f"{r}.png")
    yield root, torch.tensor(images[held][:, None]), y[held]
    shutil.rmtree(root.parent)


def test_training_on_a_few_labelled_images_classifies_held_out_ones(labelled_folder, tmp_path):
    root, held, y_held = labelled_folder
    torch.manual_seed(0)
    result = train(str(root), tmp_path / "run", arch="conv-m2", progress=False,
                   model_config={"image_size": 8, "latent_dim": 4, "n_classes": 3, "widths": [16]},
                   train_config={"epochs": 8, "batch_size": 32})
    model = result.model
    assert isinstance(model, ConvM2)
    assert {"train_class_ce", "val_neg_entropy"} <= set(result.history[-1])
    accuracy = float(np.mean(model.class_probabilities(held).argmax(1).numpy() == y_held))
    assert accuracy > 0.8, accuracy  # 30 labels, 357 unlabelled images; 0.92 when written
    again = load_model(tmp_path / "run")
    assert isinstance(again, ConvM2) and again.fingerprint() == model.fingerprint()
    torch.testing.assert_close(again.embed(held), model.embed(held))


# -- labels for some images: the label file, the labelled rows in every batch, cvae train --labels ------------

def _unlabelled_folder(root, n=60, seed=0):
    rng = np.random.default_rng(seed)
    d = load_digits()
    rows = np.flatnonzero(d.target < 3)[:n]
    root.mkdir(parents=True)
    for r in rows:
        Image.fromarray((d.images[r] * 255 / 16).round().astype(np.uint8)).save(root / f"{r:04d}.png")
    return root, {f"{r:04d}.png": str(d.target[r]) for r in rng.permutation(rows)[:15]}


def test_label_file_attaches_labels_by_key(tmp_path):
    from cvae_features.data import open_source
    from cvae_features.data.labelfile import read_label_file, with_labels
    from cvae_features.errors import DataError, SourceNotFoundError

    root, truth = _unlabelled_folder(tmp_path / "imgs")
    csv_path = tmp_path / "labels.csv"
    lines = ["Key,Label"] + [f"{k},{v}" for k, v in truth.items()] + ["0000.png,", "", "0001.png,-1"]
    csv_path.write_text("\n".join(lines) + "\n")
    read = read_label_file(csv_path)
    assert read == truth  # header skipped, empty and -1 labels unknown, blank lines ignored
    src = open_source(str(root))
    labelled = with_labels(src, read)
    assert labelled.label_names == ["0", "1", "2"] and not src.has_labels  # the source itself is left alone
    for key, y in zip(labelled.keys, labelled.labels):
        assert y == (int(truth[key]) if key in truth else -1)
    assert "15 labelled from labels file" in labelled.description
    assert with_labels(src, {"0000.png": "10", "0001.png": "9"}).label_names == ["9", "10"]  # numeric order
    with pytest.raises(DataError, match=r"2 key\(s\) are not images of .* \(e\.g\. 'x\.png', 'y\.png'\)"):
        with_labels(src, {"x.png": "1", "y.png": "2", "0000.png": "1"})
    for text, words in (("a.png,1,2\n", "line 1: expected 'key,label', got 3 cell"), (",1\n", "line 1: empty key"),
                        ("a.png,1\nb.png,2\na.png,3\n", "line 3: key 'a.png' is already listed on line 1")):
        csv_path.write_text(text)
        with pytest.raises(DataError, match=words):
            read_label_file(csv_path)
    with pytest.raises(SourceNotFoundError, match="does not exist"):
        read_label_file(tmp_path / "missing.csv")


def test_every_batch_gets_labelled_rows_drawn_seeded(tmp_path):
    from cvae_features.training import TrainHook

    class Batches(TrainHook):
        def __init__(self):
            self.seen = []

        def on_batch_end(self, loop, epoch, batch_index, logs):
            self.seen.append((logs["batch"]["index"].clone(), logs["batch"]["labels"].clone()))

    images = _images(40, seed=3)
    labels = np.full(40, -1)
    labels[[0, 4, 17]] = [0, 1, 2]  # 0 and 4 fall in the validation half of a plain seeded split
    from cvae_features.data import ArraySource

    runs = []
    for run in ("a", "b"):
        hook = Batches()
        train(ArraySource(images.numpy(), labels=labels), tmp_path / run, arch="conv-m2", progress=False,
              hooks=[hook], model_config={"latent_dim": 2, "widths": [4]},
              train_config={"epochs": 2, "batch_size": 16, "labelled_per_batch": 5, "val_fraction": 0.0})
        runs.append(hook.seen)
    first = runs[0]
    assert [len(index) for index, _ in first] == [21, 21, 13] * 2  # 16, 16, 8 shuffled rows plus 5 drawn
    shuffled = {int(i): int(v) for index, y in first for i, v in zip(index[:-5], y[:-5])}
    assert len(shuffled) == 40 and sorted(v for v in shuffled.values() if v >= 0) == [0, 1, 2]
    labelled = {i for i, v in shuffled.items() if v >= 0}
    for index, y in first:  # the drawn rows are labelled rows, with their labels
        assert set(index[-5:].tolist()) <= labelled and y[-5:].tolist() == [shuffled[int(i)] for i in index[-5:]]
    assert [i[-5:].tolist() for i, _ in first] != [i[-5:].tolist() for i, _ in first[:1]] * len(first)
    assert all(torch.equal(i, j) for (i, _), (j, _) in zip(first, runs[1]))  # seeded: the same draws again
    hook = Batches()  # half the images validate, yet all three labelled ones train
    train(ArraySource(images.numpy(), labels=labels), tmp_path / "half", arch="conv-m2", progress=False, hooks=[hook],
          model_config={"latent_dim": 2, "widths": [4]},
          train_config={"epochs": 1, "batch_size": 16, "labelled_per_batch": 2, "val_fraction": 0.5})
    shuffled = {int(i): int(v) for index, y in hook.seen for i, v in zip(index[:-2], y[:-2])}
    assert len(shuffled) == 20 and sorted(v for v in shuffled.values() if v >= 0) == [0, 1, 2]
    with pytest.raises(ConfigError, match="labelled_per_batch=5: no training image has a label"):
        train(images, tmp_path / "c", progress=False, model_config={"latent_dim": 2, "widths": [4]},
              train_config={"epochs": 1, "labelled_per_batch": 5})


def test_resume_refuses_other_labels(tmp_path):
    from cvae_features.data import ArraySource

    images = _images(30, seed=4).numpy()
    labels = np.full(30, -1)
    labels[:6] = [0, 1, 2, 0, 1, 2]
    kwargs = {"arch": "conv-m2", "progress": False, "model_config": {"latent_dim": 2, "widths": [4]},
              "train_config": {"epochs": 1, "batch_size": 16, "labelled_per_batch": 2}}
    first = train(ArraySource(images, labels=labels), tmp_path / "run", **kwargs)
    again = train(ArraySource(images, labels=labels), tmp_path / "run", resume=True, **kwargs)  # same labels: done
    assert again.model.fingerprint() == first.model.fingerprint()
    moved = labels.copy()
    moved[6] = 2  # one more image labelled: other data for a model that learns from labels
    with pytest.raises(ConfigError, match="cannot resume: the data differ from the checkpoint's"):
        train(ArraySource(images, labels=moved), tmp_path / "run", resume=True, **kwargs)


def test_cli_train_with_a_labels_file(tmp_path):
    from click.testing import CliRunner

    from cvae_cli.main import cli

    root, truth = _unlabelled_folder(tmp_path / "imgs")
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("".join(f"{k},{v}\n" for k, v in truth.items()))
    runner = CliRunner()
    common = ["--epochs", "1", "--batch-size", "16", "--latent-dim", "2", "--no-progress"]
    result = runner.invoke(cli, ["train", str(root), "-o", str(tmp_path / "run"), "--labels", str(csv_path),
                                 "--labelled-per-batch", "4", *common])
    assert result.exit_code == 0, result.output
    model = load_model(tmp_path / "run")
    assert isinstance(model, ConvM2) and model.config.n_classes == 3
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train_config"]["labelled_per_batch"] == 4 and config["arch"] == "conv-m2"
    cases = [(["--labelled-per-batch", "4"], "needs --labels"),
             (["--labels", str(tmp_path / "nope.csv")], "does not exist"),
             (["--labels", "source"], "has labelled images of 0 class(es)")]
    csv_path.write_text("0000.png,1\nelsewhere.png,2\n")
    cases.append((["--labels", str(csv_path)], "1 key(s) are not images of"))
    for extra, words in cases:
        result = runner.invoke(cli, ["train", str(root), "-o", str(tmp_path / "bad"), *extra, *common])
        assert result.exit_code != 0 and words in result.output, result.output
        assert "Traceback" not in result.output, result.output
        if result.exit_code != 2:  # click's usage errors come with their usage lines
            assert len(result.output.strip().splitlines()) == 1, result.output


def test_augmented_inputs_reach_the_classifier_and_encoder_while_the_clean_images_are_reconstructed():
    torch.manual_seed(0)
    model = ConvM2(**SMALL).eval()
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8, generator=g)
    inputs = torch.rand(5, 1, 8, 8, generator=g)
    labels = torch.tensor([1, -1, 0, -1, 2])
    out = model.loss({"images": clean, "inputs": inputs, "labels": labels, "index": torch.arange(5)})
    assert torch.allclose(out.logits, model.classifier(model.encoder(inputs)))
    plain = model.loss({"images": clean, "labels": labels, "index": torch.arange(5)})
    assert torch.allclose(plain.logits, model.classifier(model.encoder(clean.float() / 255)))
    # the same codes decoded against the clean images give the same reconstruction term
    swapped = model.loss({"images": inputs, "inputs": inputs, "labels": labels, "index": torch.arange(5)})
    assert torch.allclose(swapped.mu, out.mu) and not torch.allclose(swapped.recon_per_sample, out.recon_per_sample)


# -- the pieces at their boundaries (values checked against the model's own heads) --------------------------------

def _noisy_recon(model, h, q, x, labels, eps):
    """recon(x | y, z = mu_y + eps sigma_y): of the label where known, averaged over q(y | x) elsewhere."""
    n, k = x.shape[0], model.config.n_classes
    recon = []
    for c in range(k):
        y1h = F.one_hot(torch.full((n,), c), k).float()
        mu, logvar = model._posterior(h, y1h)
        recon.append(model.reconstruction_nll(model.decode(mu + eps * (0.5 * logvar).exp(), y1h), x.float() / 255))
    recon = torch.stack(recon, 1)
    return torch.where(labels >= 0, recon[torch.arange(n), labels.clamp_min(0)], (q * recon).sum(1))


def test_training_noise_is_the_keyed_draw_scaled_by_each_class_posterior(model):
    x, labels, index = _images(5, seed=2), torch.tensor([2, -1, 0, -1, -1]), torch.arange(5) + 40
    model.train()
    out = model.loss({"images": x, "labels": labels, "index": index, "noise_key": torch.tensor(7)}, beta=0.25)
    h = model.encoder(x.float() / 255)
    q = F.softmax(model.classifier(h), dim=1)
    eps = keyed_normal(7, index, 3)
    expected = _noisy_recon(model, h, q, x, labels, eps)
    torch.testing.assert_close(out.recon_per_sample, expected, rtol=1e-5, atol=1e-5)
    torch.manual_seed(5)  # no key: torch's own generator, one (n, latent) draw
    free = model.loss({"images": x, "labels": labels, "index": index})
    torch.manual_seed(5)
    eps = torch.randn(5, 3)
    expected = _noisy_recon(model, h, q, x, labels, eps)
    torch.testing.assert_close(free.recon_per_sample, expected, rtol=1e-5, atol=1e-5)
    model.eval()  # in eval mode z = mu, key or no key
    keyed = model.loss({"images": x, "labels": labels, "index": index, "noise_key": torch.tensor(7)})
    plain = model.loss({"images": x, "labels": labels, "index": index})
    assert torch.equal(keyed.recon_per_sample, plain.recon_per_sample)


def test_a_batchs_codes_and_reconstructions_are_those_of_the_label_or_the_likeliest_class(model):
    x, labels = _images(6, seed=5), torch.tensor([1, -1, 0, -1, 2, -1])
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (a softmax without its dimension warns)
        out = model.loss({"images": x, "labels": labels, "index": torch.arange(6)})
        mix_mu, mix_logvar = model.encode(x)
    h = model.encoder(x.float() / 255)
    q = F.softmax(model.classifier(h), dim=1)
    lab = labels >= 0
    chosen = torch.where(lab, labels, q.argmax(1))
    y1h = F.one_hot(chosen, 3).float()
    mu, logvar = model._posterior(h, y1h)
    torch.testing.assert_close(out.mu[lab], mu[lab])
    torch.testing.assert_close(out.logvar[lab], logvar[lab])
    torch.testing.assert_close(out.mu[~lab], mix_mu[~lab])
    torch.testing.assert_close(out.logvar[~lab], mix_logvar[~lab])
    torch.testing.assert_close(out.decoder_out, model.decode(mu, y1h))
    assert out.beta == model.config.beta and out.alpha == 2.0 and torch.equal(out.logits, model.classifier(h))
    assert torch.equal(model.class_logits(x), model.classifier(h))
    # forward: every image unlabelled, beta as given or the model's
    unlabelled = model.loss({"images": x, "labels": torch.full((6,), -1), "index": torch.arange(6)}, beta=0.3)
    fwd = model(x, beta=0.3)
    assert fwd.beta == 0.3 and torch.equal(fwd.loss, unlabelled.loss)
    torch.testing.assert_close(fwd.mu, mix_mu)
    assert model(x).beta == model.config.beta
    # decode without a class: the uniform class vector
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.decode(z), model.decode(z, torch.full((4, 3), 1 / 3)))


def test_log_variances_are_clamped_in_the_posterior_and_the_mixture(model):
    h = torch.zeros(2, model.to_latent.in_features - 3)
    y1h = F.one_hot(torch.tensor([0, 2]), 3).float()
    with torch.no_grad():
        model.to_latent.weight.zero_()
        model.to_latent.bias[3:] = torch.tensor([100.0, -100.0, 5.0])
        model.to_latent.bias[:3] = torch.tensor([1.0, 2.0, 3.0])
    mu, logvar = model._posterior(h, y1h)
    assert torch.equal(mu, torch.tensor([[1.0, 2.0, 3.0]] * 2))
    assert torch.equal(logvar, torch.tensor([[LOGVAR_MAX, LOGVAR_MIN, 5.0]] * 2))
    # the mixture's variance: rounding can leave it 0 (its floor is exp(LOGVAR_MIN)), or it can pass the cap
    mu_y = torch.cat([torch.full((3, 3), 1e4), torch.tensor([[5e5, 0.0, 0.0], [-5e5, 0.0, 0.0], [0.0, 0.0, 0.0]])])
    q = torch.tensor([[0.5, 0.25, 0.25]] * 2)
    mix_mu, mix_logvar = model._mixture(mu_y, torch.full((6, 3), LOGVAR_MIN), q)
    assert torch.equal(mix_mu, torch.tensor([[1e4] * 3, [1.25e5, 0.0, 0.0]]))
    assert torch.equal(mix_logvar, torch.tensor([[LOGVAR_MIN] * 3, [LOGVAR_MAX, LOGVAR_MIN, LOGVAR_MIN]]))


def test_settings_at_their_boundaries_and_the_heads_widths():
    for ok in ({"n_classes": 2}, {"n_classes": 10_000}, {"alpha": 0}, {"classifier_hidden": 1},
               {"classifier_hidden": 65_536}):
        M2VAEConfig(**ok)
    for bad, words in (({"n_classes": 10_001}, "n_classes=10001"), ({"n_classes": 2.0}, "n_classes=2.0"),
                       ({"alpha": "1"}, "alpha='1'"), ({"alpha": -1e-9}, "alpha=-1e-09"),
                       ({"classifier_hidden": 65_537}, "classifier_hidden=65537"),
                       ({"classifier_hidden": True}, "classifier_hidden=True"),
                       ({"classifier_hidden": 8.0}, "classifier_hidden=8.0")):
        with pytest.raises(ConfigError, match=re.escape(f"invalid {words}: expected")):
            M2VAEConfig(**bad)
    alpha = M2VAEConfig(alpha=3).alpha
    assert type(alpha) is float and alpha == 3.0
    net = ConvM2(M2VAEConfig(**SMALL), alpha=5.0, classifier_hidden=7)
    assert net.config == M2VAEConfig(**dict(SMALL, alpha=5.0, classifier_hidden=7))
    assert ConvM2(M2VAEConfig(**SMALL)).config == M2VAEConfig(**SMALL)
    flat = net.encoder(torch.zeros(1, 1, 8, 8)).shape[1]
    assert (net.to_latent.in_features, net.to_latent.out_features) == (flat + 3, 6)
    assert (net.from_latent.in_features, net.from_latent.out_features) == (3 + 3, flat)
    first, last = (m for m in net.classifier if isinstance(m, torch.nn.Linear))
    assert [(m.in_features, m.out_features) for m in (first, last)] == [(flat, 7), (7, 3)]
    h = torch.randn(4, flat, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(net.classifier(h), last(F.silu(first(h))))  # SiLU between the two layers
    with pytest.raises(ConfigError, match="conv-m2 takes a config of type M2VAEConfig, not VAEConfig"):
        ConvM2(VAEConfig(image_size=8))


def test_label_file_edge_cases_and_the_labels_attached(tmp_path):
    from cvae_features.data import ArraySource
    from cvae_features.data.labelfile import read_label_file, with_labels
    from cvae_features.errors import DataError

    path = tmp_path / "labels.csv"
    path.write_text("")
    assert read_label_file(path) == {}  # an empty file labels nothing
    path.write_text("\n\n")
    assert read_label_file(path) == {}
    path.write_text("KEY,label\na,1\n")  # a header in any case; only the first row can be one
    assert read_label_file(path) == {"a": "1"}
    path.write_text("a,1\nkey,label\n")
    assert read_label_file(path) == {"a": "1", "key": "label"}
    path.write_text("a,1\nb\n")
    with pytest.raises(DataError, match="line 2: expected 'key,label', got 1 cell"):
        read_label_file(path)
    src = ArraySource(_images(6).numpy())
    keys = list(src.keys)
    out = with_labels(src, {keys[4]: "b", keys[1]: "a", keys[5]: "b"}, what="my file")
    assert out.labels.tolist() == [-1, 0, -1, -1, 1, 1] and out.labels.dtype == np.int64
    assert out.label_names == ["a", "b"] and out.description == f"{src.description}, 3 labelled from my file"
    with pytest.raises(DataError, match=r"^my file: 4 key\(s\) are not images of .* \(e\.g\. 'w', 'x', 'y'\); keys"):
        with_labels(src, {"w": "1", "x": "1", keys[0]: "1", "y": "2", "z": "2"}, what="my file")


def test_the_loss_makes_its_tensors_on_the_images_device_and_keeps_the_codes_in_the_autocast_dtype(model, monkeypatch):
    """On an accelerator a tensor made without ``device=`` lands on the CPU: every tensor conv-m2 makes names it."""
    made = []
    for name in ("full", "randn", "arange", "eye"):
        def spy(*args, _real=getattr(torch, name), _name=name, **kwargs):
            if sys._getframe(1).f_code.co_filename.endswith("m2vae.py"):
                made.append((_name, kwargs.get("device")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(torch, name, spy)
    x = _images(4, seed=6)
    model.train()
    out = model(x)  # no labels: all unlabelled; no key: torch.randn
    model.encode(x)
    model.decode(torch.zeros(2, 3))
    assert {n for n, _ in made} == {"full", "randn", "arange", "eye"}
    assert all(d == torch.device("cpu") for _, d in made), made
    assert out.recon == out.recon_per_sample.mean() and out.kl == out.kl_per_sample.mean()
    codes = []
    real_decode = model.decode
    monkeypatch.setattr(model, "decode", lambda z, y=None: codes.append(z.dtype) or real_decode(z, y))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.loss({"images": x, "index": torch.arange(4), "noise_key": torch.tensor(3)})
    assert codes == [torch.bfloat16]  # mu + noise * sigma in the posterior's own dtype


def test_an_unreadable_label_file_is_named(tmp_path):
    from cvae_features.data.labelfile import read_label_file
    from cvae_features.errors import DataError

    path = tmp_path / "labels.csv"
    path.write_bytes(b"a.png,1\n\xff\xfe,2\n")
    with pytest.raises(DataError, match=f"^labels file {re.escape(repr(str(path)))} cannot be read: "):
        read_label_file(path)
