"""The featurizer registry: a kind defined here goes through extract, the store, --model, resume and probes."""

import copy

import numpy as np
import pytest
import torch

from cvae_features.errors import ConfigError, StoreError
from cvae_features.extraction import ExtractOptions, extract
from cvae_features.featurizers import (Featurizer, PCAFeaturizer, RawFeaturizer, VAEFeaturizer, featurizer_kinds,
                                       get_featurizer, pca_fingerprint, pixels, register_featurizer,
                                       unregister_featurizer)
from cvae_features.probes import linear_probe
from cvae_features.store import FeatureStore

from _images import write_fake_mnist


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


# ------------------------------------------------------------------------------------------
# the protocol, the registry and each built-in kind on its own (the mutation run's featurizers group)

def _pre(size=8, channels=1, resize="crop"):
    from cvae_features.data import Preprocess

    return Preprocess(size, channels, resize)


class _Bare(Featurizer):
    kind = "bare"


def test_the_base_featurizer_records_its_fields_and_keeps_only_a_recorded_resize():
    feat = _Bare(_pre(8, 1, "crop"), np.int64(5))
    assert type(feat.dim) is int and feat.dim == 5 and feat.preprocess == _pre(8, 1, "crop")
    assert feat.trained is False and feat.train_seconds == 0.0 and feat.run_dir is None
    assert feat.n_train_images is None and feat.fingerprint is None and feat.state() == {}
    assert feat.store_fields() == {"feature_kind": "bare", "dim": 5, "fingerprint": "", "state": {},
                                   "preprocess": {"size": 8, "channels": 1, "resize": "crop"}}
    feat.keep_resize({"size": 16, "channels": 3, "resize": "pad"})
    assert feat.preprocess == _pre(8, 1, "pad")
    feat.keep_resize({})
    assert feat.preprocess == _pre(8, 1, "pad")
    with pytest.raises(ConfigError, match="^bare features take no reference model$"):
        _Bare.from_reference("x", None, ExtractOptions())
    for call in (lambda: _Bare.fit(None, ExtractOptions(), store_path=None), lambda: _Bare.from_store(None),
                 lambda: feat.batch_fn([], "cpu")):
        with pytest.raises(NotImplementedError):
            call()


class _NoKindMeta(type):
    @property
    def kind(cls):
        raise AttributeError("kind")


def test_the_registry_checks_replaces_removes_and_lists_kinds():
    zeta, alpha = type("Zeta", (Featurizer,), {"kind": "zeta"}), type("Alpha", (Featurizer,), {"kind": "alpha"})
    other = type("Zeta2", (Featurizer,), {"kind": "zeta"})
    try:
        assert register_featurizer(zeta) is zeta and register_featurizer(zeta) is zeta  # the same class again
        assert register_featurizer(alpha, replace=False) is alpha
        assert featurizer_kinds() == ["vae", "raw", "pca", "alpha", "zeta"]
        with pytest.raises(ConfigError, match=r"^feature kind 'zeta' is already registered \(pass replace=True"):
            register_featurizer(other)
        assert get_featurizer("zeta") is zeta
        assert register_featurizer(other, replace=True) is other and get_featurizer("zeta") is other
        unregister_featurizer("zeta")
        assert featurizer_kinds() == ["vae", "raw", "pca", "alpha"]
        with pytest.raises(ConfigError, match="invalid features='zeta'"):
            get_featurizer("zeta")
    finally:
        unregister_featurizer("zeta")
        unregister_featurizer("alpha")
    unregister_featurizer("never-registered")  # nothing to remove: nothing happens
    assert featurizer_kinds() == ["vae", "raw", "pca"]
    for kind, cls in (("vae", VAEFeaturizer), ("raw", RawFeaturizer), ("pca", PCAFeaturizer)):
        with pytest.raises(ConfigError, match=f"^the built-in feature kind '{kind}' cannot be removed$"):
            unregister_featurizer(kind)
        assert get_featurizer(kind) is cls
    no_kind = _NoKindMeta("NoKind", (Featurizer,), {})
    for bad in (type("NotOne", (), {"kind": "x"}), type("Empty", (Featurizer,), {}), no_kind, int, "raw",
                RawFeaturizer(_pre())):
        with pytest.raises(ConfigError, match="is not a Featurizer subclass with a kind"):
            register_featurizer(bad)
    assert featurizer_kinds() == ["vae", "raw", "pca"]
    with pytest.raises(ConfigError, match=r"^invalid features=\['raw'\]: expected one of \['vae', 'raw', 'pca'\]$"):
        get_featurizer(["raw"])


def _tiny_vae():
    from cvae_features.model import ConvVAE

    torch.manual_seed(0)
    return ConvVAE(image_size=8, channels=1, latent_dim=3, widths=(4,))


def test_vae_featurizer_takes_size_and_channels_from_the_model_and_only_the_resize_from_a_preprocessing():
    model = _tiny_vae()
    for pre, resize in ((None, "crop"), ({}, "crop"), ({"resize": None}, "crop"), ({"resize": ""}, "crop"),
                        ({"resize": "stretch", "size": 16, "channels": 3}, "stretch"), (_pre(16, 3, "pad"), "pad")):
        feat = VAEFeaturizer(model, pre)
        assert feat.preprocess == _pre(8, 1, resize) and feat.dim == 3 and feat.model is model
    assert feat.state() == {} and feat.fingerprint == model.fingerprint()
    fields = feat.store_fields()
    assert fields == {"feature_kind": "vae", "dim": 3, "preprocess": {"size": 8, "channels": 1, "resize": "pad"},
                      "fingerprint": model.fingerprint(), "state": {}, "model_config": model.config.to_dict(),
                      "model_arch": "conv-vae"}
    carried = feat.store_fields(carry_weights=True)["state"]
    assert list(carried) == list(model.state_dict())
    for name, value in model.state_dict().items():
        assert carried[name].device.type == "cpu" and not carried[name].requires_grad
        assert torch.equal(carried[name], value)
    feat.keep_resize({"resize": "stretch"})
    assert feat.preprocess == _pre(8, 1, "stretch")


def test_a_vae_featurizer_from_a_store_or_a_reference_keeps_its_resize_and_checks_dim(tmp_path):
    from _stores import vae_fields

    from cvae_features.store import StoreWriter

    model = _tiny_vae()
    pad = {"size": 8, "channels": 1, "resize": "pad"}
    for name, carry in (("carried.h5", True), ("bare.h5", False)):
        with StoreWriter.create(tmp_path / name, feature_kind="vae", dim=3, preprocess=pad, source="x",
                                plan_keys=["a"], **vae_fields(model, carry_weights=carry)):
            pass
    with FeatureStore(tmp_path / "carried.h5") as store:
        feat = VAEFeaturizer.from_store(store)
    assert feat.preprocess == _pre(8, 1, "pad") and feat.dim == 3 and feat.fingerprint == model.fingerprint()
    for reference, resize in ((tmp_path / "carried.h5", "pad"), (model, "crop")):
        for dim in (None, 3):
            feat = VAEFeaturizer.from_reference(reference, None, ExtractOptions(dim=dim))
            assert feat.preprocess == _pre(8, 1, resize) and feat.fingerprint == model.fingerprint()
        with pytest.raises(ConfigError, match=r"^dim=4 does not match the model's latent width 3; dim only chooses"):
            VAEFeaturizer.from_reference(reference, None, ExtractOptions(dim=4))
    with FeatureStore(tmp_path / "bare.h5") as store, pytest.raises(StoreError) as err:
        VAEFeaturizer.from_store(store)
    assert str(err.value) == (f"{tmp_path / 'bare.h5'} carries only the fingerprint {model.fingerprint()} of its "
                              "model, not the weights; pass the model (--model RUN_DIR or model file) to go on")


def test_vae_batch_runs_an_eval_copy_channels_last_on_the_cpu_and_gives_the_extras_asked():
    model = _tiny_vae().train()
    feat = VAEFeaturizer(model)
    batch = feat.batch_fn(("neg_elbo",), "cpu")
    assert model.training and not batch.model.training and batch.model is not model
    assert batch.extras == ["neg_elbo"] and batch.device == torch.device("cpu")
    assert batch.memory_format is torch.channels_last
    conv = next(p for p in batch.model.parameters() if p.dim() == 4 and p.shape[1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    torch.manual_seed(1)
    x = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        scores = reference.scores(x)
        mu_ref, lv_ref = reference.encode(x)
    for extras, keys in ((["neg_elbo"], {"recon_error", "neg_elbo"}), (["recon_error"], {"recon_error", "neg_elbo"}),
                         (["logvar"], {"logvar"}), (["logvar", "neg_elbo"], {"logvar", "recon_error", "neg_elbo"}),
                         ([], set())):
        mu, extra = feat.batch_fn(extras, "cpu")(x)
        assert set(extra) == keys and isinstance(mu, np.ndarray) and mu.dtype == np.float32 and mu.shape == (5, 3)
        np.testing.assert_allclose(mu, mu_ref.numpy(), rtol=1e-5, atol=1e-6)
        for key, value in extra.items():
            want = lv_ref if key == "logvar" else scores[key]
            assert isinstance(value, np.ndarray) and value.dtype == np.float32
            np.testing.assert_allclose(value, want.numpy(), rtol=1e-5, atol=1e-6)
    assert model.training  # the batch calls left the model given as it was


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_vae_batch_on_a_cuda_device_moves_the_images_there_and_gives_what_the_cpu_gives():
    model = _tiny_vae().eval()
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    batch = VAEFeaturizer(model).batch_fn(["logvar", "neg_elbo"], "cuda")
    assert batch.memory_format is torch.contiguous_format and next(batch.model.parameters()).is_cuda
    mu, extra = batch(x)
    mu_cpu, extra_cpu = VAEFeaturizer(model).batch_fn(["logvar", "neg_elbo"], "cpu")(x)
    np.testing.assert_allclose(mu, mu_cpu, rtol=1e-4, atol=1e-5)
    for key in ("logvar", "recon_error", "neg_elbo"):
        np.testing.assert_allclose(extra[key], extra_cpu[key], rtol=1e-4, atol=1e-4)


def test_pixels_are_float32_in_0_1_one_row_per_image_also_for_no_image():
    images = torch.tensor([[[[0, 255], [51, 102]]], [[[1, 2], [3, 4]]]], dtype=torch.uint8)
    out = pixels(images)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (2, 4)
    np.testing.assert_array_equal(out, np.float32([[0, 255, 51, 102], [1, 2, 3, 4]]) / np.float32(255))
    color = torch.arange(12, dtype=torch.uint8).reshape(1, 3, 2, 2)
    np.testing.assert_array_equal(pixels(color), np.arange(12, dtype=np.float32)[None] / np.float32(255))
    assert pixels(torch.zeros((0, 3, 2, 2), dtype=torch.uint8)).shape == (0, 12)
    mu, extra = RawFeaturizer(_pre(2, 3)).batch_fn(["logvar"], "cpu")(color)
    assert extra == {} and mu.dtype == np.float32
    np.testing.assert_array_equal(mu, pixels(color))


def _array_source(n=12, channels=1, size=4, seed=0):
    from cvae_features.data import ArraySource

    shape = (n, size, size) if channels == 1 else (n, channels, size, size)
    return ArraySource(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


def test_raw_featurizer_is_the_sources_pixels_and_checks_dim(tmp_path):
    src = _array_source(3, channels=3, size=5)
    feat = RawFeaturizer.fit(src, ExtractOptions(), store_path=None)
    assert feat.preprocess == _pre(5, 3) and feat.dim == 75 and feat.fingerprint is None and feat.state() == {}
    assert RawFeaturizer.fit(src, ExtractOptions(dim=75), store_path=None).dim == 75
    with pytest.raises(ConfigError, match=r"^dim=74 does not fit raw features of 3x5x5 = 75 values; leave dim unset"):
        RawFeaturizer.fit(src, ExtractOptions(dim=74), store_path=None)
    assert RawFeaturizer(_pre(6, 1)).dim == 36
    feat.keep_resize({"size": 4, "channels": 1, "resize": "pad"})
    assert feat.preprocess == _pre(4, 1, "pad") and feat.dim == 16
    feat.keep_resize({"size": 2, "channels": 3})
    assert feat.preprocess == _pre(2, 3, "crop") and feat.dim == 12
    # a raw store stands for its preprocessing
    path = extract(_array_source(4, size=6), tmp_path / "raw.h5", features="raw", progress=False).path
    ref = RawFeaturizer.from_reference(path, None, ExtractOptions())
    assert ref.preprocess == _pre(6, 1) and ref.dim == 36
    assert RawFeaturizer.from_reference(str(path), None, ExtractOptions(dim=36)).dim == 36
    with pytest.raises(ConfigError, match="^dim=35 does not fit raw features of 1x6x6 = 36 values"):
        RawFeaturizer.from_reference(path, None, ExtractOptions(dim=35))
    with FeatureStore(path) as store:
        assert RawFeaturizer.from_store(store).preprocess == _pre(6, 1)


def test_a_reference_for_raw_or_pca_features_must_be_a_store_of_that_kind_which_is_closed_if_refused(tmp_path):
    from cvae_features.errors import ModelError
    from cvae_features.featurizers import _reference_store

    raw = extract(_array_source(4), tmp_path / "raw.h5", features="raw", progress=False).path
    pca = extract(_array_source(6), tmp_path / "pca.h5", features="pca", dim=2, progress=False).path
    with _reference_store(raw, "raw") as store:
        assert store.feature_kind == "raw" and store.path == raw
    with _reference_store(str(pca), "pca") as store:
        assert store.feature_kind == "pca"
    (tmp_path / "not.h5").write_bytes(b"not a store")
    for reference in (_tiny_vae(), 3, tmp_path / "not.h5", str(tmp_path / "none.h5"), tmp_path):
        with pytest.raises(ModelError, match=r"(?s)^model=.*: for pca features, expected a pca feature store whose "):
            PCAFeaturizer.from_reference(reference, None, ExtractOptions())
    with pytest.raises(ModelError, match=f"^model store {raw} holds raw features: expected a pca store$"):
        PCAFeaturizer.from_reference(raw, None, ExtractOptions())
    with pytest.raises(ModelError, match="holds pca features: expected a raw store"):
        RawFeaturizer.from_reference(pca, None, ExtractOptions())
    import h5py

    for path in (raw, pca):  # closed again: the file can be opened for writing
        with h5py.File(path, "r+"):
            pass


def test_pca_fingerprint_is_the_hash_of_the_sorted_preprocessing_and_the_basis_as_float64():
    import hashlib

    mean, comps = np.arange(6, dtype=np.float32) / 7, np.arange(12, dtype=np.float32).reshape(2, 6) / 5
    pre = {"size": 2, "resize": "crop", "channels": 1}
    h = hashlib.sha256(b'{"channels": 1, "resize": "crop", "size": 2}')
    for arr in (mean.astype(np.float64), comps.astype(np.float64)):
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    fp = pca_fingerprint(mean, comps, pre)
    assert fp == h.hexdigest()[:16] and len(fp) == 16
    fortran = comps.astype(np.float64).T.copy().T
    assert pca_fingerprint(mean.astype(np.float64), fortran, dict(reversed(pre.items()))) == fp
    assert pca_fingerprint(mean, comps.reshape(3, 4), pre) != fp  # the same numbers in another shape
    assert pca_fingerprint(mean, comps, dict(pre, resize="pad")) != fp


def test_pca_featurizer_holds_its_basis_as_float64_and_projects_the_pixels(tmp_path):
    rng = np.random.default_rng(0)
    mean, comps, var = rng.random(4).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32), [3, 2, 1]
    feat = PCAFeaturizer(_pre(2, 1), mean, comps, var)
    assert feat.dim == 3 and feat.preprocess == _pre(2, 1)
    for name, value in (("mean", mean), ("components", comps), ("explained_variance", var)):
        assert getattr(feat, name).dtype == np.float64
        np.testing.assert_array_equal(getattr(feat, name), np.asarray(value, np.float64))
    state = feat.state()
    assert list(state) == ["mean", "components", "explained_variance"]
    assert all(state[k] is getattr(feat, k) for k in state)
    assert feat.fingerprint == pca_fingerprint(mean, comps, {"size": 2, "channels": 1, "resize": "crop"})
    fields = feat.store_fields()
    assert fields["fingerprint"] == feat.fingerprint and fields["dim"] == 3 and fields["feature_kind"] == "pca"
    images = torch.tensor(rng.integers(0, 256, (5, 1, 2, 2)), dtype=torch.uint8)
    out, extra = feat.batch_fn(["logvar"], "cpu")(images)
    assert extra == {} and out.dtype == np.float32 and out.shape == (5, 3)
    want = (images.numpy().reshape(5, 4) / 255.0 - mean.astype(np.float64)) @ comps.astype(np.float64).T
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-7)
    # the batch call projects in float64 whatever basis it is given
    from cvae_features.featurizers import _PCABatch

    direct = _PCABatch(mean, comps)
    assert direct.mean.dtype == direct.components_t.dtype == np.float64 and direct.components_t.shape == (4, 3)
    assert direct.components_t.flags.c_contiguous
    exact = (pixels(images).astype(np.float64) - mean.astype(np.float64)) @ comps.astype(np.float64).T
    np.testing.assert_array_equal(direct(images)[0], exact.astype(np.float32))
    feat.keep_resize({"size": 2, "channels": 1, "resize": "stretch"})
    assert feat.preprocess == _pre(2, 1, "stretch") and feat.dim == 3
    assert feat.fingerprint == pca_fingerprint(mean, comps, {"size": 2, "channels": 1, "resize": "stretch"})


def test_pca_featurizer_from_its_store_or_a_reference_and_a_damaged_basis(tmp_path):
    path = extract(_array_source(8), tmp_path / "pca.h5", features="pca", dim=3, progress=False).path
    with FeatureStore(path) as store:
        basis = {k: np.array(v) for k, v in store.featurizer_state.items()}
        fp = store.model_fingerprint
        again = PCAFeaturizer.from_store(store)
    assert sorted(basis) == ["components", "explained_variance", "mean"] and basis["components"].shape == (3, 16)
    ref = PCAFeaturizer.from_reference(path, None, ExtractOptions())
    assert ref.dim == 3 and ref.preprocess == _pre(4, 1) and ref.fingerprint == fp == again.fingerprint
    assert PCAFeaturizer.from_reference(path, None, ExtractOptions(dim=3)).dim == 3
    with pytest.raises(ConfigError, match="^dim=2 does not match the pca basis of width 3$"):
        PCAFeaturizer.from_reference(path, None, ExtractOptions(dim=2))
    for k in basis:
        np.testing.assert_array_equal(getattr(again, k), basis[k])
    import h5py

    with h5py.File(path, "r+") as f:
        del f["featurizer_state"]["components"]
        del f["featurizer_state"]["mean"]
    with FeatureStore(path) as store, pytest.raises(StoreError) as err:
        PCAFeaturizer.from_store(store)
    assert str(err.value) == f"{path}: the pca basis lacks ['mean', 'components'] (damaged store?)"


def _folder_with_bad_files(root, n, bad, size=4):
    """n gray PNGs 00.png... of random pixels; the files at ``bad`` do not decode."""
    from PIL import Image

    folder = root / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(3)
    good = []
    for i in range(n):
        if i in bad:
            (folder / f"{i:02d}.png").write_bytes(b"not a png")
        else:
            arr = rng.integers(0, 256, (size, size), dtype=np.uint8)
            Image.fromarray(arr, "L").save(folder / f"{i:02d}.png")
            good.append((arr.reshape(-1).astype(np.float32) / np.float32(255)).astype(np.float64))
    return folder, np.array(good)


def _sklearn_pca(x, dim):
    from sklearn.decomposition import PCA

    return PCA(n_components=dim, svd_solver="full").fit(x)


def test_fit_pca_exact_equals_scikit_learns_pca_and_checks_dim_at_its_bounds():
    from cvae_features.errors import DataError
    from cvae_features.featurizers import fit_pca

    src = _array_source(30, channels=3, size=2, seed=1)
    x = pixels(torch.from_numpy(src.images)).astype(np.float64)
    for dim in (4, 12):  # 12: as many components as pixel values
        got = fit_pca(src, _pre(2, 3), dim, batch_size=7, workers=0)
        want = _sklearn_pca(x, dim)
        assert sorted(got) == ["components", "explained_variance", "mean"] and got["components"].shape == (dim, 12)
        np.testing.assert_allclose(got["mean"], want.mean_, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(got["components"], want.components_, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(got["explained_variance"], want.explained_variance_, rtol=1e-9, atol=1e-12)
        assert (got["explained_variance"] >= 0).all()
    with pytest.raises(ConfigError, match="^invalid dim=13: a PCA of 30 images of 12 values has at most 12 comp"):
        fit_pca(src, _pre(2, 3), 13)
    few = _array_source(5, channels=3, size=2)
    with pytest.raises(ConfigError, match="^invalid dim=6: a PCA of 5 images of 12 values has at most 5 components"):
        fit_pca(few, _pre(2, 3), 6)
    with pytest.raises(DataError, match="^only 5 images could be decoded: a PCA with dim=5 needs more than 5$"):
        fit_pca(few, _pre(2, 3), 5)
    got = fit_pca(few, _pre(2, 3), 4, batch_size=1)
    np.testing.assert_allclose(got["components"], _sklearn_pca(pixels(torch.from_numpy(few.images)).astype(float),
                                                               4).components_, rtol=1e-7, atol=1e-9)
    # a constant pixel: a zero variance, never a negative one
    flat = _array_source(10, size=2, seed=2)
    flat.images[:, 0, 0, 0] = 7
    got = fit_pca(flat, _pre(2, 1), 4)
    assert got["explained_variance"][-1] == 0.0 and (got["explained_variance"][:3] > 0).all()


def _ipca(chunks, dim):
    from sklearn.decomposition import IncrementalPCA

    ipca = IncrementalPCA(n_components=dim)
    for chunk in chunks:
        ipca.partial_fit(chunk)
    return {"mean": ipca.mean_, "components": ipca.components_, "explained_variance": ipca.explained_variance_}


def _assert_basis_equal(got, want):
    assert sorted(got) == ["components", "explained_variance", "mean"]
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-12)


class _Bar:
    """tqdm's stand-in: what fit_pca asks of its progress bar."""

    made = []

    def __init__(self, **kw):
        self.kw, self.updates = kw, []
        _Bar.made.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        self.updates.append(n)


def test_fit_pca_beyond_the_covariance_limit_is_incremental_in_pieces_of_at_least_dim_rows(tmp_path, monkeypatch):
    import tqdm.auto

    from cvae_features import featurizers

    monkeypatch.setattr(featurizers, "PCA_COVARIANCE_MAX_FEATURES", 15)  # 4x4 images: 16 values, incremental
    # batches of 5 files: 2 decode, 5, none, 5, 3 (= dim), 5, 2
    folder, x = _folder_with_bad_files(tmp_path, 35, {0, 1, 2, 10, 11, 12, 13, 14, 20, 21, 32, 33, 34})
    from cvae_features.data import open_source

    src = open_source(folder)
    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)
    _Bar.made.clear()
    got = featurizers.fit_pca(src, _pre(4, 1), 3, batch_size=5, workers=0, progress=True)
    # the pieces: the 2 rows held until the next batch, then each batch, the last one with the 2 rows after it
    _assert_basis_equal(got, _ipca([x[0:7], x[7:12], x[12:15], x[15:22]], 3))
    assert len(_Bar.made) == 1 and _Bar.made[0].updates == [5] * 7
    assert _Bar.made[0].kw == {"total": 35, "disable": False, "unit": "img", "desc": "fitting pca", "leave": False}
    # batches of at least dim rows: 3 + 3 + 3 + 1 (the 1 held with the batch before)
    arrays = _array_source(10, size=4, seed=4)
    xa = pixels(torch.from_numpy(arrays.images)).astype(np.float64)
    got = featurizers.fit_pca(arrays, _pre(4, 1), 3, batch_size=1)
    _assert_basis_equal(got, _ipca([xa[0:3], xa[3:6], xa[6:10]], 3))
    assert _Bar.made[1].kw == dict(_Bar.made[0].kw, total=10, disable=True) and _Bar.made[1].updates == [3, 3, 3, 1]
    # by default batches of 256 images
    many = _array_source(300, size=4, seed=6)
    xm = pixels(torch.from_numpy(many.images)).astype(np.float64)
    _assert_basis_equal(featurizers.fit_pca(many, _pre(4, 1), 3), _ipca([xm[:256], xm[256:]], 3))
    assert _Bar.made[2].updates == [256, 44] and _Bar.made[2].kw["disable"] is True
    # at the limit the covariance is exact
    monkeypatch.setattr(featurizers, "PCA_COVARIANCE_MAX_FEATURES", 16)
    got = featurizers.fit_pca(arrays, _pre(4, 1), 3, batch_size=1)
    want = _sklearn_pca(xa, 3)
    np.testing.assert_allclose(got["components"], want.components_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(got["explained_variance"], want.explained_variance_, rtol=1e-9)


def test_a_pca_featurizer_is_fitted_with_the_extraction_options(tmp_path, monkeypatch, capsys):
    from cvae_features import featurizers

    src = _array_source(12, size=4, seed=5)
    x = pixels(torch.from_numpy(src.images)).astype(np.float64)
    with pytest.raises(ConfigError, match=r"^features='pca' needs dim \(the number of components\), or --model"):
        PCAFeaturizer.fit(src, ExtractOptions(), store_path=None)
    feat = PCAFeaturizer.fit(src, ExtractOptions(dim=3), store_path=None)
    assert feat.dim == 3 and feat.preprocess == _pre(4, 1)
    np.testing.assert_allclose(feat.components, _sklearn_pca(x, 3).components_, rtol=1e-7, atol=1e-9)
    monkeypatch.setattr(featurizers, "PCA_COVARIANCE_MAX_FEATURES", 15)
    capsys.readouterr()
    feat = PCAFeaturizer.fit(src, ExtractOptions(dim=3, batch_size=4, progress=False), store_path=None)
    _assert_basis_equal(feat.state(), _ipca([x[0:4], x[4:8], x[8:12]], 3))
    assert capsys.readouterr().err == ""
    PCAFeaturizer.fit(src, ExtractOptions(dim=3, progress=True), store_path=None)
    assert "fitting pca" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="^workers=-1: expected a non-negative integer"):
        PCAFeaturizer.fit(src, ExtractOptions(dim=3, workers=-1), store_path=None)


def test_a_vae_featurizer_is_trained_with_the_extraction_options(tmp_path, capsys, monkeypatch):
    """VAEFeaturizer.fit on a built-in name found in data_dir: the configs, the estimate for on_training, resume,
    overwrite and progress reach the plan and the training."""
    for name in ("CVAE_NO_DOWNLOAD", "CVAE_DATA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    write_fake_mnist(tmp_path / "mnist", n_train=2, n_test=12)
    opts = dict(model_config={"widths": [4], "image_size": 8}, train_config={"epochs": 1, "batch_size": 8},
                data_dir=tmp_path / "mnist", progress=False)
    plans = []
    store = tmp_path / "f.h5"
    feat = VAEFeaturizer.fit("mnist:test", ExtractOptions(dim=2, **opts), store_path=store, on_training=plans.append)
    assert feat.trained is True and feat.run_dir == tmp_path / "f.run" and feat.n_train_images == 12
    assert feat.train_seconds > 0 and (feat.run_dir / "model.pt").is_file()
    assert feat.dim == 2 and feat.model.config.widths == (4,) and feat.preprocess == _pre(8, 1, "crop")
    assert len(plans) == 1 and plans[0].train_config.epochs == 1 and plans[0].estimated_seconds > 0
    assert capsys.readouterr().err == ""
    fingerprint = feat.fingerprint
    # a finished run is taken up again with resume; overwrite trains anew (the same seed: the same model)
    again = VAEFeaturizer.fit("mnist:test", ExtractOptions(dim=2, resume=True, **opts), store_path=store)
    assert again.fingerprint == fingerprint
    opts["progress"] = True
    anew = VAEFeaturizer.fit("mnist:test", ExtractOptions(dim=2, overwrite=True, **opts), store_path=store)
    assert anew.fingerprint == fingerprint and "epoch" in capsys.readouterr().err.lower()
