"""Model families: the registry that turns an architecture name and a config into a model.

A *model family* is a latent-variable image model whose encoder mean is the
embedding. Model files and feature stores record the family's name (``arch``)
next to its config and weights, and loading dispatches on it, so a new family
is one module plus one :func:`register_model_family` call.

What a family's model class provides (``ConvVAE`` is the reference):

- class attributes ``arch`` (its registry name) and ``config_class`` (a
  dataclass with ``to_dict()``, ``from_dict(d)`` and the fields
  ``image_size``, ``channels``, ``latent_dim``, ``beta``);
- ``__init__(config)``; ``config``; ``prior`` (the prior over codes);
- ``encode(x) -> (mu, logvar)``, ``embed(x) -> mu`` (eval mode, no grad),
  ``decode_mean(z)`` (images in [0, 1]);
- ``loss(batch, beta=None)`` on a batch dict (``images``, ``labels``,
  ``index``), returning an object with ``loss`` and per-term values;
- ``scores(x) -> {"recon_error": (n,), "neg_elbo": (n,)}`` (eval mode);
- ``fingerprint()`` (16 hex digits over arch, config and weights) and
  ``state_dict()`` / ``load_state_dict()`` as any ``torch.nn.Module``.

Built-in families are named by ``"module:Class"`` strings and imported on
first use, so this module imports no model code (no import cycle).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Dict, List, Union

from .errors import ConfigError

DEFAULT_ARCH = "conv-vae"


@dataclass(frozen=True)
class ModelFamily:
    """A registered family: its name, its model class (or ``"module:Class"``) and a one-line description."""

    name: str
    model_class: Union[type, str]
    description: str = ""

    def load(self) -> type:
        """The model class (imported now when it was registered by name)."""
        if isinstance(self.model_class, str):
            module, _, attr = self.model_class.partition(":")
            return getattr(importlib.import_module(module), attr)
        return self.model_class


_FAMILIES: Dict[str, ModelFamily] = {
    DEFAULT_ARCH: ModelFamily(DEFAULT_ARCH, "cvae_features.model:ConvVAE",
                              "convolutional VAE, Gaussian posterior, N(0, I) prior (the default)"),
    "conv-m2": ModelFamily("conv-m2", "cvae_features.m2vae:ConvM2",
                           "Kingma's M2: the conv VAE with a class head, trained on labelled and unlabelled images"),
    "conv-vade": ModelFamily("conv-vade", "cvae_features.vade:ConvVaDE",
                             "VaDE: the conv VAE with a learnable mixture-of-gaussians prior, one component a cluster"),
}


def register_model_family(name: str, model_class: Union[type, str], description: str = "", *,
                          replace: bool = False) -> ModelFamily:
    """Add a model family under ``name`` (the ``arch`` recorded in model files and stores).

    ``model_class`` is the class or a ``"module:Class"`` string imported on first use. A class
    gets its ``arch`` attribute set to ``name`` when it has none. Registering a taken name
    raises ConfigError unless ``replace=True``.
    """
    if not isinstance(name, str) or not name or name != name.strip() or ":" in name:
        raise ConfigError(f"invalid model family name {name!r}: expected a non-empty name without ':'")
    if name in _FAMILIES and not replace:
        raise ConfigError(f"model family {name!r} is already registered (pass replace=True to replace it)")
    if isinstance(model_class, type) and getattr(model_class, "arch", None) is None:
        model_class.arch = name
    family = ModelFamily(name, model_class, description)
    _FAMILIES[name] = family
    return family


def unregister_model_family(name: str) -> None:
    """Remove a family added with :func:`register_model_family` (the default family stays)."""
    if name == DEFAULT_ARCH:
        raise ConfigError(f"the default model family {DEFAULT_ARCH!r} cannot be removed")
    _FAMILIES.pop(name, None)


def model_families() -> List[str]:
    """The registered family names, default first."""
    return [DEFAULT_ARCH] + sorted(n for n in _FAMILIES if n != DEFAULT_ARCH)


def get_model_family(arch: str) -> ModelFamily:
    """The family registered as ``arch``; ConfigError naming the known ones otherwise."""
    try:
        return _FAMILIES[arch]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown model family {arch!r}: known are {model_families()} "
                          "(a family added by a plug-in must be registered before loading)") from None


def model_class(arch: str) -> type:
    """The model class of family ``arch``."""
    return get_model_family(arch).load()


def create_model(arch: str = DEFAULT_ARCH, config=None, **overrides):
    """A new model of family ``arch`` from its config (an instance of its ``config_class``, a dict or None).

    A dict is read with ``config_class.from_dict`` (unknown fields are a ConfigError);
    ``overrides`` replace fields.
    """
    cls = model_class(arch)
    cfg_cls = cls.config_class
    if config is None:
        config = cfg_cls(**overrides)
    else:
        if isinstance(config, dict):
            config = cfg_cls.from_dict({**config, **overrides})
        elif overrides:
            import dataclasses

            config = dataclasses.replace(config, **overrides)
        if not isinstance(config, cfg_cls):
            raise ConfigError(f"model family {arch!r} takes a {cfg_cls.__name__}, not a {type(config).__name__}")
    return cls(config)


def arch_of(model) -> str:
    """The family name of a model instance (its class's ``arch``)."""
    arch = getattr(type(model), "arch", None)
    if not isinstance(arch, str) or arch not in _FAMILIES:
        raise ConfigError(f"{type(model).__name__} is not a registered model family "
                          f"(known: {model_families()})")
    return arch


def is_model(obj) -> bool:
    """True when ``obj`` is an instance of a registered family's class (classes registered by name
    count only once imported)."""
    arch = getattr(type(obj), "arch", None)
    return isinstance(arch, str) and arch in _FAMILIES and hasattr(obj, "encode") and hasattr(obj, "state_dict")


__all__ = ["ModelFamily", "DEFAULT_ARCH", "register_model_family", "unregister_model_family", "model_families",
           "get_model_family", "model_class", "create_model", "arch_of", "is_model"]
