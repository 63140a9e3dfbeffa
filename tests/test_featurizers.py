"""The featurizer registry: a kind defined here goes through extract, the store, --model, resume and probes."""

import numpy as np
import pytest
import torch

from cvae_features.errors import ConfigError, StoreError
from cvae_features.extraction import ExtractOptions, extract
from cvae_features.featurizers import (Featurizer, PCAFeaturizer, RawFeaturizer, VAEFeaturizer, featurizer_kinds,
                                       get_featurizer, pixels, register_featurizer, unregister_featurizer)
from cvae_features.probes import linear_probe
from cvae_features.store import FeatureStore


class Projection(Featurizer):
    """Pixels times a seeded random matrix: a featurizer with fitted state and a fingerprint."""

    kind = "projection"

    def __init__(self, preprocess, matrix):
        super().__init__(preprocess, matrix.shape[1])
        self.matrix = np.asarray(matrix, dtype=np.float32)

    @classmethod
    def fit(cls, source, options, *, store_path, on_training=None):
        from cvae_features.data import infer_preprocess

        pre = infer_preprocess(source)
        rng = np.random.default_rng(7)
        return cls(pre, rng.normal(size=(pre.channels * pre.size ** 2, options.dim or 4)))

    @classmethod
    def from_reference(cls, reference, source, options):
        with FeatureStore(reference) as store:
            return cls.from_store(store)

    @classmethod
    def from_store(cls, store):
        return cls(store.preprocess, store.featurizer_state["matrix"])

    @property
    def fingerprint(self):
        import hashlib

        return hashlib.sha256(self.matrix.tobytes()).hexdigest()[:16]

    def state(self):
        return {"matrix": self.matrix}

    def batch_fn(self, extras, device):
        return _Project(self.matrix)


class _Project:
    def __init__(self, matrix):
        self.matrix = matrix

    def __call__(self, images):
        return pixels(images) @ self.matrix, {}


@pytest.fixture
def projection():
    register_featurizer(Projection)
    yield Projection
    unregister_featurizer("projection")
    assert "projection" not in featurizer_kinds()


def test_builtin_kinds_are_registered():
    assert featurizer_kinds()[:3] == ["vae", "raw", "pca"]
    assert (get_featurizer("vae"), get_featurizer("raw"), get_featurizer("pca")) == (VAEFeaturizer, RawFeaturizer,
                                                                                     PCAFeaturizer)
    with pytest.raises(ConfigError, match=r"invalid features='nope': expected one of \['vae', 'raw', 'pca'\]"):
        get_featurizer("nope")
    with pytest.raises(ConfigError, match="built-in feature kind 'raw' cannot be removed"):
        unregister_featurizer("raw")
    with pytest.raises(ConfigError, match="already registered"):
        register_featurizer(type("Other", (RawFeaturizer,), {}))


def test_a_registered_featurizer_runs_through_extract_store_reference_and_probes(tmp_path, projection):
    assert "projection" in featurizer_kinds()
    train = extract("digits:train", tmp_path / "train.h5", features="projection", dim=6, progress=False)
    with FeatureStore(train.path) as s:
        assert s.feature_kind == "projection" and s.dim == 6 and s.is_complete
        matrix = s.featurizer_state["matrix"]
        assert matrix.shape == (64, 6) and matrix.dtype == np.float32
        np.testing.assert_array_equal(matrix, np.random.default_rng(7).normal(size=(64, 6)).astype(np.float32))
        assert s.model_fingerprint == Projection(s.preprocess, matrix).fingerprint == train.model_fingerprint
        X_train, y_train = s.features, s.labels
    from cvae_features.data import load_images, open_source

    src = open_source("digits:train")
    images, _, _ = load_images(src, Projection.fit(src, ExtractOptions(dim=6), store_path=None).preprocess,
                               workers=0)
    np.testing.assert_allclose(X_train, pixels(images) @ matrix, rtol=1e-5, atol=1e-5)

    # the train store stands for its featurizer: test features use the same matrix, the kind is inferred
    test = extract("digits:test", tmp_path / "test.h5", model=train.path, progress=False)
    assert test.feature_kind == "projection" and test.model_fingerprint == train.model_fingerprint
    with FeatureStore(test.path) as s:
        X_test, y_test = s.features, s.labels
    result = linear_probe(X_train, y_train, X_test, y_test, seed=0)
    assert 0.4 < result.accuracy < 0.8  # 6 random projections of 8x8 digits: far above chance (0.1), below pixels


def test_a_registered_featurizer_resumes_from_its_stored_state(tmp_path, projection):
    path = tmp_path / "p.h5"

    def stop(progress):
        if progress.batch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract("digits:test", path, features="projection", dim=3, batch_size=100, callback=stop, progress=False)
    with FeatureStore(path) as s:
        assert not s.is_complete and s.n_rows == 200
    done = extract("digits:test", path, resume=True, batch_size=100, progress=False)
    whole = extract("digits:test", tmp_path / "whole.h5", features="projection", dim=3, progress=False)
    with FeatureStore(done.path) as a, FeatureStore(whole.path) as b:
        assert a.is_complete and a.keys == b.keys
        np.testing.assert_array_equal(a.features, b.features)
    # another matrix is another featurizer: the store refuses it
    other = Projection(whole_preprocess(whole.path), np.ones((64, 3)))
    with pytest.raises(StoreError, match="was written by model"):
        extract("digits:test", path, model=other, update=True, progress=False)


def whole_preprocess(path):
    with FeatureStore(path) as s:
        return s.preprocess


def test_extras_a_featurizer_cannot_make_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="raw features have no recon_error, neg_elbo"):
        extract("digits:test", tmp_path / "r.h5", features="raw", scores=True, progress=False)
    assert not (tmp_path / "r.h5").exists()


def test_extract_takes_an_options_object_and_refuses_unknown_keywords(tmp_path):
    opts = ExtractOptions(features="raw", batch_size=500, progress=False)
    result = extract("digits:test", tmp_path / "r.h5", options=opts, workers=0)
    assert result.feature_kind == "raw" and result.dim == 64 and result.n_rows == 450
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['batchsize'\]"):
        extract("digits:test", tmp_path / "x.h5", batchsize=3)
    with pytest.raises(ConfigError, match="resume and overwrite exclude each other"):
        ExtractOptions(resume=True, overwrite=True)


def test_vae_featurizer_batch_call_matches_the_model(tmp_path):
    from cvae_features.model import ConvVAE

    torch.manual_seed(0)
    model = ConvVAE(image_size=8, channels=1, latent_dim=3, widths=(4,)).eval()
    feat = VAEFeaturizer(model, {"resize": "pad"})
    assert (feat.preprocess.size, feat.preprocess.channels, feat.preprocess.resize, feat.dim) == (8, 1, "pad", 3)
    x = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    mu, extra = feat.batch_fn(["logvar", "recon_error", "neg_elbo"], "cpu")(x)
    out = model(x)
    np.testing.assert_allclose(mu, out.mu.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(extra["logvar"], out.logvar.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(extra["recon_error"], out.recon_per_sample.detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(extra["neg_elbo"], (out.recon_per_sample + out.kl_per_sample).detach().numpy(),
                               rtol=1e-5)
    fields = feat.store_fields(carry_weights=True)
    assert fields["model_arch"] == "conv-vae" and fields["fingerprint"] == model.fingerprint()
    assert set(fields["state"]) == set(model.state_dict()) and feat.store_fields()["state"] == {}


@pytest.mark.parametrize("kind", ["raw", "pca"])
def test_a_batch_of_only_undecodable_files_is_skipped_by_raw_and_pca(tmp_path, kind):
    """Found by the mutation run (issue #15): pixels() of an empty batch raised RuntimeError."""
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, name in enumerate("abcd"):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8), "L").save(folder / f"{name}.png")
    for name in "yz":
        (folder / f"{name}.png").write_bytes(b"not a png")
    res = extract(folder, tmp_path / "s.h5", features=kind, dim=2 if kind == "pca" else None, workers=0,
                  batch_size=2, progress=False)
    assert (res.n_rows, res.n_skipped) == (4, 2)
