"""Built-in data sets: ``digits``, ``fashion-mnist``, ``mnist`` and ``cifar10``.

Each opens as an in-memory :class:`~cvae_features.data.sources.ArraySource`
with ``native_size`` / ``native_channels`` set and keys ``"name:split/00012"``.

- ``digits`` (scikit-learn's 1,797 8x8 digits; pixel values 0..16 are scaled
  to 0..255). Splits: ``all`` (default), and ``train`` / ``test``: a fixed
  stratified 75 % / 25 % split (``train_test_split(test_size=0.25,
  stratify=y, random_state=0)``), 1,347 / 450 rows. Keys carry the row number
  in the full data set, so the keys of ``digits:train`` and ``digits:test``
  are disjoint and both are keys of ``digits:all``.
- ``fashion-mnist``, ``mnist`` (28x28 gray) and ``cifar10`` (32x32 RGB).
  Splits ``train`` (default) and ``test``; keys carry the row number in the
  split. The files are looked for, in order, in ``data_dir`` (and its
  sub-folder named like the data set), ``$CVAE_DATA/<name>`` (and
  ``$CVAE_DATA`` itself for fashion-mnist and cifar10: MNIST has the same
  file names as Fashion-MNIST, so it must sit in its own sub-folder), the
  cache ``$XDG_CACHE_HOME/cvae-features/<name>`` (default
  ``~/.cache/cvae-features/<name>``) and ``/usr/share/datasets/<name>``
  (Debian's ``dataset-fashion-mnist`` package); torchvision's layouts
  (``FashionMNIST/raw``, ``MNIST/raw``, ``cifar-10-batches-py``) are
  recognised in each. When none holds them, torchvision downloads them into
  the cache (unless ``download=False`` or ``$CVAE_NO_DOWNLOAD`` is set); when
  that fails too, one :class:`SourceNotFoundError` line says where it looked
  and how to get the files.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError, SourceNotFoundError
from .sources import ArraySource

__all__ = ["BUILTIN_DATASETS", "BUILTIN_SPLITS", "open_builtin", "read_idx", "load_digits_split",
           "FASHION_MNIST_CLASSES", "CIFAR10_CLASSES"]

BUILTIN_DATASETS = ("digits", "fashion-mnist", "mnist", "cifar10")
BUILTIN_SPLITS = {"digits": ("all", "train", "test"), "fashion-mnist": ("train", "test"),
                  "mnist": ("train", "test"), "cifar10": ("train", "test")}
_DEFAULT_SPLIT = {"digits": "all", "fashion-mnist": "train", "mnist": "train", "cifar10": "train"}

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

#: Where distribution packages put data sets (Debian: dataset-fashion-mnist). Tests may point it elsewhere.
SYSTEM_DATA_DIR = "/usr/share/datasets"

_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_TORCHVISION_SUBDIR = {"fashion-mnist": "FashionMNIST/raw", "mnist": "MNIST/raw", "cifar10": "cifar-10-batches-py"}
_CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


def parse_spec(spec: str):
    """Split ``"name[:split]"`` into (name, split), validating both."""
    name, _, split = spec.strip().partition(":")
    name, split = name.strip().lower(), split.strip().lower()
    if name not in BUILTIN_DATASETS:
        raise ConfigError(f"data set {name!r} is unknown; known data sets: {', '.join(BUILTIN_DATASETS)}")
    split = split or _DEFAULT_SPLIT[name]
    if split not in BUILTIN_SPLITS[name]:
        raise ConfigError(f"split {split!r} of {name} is unknown; expected one of: {', '.join(BUILTIN_SPLITS[name])}")
    return name, split


def open_builtin(spec: str, data_dir=None, *, download: bool = True) -> ArraySource:
    """Open a built-in data set ``"name[:split]"`` as an in-memory source (see the module notes)."""
    name, split = parse_spec(spec)
    if name == "digits":
        images, labels, rows = load_digits_split(split)
        names = [str(i) for i in range(10)]
        description = f"digits:{split} (scikit-learn, {len(labels):,} images of 1x8x8)"
    else:
        images, labels = _load_files(name, split, data_dir, download)
        rows = np.arange(len(labels))
        names = CIFAR10_CLASSES if name == "cifar10" else (
            FASHION_MNIST_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)])
        c, h, w = images.shape[1:]
        description = f"{name}:{split} ({len(labels):,} images of {c}x{h}x{w})"
    keys = [f"{name}:{split}/{r:05d}" for r in rows]
    source = ArraySource(images, labels, names, keys, name=f"{name}:{split}", description=description)
    return source


@functools.lru_cache(maxsize=1)
def _digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 0..16 -> 0..255, so digits look like any other 8-bit image.
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    images.flags.writeable = False
    return images, bunch.target.astype(np.int64)


def load_digits_split(split: str = "all"):
    """scikit-learn's digits as (images uint8 (n, 1, 8, 8), labels int64 (n,), row numbers int64 (n,)).

    ``train`` / ``test`` are the fixed stratified 75/25 split with random_state=0.
    """
    images, labels = _digits()
    rows = np.arange(len(labels))
    if split != "all":
        from sklearn.model_selection import train_test_split

        train, test = train_test_split(rows, test_size=0.25, stratify=labels, random_state=0)
        rows = np.sort(train if split == "train" else test)
        images, labels = images[rows], labels[rows]
    return images, labels, rows


# --- files on disk ---------------------------------------------------------------------------------

def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cvae-features"


def candidate_dirs(name: str, data_dir=None) -> list:
    """The folders searched for a data set's files, in order (without torchvision sub-layouts)."""
    dirs = []
    if data_dir is not None:
        dirs += [Path(data_dir).expanduser(), Path(data_dir).expanduser() / name]
    env = os.environ.get("CVAE_DATA")
    if env:
        if name != "mnist":
            dirs.append(Path(env).expanduser())
        dirs.append(Path(env).expanduser() / name)
    dirs += [_cache_root() / name, Path(SYSTEM_DATA_DIR) / name]
    unique = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def _find_files(name: str, split: str, folder: Path):
    """The files of ``split`` inside ``folder`` (or its torchvision sub-layout), or None."""
    for d in (folder, folder / _TORCHVISION_SUBDIR[name]):
        if name == "cifar10":
            files = [d / f for f in _CIFAR_FILES[split]]
            if all(f.is_file() for f in files):
                return files
            continue
        found = []
        for stem in _IDX_FILES[split]:
            hit = next((d / n for n in (stem, stem + ".gz") if (d / n).is_file()), None)
            if hit is None:
                break
            found.append(hit)
        else:
            return found
    return None


def _load_files(name: str, split: str, data_dir, download: bool):
    dirs = candidate_dirs(name, data_dir)
    for d in dirs:
        files = _find_files(name, split, d)
        if files:
            return _read_cached(name, tuple(str(f) for f in files), tuple(os.path.getmtime(f) for f in files))
    cache = _cache_root() / name
    if not download or os.environ.get("CVAE_NO_DOWNLOAD"):
        failure = "downloads are off"
    else:
        failure = _download(name, split, cache)
        files = _find_files(name, split, cache)
        if failure is None and files:
            return _read_cached(name, tuple(str(f) for f in files), tuple(os.path.getmtime(f) for f in files))
        failure = failure or "the download left no files"
    if name == "cifar10":
        wanted = "cifar-10-batches-py/" + ("data_batch_1..5" if split == "train" else "test_batch")
    else:
        wanted = ", ".join(stem + "[.gz]" for stem in _IDX_FILES[split])
    how = ("`apt-get install dataset-fashion-mnist`, or put the files in a folder and set CVAE_DATA to it"
           if name == "fashion-mnist" else
           f"put the files in a folder and set CVAE_DATA to its parent (as CVAE_DATA/{name}) or pass data_dir")
    raise SourceNotFoundError(f"{name}:{split}: files {wanted} not found in {', '.join(str(d) for d in dirs)} "
                              f"and {failure}; to get them: {how}, or run once on a machine with internet")


def _download(name: str, split: str, cache: Path):
    """Fetch through torchvision into the cache; returns None on success, else a short reason."""
    try:
        import torchvision.datasets as tvd

        cls = {"fashion-mnist": tvd.FashionMNIST, "mnist": tvd.MNIST, "cifar10": tvd.CIFAR10}[name]
        cache.mkdir(parents=True, exist_ok=True)
        # torchvision prints progress; the library stays quiet.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            cls(root=str(cache), train=split == "train", download=True)
    except Exception as err:  # no network, a proxy, a full disk: all end in the same advice
        text = " ".join(str(err).split()) or type(err).__name__
        return f"the torchvision download failed ({text[:150]})"
    return None


@functools.lru_cache(maxsize=4)
def _read_cached(name: str, files: tuple, mtimes: tuple):
    # Keyed by modification times so a replaced file is read again; arrays are read-only because shared.
    if name == "cifar10":
        images, labels = _read_cifar(files)
    else:
        images = read_idx(files[0])
        labels = read_idx(files[1])
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(f"{files[0]}: expected uint8 images of shape (n, H, W), got {images.dtype} "
                            f"{images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(f"{files[1]}: expected {len(images)} labels (one per image), got shape {labels.shape}")
        images = images[:, None]
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{files[-1]}: labels must be 0..9, found {int(labels.min())}..{int(labels.max())}")
    images.flags.writeable = False
    return images, labels


_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not.

    Returns
    -------
    ndarray with the shape and dtype the header declares (native byte order)

    Raises
    ------
    DataError
        Bad magic number, unknown type code, or a size that does not match the header.
    """
    path = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise SourceNotFoundError(f"IDX file {path!r} does not exist") from None
    except (OSError, EOFError) as err:
        raise DataError(f"IDX file {path!r} cannot be read: {err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or not 1 <= raw[3] <= 4:
        raise DataError(f"IDX file {path!r}: bad magic number 0x{raw[:4].hex() or '(empty)'}; expected 0x0000TTNN "
                        f"(TT a type code such as 08, NN the number of dimensions 1..4)")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {path!r} is truncated inside its header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != count * dtype.itemsize:
        raise DataError(f"IDX file {path!r}: header declares shape {dims} ({count * dtype.itemsize} bytes of data) "
                        f"but the file holds {len(raw) - header}; it is truncated or corrupt")
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr if dtype.itemsize == 1 else arr.astype(dtype.newbyteorder("="))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    # CIFAR batches are pickles; allow only what plain arrays, lists and dicts need.
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar(files):
    images, labels = [], []
    for f in files:
        try:
            with open(f, "rb") as fh:
                batch = _NumpyOnlyUnpickler(fh, encoding="latin1").load()
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            lab = np.asarray(batch.get("labels", batch.get("fine_labels")), dtype=np.int64)
        except Exception as err:  # a broken or foreign pickle
            raise DataError(f"CIFAR-10 batch {f!r} cannot be read: {err}") from None
        if len(lab) != len(data):
            raise DataError(f"CIFAR-10 batch {f!r}: {len(data)} images but {len(lab)} labels")
        images.append(data)
        labels.append(lab)
    return np.concatenate(images), np.concatenate(labels)
