"""Image sources: a folder, a CSV manifest or an in-memory array, behind one interface.

:func:`open_source` turns a user's spec (a path or a built-in name) into an
:class:`ImageSource`, which knows its keys, labels and how to load row ``i``.

Folder layout rules (like torchvision's ``ImageFolder``):

- If the root holds image files directly, or holds no sub-folder, the folder
  is *flat*: every image below it (recursively) is a row and there are no
  labels (-1).
- Otherwise (the root holds only sub-folders, plus perhaps non-image files)
  each sub-folder that contains images is a class; classes are the sorted
  folder names and every image below a class folder (recursively) gets its
  label.
- Names starting with ``.`` (hidden files and folders) are ignored, and so is
  any file whose extension is not one of :data:`IMAGE_EXTENSIONS`
  (case-insensitive). Keys are relative POSIX paths, sorted.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError, DecodeError, SourceNotFoundError
from ._arrays import as_image_array, preprocess_array
from .preprocess import _GRAY_MODES, IMAGE_EXTENSIONS, Preprocess, decode_image

__all__ = ["ImageSource", "FileSource", "FolderSource", "ManifestSource", "ArraySource", "open_source",
           "infer_preprocess"]


class ImageSource:
    """A list of images with keys and optional labels.

    Attributes
    ----------
    spec : str
        What was opened (a path or a built-in name), enough to open it again.
    description : str
        One human line, e.g. ``"folder /data/shoes (1,204 images, 3 classes)"``.
    keys : list of str, length n
        Unique row names: relative POSIX paths for files,
        ``"name:split/00012"`` for built-in data sets.
    labels : ndarray of dtype int64 and shape (n,)
        Class index per row, -1 where unknown.
    label_names : list of str
        Class names; ``labels`` index into it.
    native_size, native_channels : int or None
        Image side and channels of in-memory data; None for files.
    """

    spec: str = ""
    description: str = ""
    keys: list
    labels: np.ndarray
    label_names: list
    native_size = None
    native_channels = None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def has_labels(self) -> bool:
        """True when at least one row has a known label."""
        return bool(len(self.labels)) and bool((self.labels >= 0).any())

    def load(self, i: int, pre: Preprocess) -> np.ndarray:
        """Row ``i`` as uint8 ndarray of shape (C, S, S); raises :class:`DecodeError`."""
        raise NotImplementedError

    def subset(self, indices) -> "ImageSource":
        """A new source holding rows ``indices`` (in that order), with their keys and labels."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        """A JSON-friendly summary (no per-row data)."""
        return {"spec": self.spec, "description": self.description, "n_images": len(self),
                "n_labelled": int((self.labels >= 0).sum()), "label_names": list(self.label_names),
                "native_size": self.native_size, "native_channels": self.native_channels}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"


def check_indices(indices, n: int, *, name: str = "indices") -> np.ndarray:
    """Validate row indices against a source of ``n`` rows; returns an int64 array of shape (k,)."""
    if indices is None:
        return np.arange(n, dtype=np.int64)
    arr = np.asarray(indices)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ConfigError(f"{name}: expected a 1-D sequence of integer row numbers, got shape {arr.shape} "
                          f"and dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        bad = int(arr[(arr < 0) | (arr >= n)][0])
        raise ConfigError(f"{name}: row {bad} is out of range; expected 0 <= row < {n}")
    return arr


class FileSource(ImageSource):
    """Images stored as files. ``paths[i]`` is the file of row ``i``; ``root`` is what keys are relative to."""

    def __init__(self, paths, keys, labels, label_names, *, root, spec="", description=""):
        self.paths = [str(p) for p in paths]
        self.keys = list(keys)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.label_names = list(label_names)
        self.root = str(root)
        self.spec = str(spec)
        self.description = description

    def load(self, i: int, pre: Preprocess) -> np.ndarray:
        return decode_image(self.paths[i], pre)

    def subset(self, indices) -> "FileSource":
        idx = check_indices(indices, len(self))
        return FileSource([self.paths[i] for i in idx], [self.keys[i] for i in idx], self.labels[idx],
                          self.label_names, root=self.root, spec=self.spec,
                          description=f"{len(idx)} of {self.description}")


class FolderSource(FileSource):
    """Every image file below a folder; class sub-folders give labels (see the module notes).

    Raises
    ------
    SourceNotFoundError
        The folder does not exist.
    DataError
        It holds no image file.
    """

    def __init__(self, folder):
        root = Path(folder).expanduser()
        if not root.exists():
            raise SourceNotFoundError(f"image folder {str(folder)!r} does not exist")
        if not root.is_dir():
            raise DataError(f"image source {str(folder)!r} is a file, not a folder or a .csv manifest")
        root = root.resolve()
        files, dirs = _list_dir(root)
        if files or not dirs:
            keys = _walk_images(root)
            labels = np.full(len(keys), -1, dtype=np.int64)
            names = []
        else:
            keys, label_list, names = [], [], []
            for name in dirs:
                found = _walk_images(root / name, prefix=name + "/")
                if found:
                    label_list += [len(names)] * len(found)
                    names.append(name)
                    keys += found
            order = sorted(range(len(keys)), key=keys.__getitem__)
            keys = [keys[i] for i in order]
            labels = np.asarray(label_list, dtype=np.int64)[order] if keys else np.zeros(0, np.int64)
        if not keys:
            raise DataError(f"image folder {str(root)!r} holds no image files; accepted extensions: "
                            f"{', '.join(IMAGE_EXTENSIONS)}")
        n_text = f"{len(keys):,} images"
        what = f"{len(names)} classes" if names else "no labels"
        super().__init__([str(root / k) for k in keys], keys, labels, names, root=root, spec=str(root),
                         description=f"folder {root} ({n_text}, {what})")


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _list_dir(root: Path):
    files, dirs = [], []
    with os.scandir(root) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                dirs.append(entry.name)
            elif _is_image_name(entry.name) and entry.is_file():
                files.append(entry.name)
    return sorted(files), sorted(dirs)


def _walk_images(top: Path, prefix: str = "") -> list:
    """Relative POSIX paths of the image files below ``top``, sorted; symlinked folders followed once."""
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop or a folder linked twice
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, top)
        rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        found += [prefix + rel + f for f in filenames if _is_image_name(f)]
    found.sort()
    return found


class ManifestSource(FileSource):
    """Rows listed in a CSV file ``path[,label]``, paths relative to the CSV's folder.

    A first row ``path,label`` (or ``path``) is a header. Labels are strings;
    the sorted distinct labels (numerically when all are integers) are the
    classes, and an empty label is -1. Listed files are not checked here: a
    missing one fails at :meth:`load` with the reason "file not found".

    Raises
    ------
    SourceNotFoundError
        The CSV file does not exist.
    DataError
        It lists nothing, a row has more than two columns, or a path is listed twice.
    """

    def __init__(self, csv_path):
        path = Path(csv_path).expanduser()
        if not path.is_file():
            raise SourceNotFoundError(f"manifest {str(csv_path)!r} does not exist")
        path = path.resolve()
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                rows = [(n, [c.strip() for c in row]) for n, row in enumerate(csv.reader(f), 1)]
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise DataError(f"manifest {str(path)!r} cannot be read: {err}") from None
        rows = [(n, row) for n, row in rows if any(row)]
        if rows and _is_header(rows[0][1]):
            rows = rows[1:]
        if not rows:
            raise DataError(f"manifest {str(path)!r} lists no images; expected rows 'path[,label]'")
        base = path.parent
        keys, paths, raw_labels, seen = [], [], [], {}
        for n, row in rows:
            if len(row) > 2:
                raise DataError(f"manifest {str(path)!r} line {n}: expected 'path[,label]', got {len(row)} columns")
            if not row[0]:
                raise DataError(f"manifest {str(path)!r} line {n}: empty path")
            key = os.path.normpath(row[0]).replace(os.sep, "/")
            if key in seen:
                raise DataError(f"manifest {str(path)!r} line {n}: {row[0]!r} is already listed on line {seen[key]}")
            seen[key] = n
            keys.append(key)
            paths.append(str(base / key))
            raw_labels.append(row[1] if len(row) > 1 else "")
        names = _sorted_label_names({lab for lab in raw_labels if lab})
        index = {name: i for i, name in enumerate(names)}
        labels = np.asarray([index.get(lab, -1) for lab in raw_labels], dtype=np.int64)
        what = f"{len(names)} classes" if names else "no labels"
        super().__init__(paths, keys, labels, names, root=base, spec=str(path),
                         description=f"manifest {path} ({len(keys):,} images, {what})")


def _is_header(row) -> bool:
    first = row[0].lower()
    if first == "path":
        return True
    return len(row) > 1 and row[1].lower() == "label" and not os.path.splitext(row[0])[1]


def _sorted_label_names(labels) -> list:
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


class ArraySource(ImageSource):
    """Images held in memory (built-in data sets, or arrays a caller already has).

    Parameters
    ----------
    images : array-like of shape (n, H, W) or (n, C, H, W), C in {1, 3}
        uint8 0..255 (kept without copy), bool, or float in [0, 1].
    labels : array-like of int, shape (n,), optional
        -1 = unknown; default all unknown.
    label_names : list of str, optional
    keys : list of str, optional
        Default ``"{name}/00000"`` ... (zero-padded row numbers).
    name : str, default="array"
        Used for default keys, ``spec`` and ``description``.
    """

    def __init__(self, images, labels=None, label_names=None, keys=None, *, name="array", description=None):
        self.images = as_image_array(images)
        n, c, h, w = self.images.shape
        self.labels = (np.full(n, -1, dtype=np.int64) if labels is None
                       else np.asarray(labels, dtype=np.int64).reshape(-1))
        if len(self.labels) != n:
            raise DataError(f"labels of length {len(self.labels)}: expected one per image ({n})")
        self.label_names = list(label_names) if label_names is not None else []
        if self.labels.min(initial=-1) < -1:
            raise DataError(f"labels: {int(self.labels.min())} is not a class index; expected -1 (unknown) or >= 0")
        if self.label_names and self.labels.max(initial=-1) >= len(self.label_names):
            raise DataError(f"labels go up to {int(self.labels.max())}: expected < {len(self.label_names)} "
                            f"(the number of label_names)")
        if not self.label_names and self.has_labels:
            self.label_names = [str(i) for i in range(int(self.labels.max()) + 1)]
        width = max(5, len(str(max(n - 1, 0))))
        self.keys = list(keys) if keys is not None else [f"{name}/{i:0{width}d}" for i in range(n)]
        if len(self.keys) != n:
            raise DataError(f"keys of length {len(self.keys)}: expected one per image ({n})")
        self.spec = name
        self.native_size = h if h == w else None
        self.native_channels = c
        self.description = description or f"{name} ({n:,} images of {c}x{h}x{w} in memory)"

    def load(self, i: int, pre: Preprocess) -> np.ndarray:
        return preprocess_array(self.images[i:i + 1], pre)[0]

    def batch(self, indices, pre: Preprocess) -> np.ndarray:
        """Rows ``indices`` preprocessed at once: uint8 ndarray of shape (k, C, S, S)."""
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) and idx[-1] - idx[0] == len(idx) - 1 and (len(idx) == 1 or (np.diff(idx) == 1).all()):
            chunk = self.images[idx[0]:idx[-1] + 1]  # a view: no copy for contiguous rows
        else:
            chunk = self.images[idx]
        return preprocess_array(chunk, pre)

    def subset(self, indices) -> "ArraySource":
        idx = check_indices(indices, len(self))
        sub = ArraySource(self.images[idx], self.labels[idx], self.label_names, [self.keys[i] for i in idx],
                          name=self.spec, description=f"{len(idx)} of {self.description}")
        sub.native_size, sub.native_channels = self.native_size, self.native_channels
        return sub


def open_source(spec, data_dir=None, *, download: bool = True) -> ImageSource:
    """Open an image source from a folder, a CSV manifest or a built-in name.

    Parameters
    ----------
    spec : str or os.PathLike or ImageSource
        A folder, a ``.csv`` manifest, or a built-in data set name with an
        optional split: ``digits[:train|:test|:all]``,
        ``fashion-mnist[:train|:test]``, ``mnist[...]``, ``cifar10[...]``.
        An :class:`ImageSource` is returned as is.
    data_dir : str or os.PathLike, optional
        Where to look first for a built-in data set's files.
    download : bool, default=True
        Whether a built-in data set missing locally may be fetched through
        torchvision.

    Returns
    -------
    ImageSource

    Raises
    ------
    SourceNotFoundError
        A path that does not exist, or a built-in data set with no local copy.
    ConfigError
        An unknown built-in name or split.
    DataError
        A folder or manifest with nothing usable.
    """
    if isinstance(spec, ImageSource):
        return spec
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"source {spec!r}: expected a folder, a .csv manifest or a built-in data set name")
    path = Path(spec).expanduser()
    if path.is_dir():
        return FolderSource(spec)
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return ManifestSource(spec)
        raise DataError(f"source {spec!r} is a file; expected a folder of images or a .csv manifest")
    from .builtin import BUILTIN_DATASETS, open_builtin

    name = spec.split(":", 1)[0].strip().lower()
    if name in BUILTIN_DATASETS:
        return open_builtin(spec, data_dir=data_dir, download=download)
    if "/" in spec or os.sep in spec or path.suffix:
        raise SourceNotFoundError(f"source {spec!r} does not exist (expected a folder of images or a .csv manifest)")
    raise ConfigError(f"source {spec!r} is neither an existing folder or .csv manifest nor a built-in data set; "
                      f"known data sets: {', '.join(BUILTIN_DATASETS)}")


def infer_preprocess(source: ImageSource, image_size=None, channels=None, resize: str = "crop",
                     sample: int = 32) -> Preprocess:
    """Choose the canonical input for a source.

    Built-in and in-memory data keep their native size and channels. For
    files, up to ``sample`` evenly spaced rows decide: channels = 1 when every
    sampled image is grayscale, else 3; size = the median shorter side,
    clamped to 8..64. Explicit ``image_size`` / ``channels`` always win.

    Raises
    ------
    DataError
        None of the sampled files could be read.
    """
    if image_size is not None and channels is not None:
        return Preprocess(image_size, channels, resize)
    if source.native_size is not None or source.native_channels is not None:
        size = image_size if image_size is not None else (source.native_size or _array_side(source))
        chans = channels if channels is not None else source.native_channels
        return Preprocess(size, chans, resize)
    n = len(source)
    rows = np.unique(np.linspace(0, n - 1, min(n, sample)).round().astype(np.int64)) if n else []
    sides, grays, reasons = [], [], []
    for i in rows:
        try:
            side, gray = _peek(source.paths[i])
        except DecodeError as err:
            reasons.append(f"{source.keys[i]}: {err}")
            continue
        sides.append(side)
        grays.append(gray)
    if not sides:
        first = reasons[0] if reasons else "no rows"
        raise DataError(f"cannot infer the image size of {source.description}: none of {len(rows)} sampled images "
                        f"could be read ({first})")
    size = image_size if image_size is not None else int(np.clip(int(np.median(sides)), 8, 64))
    chans = channels if channels is not None else (1 if all(grays) else 3)
    return Preprocess(size, chans, resize)


def _array_side(source) -> int:
    return int(np.clip(min(source.images.shape[2:]), 8, 64))


def _peek(path):
    """(shorter side, is grayscale) of one file, decoding at most a small thumbnail."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings(), Image.open(path) as image:
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            side = min(image.size)
            if image.mode in _GRAY_MODES or (image.mode == "P" and _gray_palette(image)):
                return side, True
            image.draft("RGB", (32, 32))
            thumb = np.asarray(image.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR), dtype=np.int16)
    except Exception as err:  # any unreadable file is only left out of the sample
        raise DecodeError(str(err) or type(err).__name__) from None
    spread = max(np.abs(thumb[..., 0] - thumb[..., 1]).max(), np.abs(thumb[..., 1] - thumb[..., 2]).max())
    return side, bool(spread <= 2)


def _gray_palette(image) -> bool:
    pal = image.getpalette() or []
    rgb = np.asarray(pal[: len(pal) // 3 * 3]).reshape(-1, 3)
    return bool(rgb.size) and bool((rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all())
