"""Model families: the registry, model files recording ``arch`` (format 2; format-1 files still load)."""

import pytest
import torch

from cvae_features.errors import ConfigError, ModelError
from cvae_features.families import (DEFAULT_ARCH, create_model, get_model_family, model_families,
                                    register_model_family, unregister_model_family)
from cvae_features.model import ConvVAE, VAEConfig
from cvae_features.modelfile import MODEL_FILE_VERSION, fingerprint_state, model_fingerprint, save_model
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
