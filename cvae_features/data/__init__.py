"""Data: image sources (folders, CSV manifests, built-in data sets), decoding and batching.

Every image becomes the canonical model input, a uint8 array (C, S, S), through
:class:`Preprocess`; :func:`open_source` opens a folder, a manifest or a built-in
name; :func:`iter_batches` / :func:`load_images` decode rows in parallel and
report the files that could not be decoded instead of failing on them.
"""

from .builtin import BUILTIN_DATASETS, BUILTIN_SPLITS, read_idx
from .loader import Batch, iter_batches, load_images
from .preprocess import IMAGE_EXTENSIONS, RESIZE_POLICIES, Preprocess, decode_image
from .open import open_source
from .sources import ArraySource, FileSource, FolderSource, ImageSource, ManifestSource, infer_preprocess

__all__ = [
    "Preprocess", "decode_image", "IMAGE_EXTENSIONS", "RESIZE_POLICIES",
    "ImageSource", "FileSource", "FolderSource", "ManifestSource", "ArraySource", "open_source", "infer_preprocess",
    "iter_batches", "load_images", "Batch", "BUILTIN_DATASETS", "BUILTIN_SPLITS", "read_idx",
]
