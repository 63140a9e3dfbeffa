"""cvae-features: unsupervised image features from a convolutional VAE.

The same capabilities as the ``cvae`` command line::

    from cvae_features import open_source, train, extract, FeatureStore, linear_probe

Names are imported on first use, so ``import cvae_features`` (and ``cvae --help``)
stays fast; torch and scikit-learn load only when a name that needs them is used.
"""

import importlib
import sys
import types

from ._version import __version__
from .errors import (CvaeError, ConfigError, DataError, DecodeError, ModelError, SourceNotFoundError,
                     StoreError, StoreNoSpaceError, TrainingError)

_LAZY = {
    ".data": ("Preprocess", "open_source"),
    ".model": ("ConvVAE", "VAEConfig", "VAEOutput", "load_model"),
    ".train": ("TrainConfig", "TrainResult", "train"),
    ".extract": ("extract", "ExtractResult"),
    ".store": ("FeatureStore",),
    ".transformer": ("VAEFeatureExtractor",),
    ".probes": ("linear_probe", "knn_probe", "cluster_probe", "fewshot_curve", "anomaly_probe",
                "one_class_protocol", "probe_stores"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

__all__ = ["__version__", "CvaeError", "ConfigError", "DataError", "DecodeError", "ModelError",
           "SourceNotFoundError", "StoreError", "StoreNoSpaceError", "TrainingError", *_WHERE]


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # importing the submodule ``train`` (or ``extract``) binds it here; the function of that name wins
        if name in _WHERE and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cvae_features' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
