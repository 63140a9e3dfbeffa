"""Model families: the registry, model files recording ``arch`` (format 2; format-1 files still load), and a new
family defined here (one class, one registration) trained, extracted and reloaded from a store."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cvae_features.errors import ConfigError, ModelError
from cvae_features.families import (DEFAULT_ARCH, create_model, get_model_family, model_families,
                                    register_model_family, unregister_model_family)
from cvae_features.model import ConvVAE, VAEConfig, VAEOutput, to_unit_float
from cvae_features.modelfile import MODEL_FILE_VERSION, fingerprint_state, model_fingerprint, save_model
from cvae_features.priors import StandardNormal
from cvae_features.resolve import load_model, resolve_model


def _tiny():
    torch.manual_seed(0)
    return ConvVAE(image_size=8, channels=1, latent_dim=3, widths=(4,))


def test_the_default_family_is_the_conv_vae():
    assert model_families()[0] == DEFAULT_ARCH == "conv-vae" == ConvVAE.arch
    assert get_model_family("conv-vae").load() is ConvVAE
    model = create_model("conv-vae", {"image_size": 8, "channels": 1, "latent_dim": 3, "widths": [4]})
    assert isinstance(model, ConvVAE) and model.config == VAEConfig(image_size=8, channels=1, latent_dim=3, widths=(4,))
    with pytest.raises(ConfigError, match=r"unknown model family 'nope': known are \['conv-vae'"):
        create_model("nope")
    with pytest.raises(ConfigError, match=r"unknown model config keys \['latent'\]"):
        create_model("conv-vae", {"latent": 3})
    with pytest.raises(ConfigError, match="cannot be removed"):
        unregister_model_family("conv-vae")
    with pytest.raises(ConfigError, match="already registered"):
        register_model_family("conv-vae", ConvVAE)


_BUILT_IN = ["conv-vae", "conv-m2", "conv-vade"]


class _NoArch:
    pass


class _OwnArch:
    arch = "own-name"


def test_registration_checks_the_name_sets_arch_once_and_replaces_only_when_asked():
    from cvae_features.families import ModelFamily, model_class

    for bad in (3, None, "", " x", "x ", "a:b"):
        with pytest.raises(ConfigError) as err:
            register_model_family(bad, _NoArch)
        assert str(err.value) == f"invalid model family name {bad!r}: expected a non-empty name without ':'"
    assert model_families() == _BUILT_IN and not hasattr(_NoArch, "arch")
    try:
        family = register_model_family("t", _NoArch)  # one letter is a name
        assert family == ModelFamily("t", _NoArch, "") and get_model_family("t") is family and _NoArch.arch == "t"
        own = register_model_family("t-own", _OwnArch, "keeps its own arch")
        assert own == ModelFamily("t-own", _OwnArch, "keeps its own arch") and _OwnArch.arch == "own-name"
        by_name = register_model_family("a", "cvae_features.model:ConvVAE")
        assert by_name.load() is ConvVAE and model_class("a") is ConvVAE and ConvVAE.arch == "conv-vae"
        assert model_class("t") is _NoArch and get_model_family("t").load() is _NoArch
        with pytest.raises(ConfigError) as err:
            register_model_family("t", _OwnArch, "again")
        assert str(err.value) == "model family 't' is already registered (pass replace=True to replace it)"
        assert get_model_family("t") is family
        again = register_model_family("t", _OwnArch, "again", replace=True)
        assert get_model_family("t") is again and again.model_class is _OwnArch and _OwnArch.arch == "own-name"
        assert model_families() == ["conv-vae", "a", "conv-m2", "conv-vade", "t", "t-own"]  # the default first
    finally:
        for name in ("a", "t", "t-own"):
            unregister_model_family(name)
        del _NoArch.arch
    unregister_model_family("never-registered")  # nothing to remove: no error
    assert model_families() == _BUILT_IN
    for arch in ("nope", ["conv-vae"]):  # a name that is not registered, or cannot be (unhashable)
        with pytest.raises(ConfigError) as err:
            get_model_family(arch)
        assert str(err.value) == (f"unknown model family {arch!r}: known are {_BUILT_IN} (a family added by a "
                                  "plug-in must be registered before loading)")
        assert err.value.__cause__ is None and err.value.__suppress_context__


def test_create_model_reads_a_config_a_dict_or_none_and_overrides_win():
    from cvae_features.m2vae import ConvM2, M2VAEConfig

    small = VAEConfig(image_size=8, channels=1, latent_dim=3, widths=(4,))
    model = create_model(config=small)  # the default family
    assert type(model) is ConvVAE and model.config == small
    assert create_model("conv-vae", small, latent_dim=5).config == dataclasses.replace(small, latent_dim=5)
    as_dict = {"image_size": 8, "channels": 1, "latent_dim": 3, "widths": [4]}
    assert create_model("conv-vae", as_dict).config == small
    assert create_model("conv-vae", as_dict, latent_dim=6).config == dataclasses.replace(small, latent_dim=6)
    assert create_model("conv-vae", None, image_size=8, channels=1, latent_dim=2, widths=(4,)).config == (
        dataclasses.replace(small, latent_dim=2))
    assert create_model().config == VAEConfig()
    m2 = create_model("conv-m2", {**as_dict, "n_classes": 3})
    assert type(m2) is ConvM2 and m2.config == M2VAEConfig(image_size=8, channels=1, latent_dim=3, widths=(4,),
                                                           n_classes=3)
    for config in (TinyConfig(), [("latent_dim", 3)]):
        with pytest.raises(ConfigError) as err:
            create_model("conv-vae", config)
        assert str(err.value) == f"model family 'conv-vae' takes a VAEConfig, not a {type(config).__name__}"


class _Encodes:
    arch = "conv-vae"

    def encode(self, x):
        return x


class _Stateful:
    arch = "conv-vae"

    def state_dict(self):
        return {}


class _Both(_Encodes, _Stateful):
    pass


class _ListArch(_Both):
    arch = ["conv-vae"]  # not a name: never looked up in the registry


class _UnknownArch(_Both):
    arch = "own-name"


def test_arch_of_and_is_model_need_a_registered_name_on_the_class():
    from cvae_features.families import arch_of, is_model
    from cvae_features.m2vae import ConvM2

    tiny = _tiny()
    assert arch_of(tiny) == "conv-vae" and is_model(tiny)
    assert arch_of(ConvM2(image_size=8, channels=1, latent_dim=2, widths=(4,), n_classes=2)) == "conv-m2"
    assert arch_of(_Both()) == "conv-vae" and is_model(_Both())
    for obj in (_Encodes(), _Stateful(), _ListArch(), _UnknownArch(), object()):
        assert is_model(obj) is False
    for obj in (_ListArch(), _UnknownArch(), object()):
        with pytest.raises(ConfigError) as err:
            arch_of(obj)
        assert str(err.value) == f"{type(obj).__name__} is not a registered model family (known: {_BUILT_IN})"


def test_model_files_record_the_family_and_version_1_files_still_load(tmp_path):
    model = _tiny()
    path = save_model(model, tmp_path / "run")
    payload = torch.load(path, weights_only=True)
    assert payload["format_version"] == MODEL_FILE_VERSION == 2 and payload["arch"] == "conv-vae"
    assert load_model(path).fingerprint() == model.fingerprint()
    # a version-1 file has no arch: it is the default family, and its fingerprint is unchanged
    old = {k: v for k, v in payload.items() if k != "arch"}
    old["format_version"] = 1
    torch.save(old, tmp_path / "v1.pt")
    assert load_model(tmp_path / "v1.pt").fingerprint() == model.fingerprint() == payload["fingerprint"]
    torch.save({k: v for k, v in old.items() if k != "format_version"}, tmp_path / "unversioned.pt")  # version 1
    assert load_model(tmp_path / "unversioned.pt").fingerprint() == model.fingerprint()
    # the default family's fingerprint leaves its name out (version-1 stores keep matching)
    assert fingerprint_state("conv-vae", model.config.to_dict(), model.state_dict()) == model.fingerprint()
    assert fingerprint_state("other", model.config.to_dict(), model.state_dict()) != model.fingerprint()
    # a version-2 file must say its family, and a family nobody registered is one line
    torch.save({k: v for k, v in payload.items() if k != "arch"}, tmp_path / "noarch.pt")
    with pytest.raises(ModelError, match="damaged cvae model file: it has no 'arch' entry"):
        load_model(tmp_path / "noarch.pt")
    torch.save({**payload, "arch": "mixture-vae"}, tmp_path / "unknown.pt")
    with pytest.raises(ModelError, match=r"unknown.pt: unknown model family 'mixture-vae'"):
        load_model(tmp_path / "unknown.pt")


def test_the_resolver_tells_what_it_loaded(tmp_path):
    model = _tiny()
    assert resolve_model(model).origin == "object" and resolve_model(model).model is model
    save_model(model, tmp_path / "run")
    (tmp_path / "run" / "config.json").write_text('{"preprocess": {"size": 8, "channels": 1, "resize": "pad"}}')
    run = resolve_model(tmp_path / "run")
    assert (run.origin, run.path, run.preprocess["resize"]) == ("run-dir", tmp_path / "run", "pad")
    file = resolve_model(tmp_path / "run" / "model.pt")
    assert file.origin == "model-file" and model_fingerprint(file.model) == model.fingerprint()
    with pytest.raises(ModelError, match="no model.pt in run directory"):
        resolve_model(tmp_path)
    with pytest.raises(ModelError, match="invalid model of type int"):
        resolve_model(3)


def test_the_fingerprint_reads_every_dtype_bit_for_bit():
    config = {"latent_dim": 3}
    base = {"a": torch.tensor([1.0, 2.0], dtype=torch.float64), "b": torch.tensor([1.5], dtype=torch.bfloat16)}
    first = fingerprint_state("conv-vae", config, base)
    assert len(first) == 16 and int(first, 16) >= 0
    nudged = {**base, "a": torch.tensor([1.0, 2.0 + 1e-12], dtype=torch.float64)}  # below float32's resolution
    assert fingerprint_state("conv-vae", config, nudged) != first
    assert fingerprint_state("conv-vae", config, {**base, "b": torch.tensor([1.0], dtype=torch.bfloat16)}) != first
    assert fingerprint_state("conv-vae", config, {"b": base["b"], "a": base["a"]}) == first  # order of the names


def test_save_model_makes_its_folders_and_records_the_tool_version(tmp_path):
    from cvae_features._version import __version__

    path = save_model(_tiny(), tmp_path / "a" / "b" / "run")
    assert path == tmp_path / "a" / "b" / "run" / "model.pt" and [p.name for p in path.parent.iterdir()] == ["model.pt"]
    payload = torch.load(path, weights_only=True)
    assert sorted(payload) == ["arch", "config", "fingerprint", "format", "format_version", "state_dict",
                               "tool_version"]
    assert payload["tool_version"] == __version__ and payload["format"] == "cvae-model"
    assert save_model(_tiny(), tmp_path / "x" / "m.pt") == tmp_path / "x" / "m.pt"


def test_the_resolver_reads_the_weights_a_store_carries_and_a_run_config_only_as_a_dict(tmp_path):
    from cvae_features.store import StoreWriter

    from _stores import vae_fields

    model = _tiny()
    pre = {"size": 8, "channels": 1, "resize": "crop"}
    store = tmp_path / "s.h5"
    with StoreWriter.create(store, feature_kind="vae", dim=3, preprocess=pre, source="x", plan_keys=["a"],
                            **vae_fields(model)):
        pass
    got = resolve_model(store)
    assert (got.origin, got.path, got.preprocess, got.label) == ("store", store, pre, str(store))
    assert got.model.fingerprint() == model.fingerprint() and got.meta["feature_kind"] == "vae"
    save_model(model, tmp_path / "run")
    for text, want in (('{"preprocess": [8, 1]}', {"preprocess": [8, 1]}), ("[1, 2]", {}), ("{not json", {})):
        (tmp_path / "run" / "config.json").write_text(text)
        run = resolve_model(tmp_path / "run")
        assert (run.meta, run.preprocess, run.label) == (want, None, str(tmp_path / "run"))
    (tmp_path / "run" / "config.json").write_text(json.dumps({"preprocess": pre, "epochs": 2}))
    file = resolve_model(tmp_path / "run" / "model.pt")  # the run's config.json beside the file still counts
    assert (file.origin, file.path, file.preprocess, file.meta) == ("model-file", tmp_path / "run" / "model.pt", pre,
                                                                    {"preprocess": pre, "epochs": 2})
    assert resolve_model(model).label == "(in-memory model)"


# -- a new family: one class and one registration ------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TinyConfig:
    image_size: int = 8
    channels: int = 1
    latent_dim: int = 2
    beta: float = 1.0
    hidden: int = 16

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        return cls(**d)


class TinyVAE(nn.Module):
    """A one-layer MLP VAE: the smallest thing the family protocol accepts."""

    arch = "tiny-mlp-vae"
    config_class = TinyConfig

    def __init__(self, config):
        super().__init__()
        self.config = config
        pixels = config.channels * config.image_size ** 2
        self.enc = nn.Sequential(nn.Flatten(), nn.Linear(pixels, config.hidden), nn.SiLU(),
                                 nn.Linear(config.hidden, 2 * config.latent_dim))
        self.dec = nn.Linear(config.latent_dim, pixels)
        self.prior = StandardNormal(config.latent_dim)

    def encode(self, x):
        mu, logvar = self.enc(to_unit_float(x)).chunk(2, dim=1)
        return mu, logvar.clamp(-10, 10)

    @torch.no_grad()
    def embed(self, x):
        return self.encode(x)[0]

    def decode_mean(self, z):
        c, s = self.config.channels, self.config.image_size
        return torch.sigmoid(self.dec(z)).view(-1, c, s, s)

    def forward(self, x, beta=None):
        x = to_unit_float(x)
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        logits = self.dec(z).view_as(x)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        kl = self.prior.kl(mu, logvar)
        b = self.config.beta if beta is None else beta
        return VAEOutput((recon + b * kl).mean(), recon.mean(), kl.mean(), mu, logvar, recon, kl, logits, beta=b)

    def loss(self, batch, beta=None):
        return self(batch["images"], beta)

    @torch.no_grad()
    def scores(self, x):
        out = self.eval()(x, 1.0)
        return {"recon_error": out.recon_per_sample, "neg_elbo": out.recon_per_sample + out.kl_per_sample,
                "mu": out.mu, "logvar": out.logvar}

    def fingerprint(self):
        return model_fingerprint(self)


@pytest.fixture
def tiny_family():
    register_model_family("tiny-mlp-vae", TinyVAE, "a one-layer MLP VAE (test)")
    yield TinyVAE
    unregister_model_family("tiny-mlp-vae")
    assert "tiny-mlp-vae" not in model_families()


def test_a_new_family_trains_extracts_and_reloads_from_the_store(tmp_path, tiny_family):
    from cvae_features.data import load_images, open_source
    from cvae_features.extraction import extract
    from cvae_features.store import FeatureStore
    from cvae_features.training import train

    result = train("digits:train", tmp_path / "run", arch="tiny-mlp-vae", model_config={"latent_dim": 3},
                   train_config={"epochs": 1, "batch_size": 64, "val_fraction": 0.1}, progress=False)
    model = result.model
    assert isinstance(model, TinyVAE) and model.config == TinyConfig(latent_dim=3)
    assert result.history[0]["epoch"] == 1 and np.isfinite(result.history[0]["train_loss"])
    assert torch.load(tmp_path / "run" / "model.pt", weights_only=True)["arch"] == "tiny-mlp-vae"

    store = extract("digits:test", tmp_path / "f.h5", model=tmp_path / "run", carry_weights=True, scores=True,
                    progress=False)
    assert store.model_fingerprint == model.fingerprint() and store.dim == 3
    src = open_source("digits:test")
    with FeatureStore(store.path) as s:
        assert s.model_arch == "tiny-mlp-vae" and s.has_model and s.extras == ["recon_error", "neg_elbo"]
        images, _, _ = load_images(src, s.preprocess, workers=0)
        np.testing.assert_allclose(s.features, model.embed(images).numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(s.extra("recon_error"), model.scores(images)["recon_error"].numpy(), rtol=1e-5)
    again = load_model(store.path)
    assert isinstance(again, TinyVAE) and again.fingerprint() == model.fingerprint()
    # the run resumes as its own family; another family is refused
    with pytest.raises(ConfigError, match="cannot resume a tiny-mlp-vae run as arch='conv-vae'"):
        train("digits:train", tmp_path / "run", arch="conv-vae", resume=True, progress=False)


def test_a_store_of_an_unregistered_family_is_one_line(tmp_path, tiny_family):
    from cvae_features.extraction import extract

    torch.manual_seed(0)
    model = TinyVAE(TinyConfig())
    extract("digits:test", tmp_path / "f.h5", model=model, carry_weights=True, progress=False)
    unregister_model_family("tiny-mlp-vae")
    with pytest.raises(ModelError, match=r"f.h5: unknown model family 'tiny-mlp-vae'"):
        load_model(tmp_path / "f.h5")
    register_model_family("tiny-mlp-vae", TinyVAE)  # the fixture removes it again


def test_a_family_without_separate_inputs_trains_augmented_only_on_the_perturbed_images(tmp_path, tiny_family):
    from cvae_features.training import train

    kw = dict(arch="tiny-mlp-vae", model_config={"latent_dim": 3}, progress=False)
    with pytest.raises(ConfigError, match="'tiny-mlp-vae' does not take separate encoder inputs.*target=same"):
        train("digits:train", tmp_path / "a", train_config={"epochs": 1, "augment": "noise=0.1"}, **kw)
    result = train("digits:train", tmp_path / "b", train_config={"epochs": 1, "augment": "noise=0.1,target=same"},
                   **kw)
    assert result.epochs_run == 1
