"""cvae-features: unsupervised image features from a convolutional VAE.

The same capabilities as the ``cvae`` command line::

    from cvae_features import open_source, train, extract, FeatureStore, linear_probe

Names are imported on first use, so ``import cvae_features`` (and ``cvae --help``)
stays fast; torch and scikit-learn load only when a name that needs them is used.
"""

import importlib

from ._version import __version__
from .errors import (CvaeError, ConfigError, DataError, DecodeError, EngineError, IndexMismatchError,
                     MissingExtraError, ModelError, SourceNotFoundError, StoreError, StoreNoSpaceError, TrainingError)

_LAZY = {
    ".data": ("Preprocess", "open_source"),
    ".model": ("ConvVAE", "VAEConfig", "VAEOutput"),
    ".families": ("create_model", "register_model_family", "model_families"),
    ".resolve": ("load_model", "resolve_model"),
    ".featurizers": ("Featurizer", "register_featurizer", "featurizer_kinds"),
    ".training": ("TrainConfig", "TrainResult", "train"),
    ".extraction": ("extract", "ExtractOptions", "ExtractResult"),
    ".store": ("FeatureStore",),
    ".neighbors": ("nearest_neighbors", "find_duplicates", "store_neighbors", "store_duplicates"),
    ".transformer": ("VAEFeatureExtractor",),
    ".probes": ("linear_probe", "knn_probe", "cluster_probe", "fewshot_curve", "anomaly_probe",
                "one_class_protocol", "probe_stores", "register_probe", "register_fewshot_method"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

__all__ = ["__version__", "CvaeError", "ConfigError", "DataError", "DecodeError", "EngineError", "IndexMismatchError",
           "MissingExtraError", "ModelError", "SourceNotFoundError", "StoreError", "StoreNoSpaceError",
           "TrainingError", *_WHERE]


def __getattr__(name):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cvae_features' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
