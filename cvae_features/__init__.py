"""cvae-features: unsupervised image features from a convolutional VAE.

The public API; see README.md for the command line.
"""

from ._version import __version__
from .errors import (CvaeError, ConfigError, DataError, DecodeError, ModelError, SourceNotFoundError,
                     StoreError, TrainingError)
from .model import ConvVAE, VAEConfig, VAEOutput, load_model

__all__ = [
    "__version__", "CvaeError", "ConfigError", "DataError", "DecodeError", "ModelError",
    "SourceNotFoundError", "StoreError", "TrainingError", "ConvVAE", "VAEConfig", "VAEOutput", "load_model",
]
