"""Image sources: a folder, a CSV manifest or an in-memory array, behind one interface.

:func:`open_source` turns a user's spec (a path or a built-in name) into an
:class:`ImageSource`, which knows its keys, labels and how to load row ``i``.

Folder layout rules (like torchvision's ``ImageFolder``):

- If some sub-folder of the root holds images, the folder is *labelled*: each
  sub-folder that holds images (recursively) is a class, classes are the
  sorted folder names and every image below a class folder gets its label.
  Images lying directly in the root are rows too, unlabelled (-1), and the
  description says so ("..., 3 classes, 1 unlabelled image at the root"): one
  stray file never drops the labels of the others.
- Otherwise (every image lies directly in the root) the folder is *flat*:
  every image is a row and there are no labels (-1).
- Names starting with ``.`` (hidden files and folders) are ignored, and so is
  any file whose extension is not one of :data:`IMAGE_EXTENSIONS`
  (case-insensitive). Keys are relative POSIX paths, sorted; a name that is
  not valid UTF-8 appears in its key with ``\\xNN`` escapes for the bad bytes.

Bad entries met while listing a folder (never silence, never a hang):

- A folder that cannot be read (no permission, an I/O error, removed while
  listing) stops the listing with a one-line :class:`DataError` naming the
  folder and the reason; ``skip_unreadable=True`` leaves it out instead and
  lists it in :attr:`FolderSource.walk_errors` (and :attr:`FolderSource.ignored`).
- An image-named entry that is not a regular file (a named pipe, a socket, a
  device), a broken symlink or a symlink loop is a row that is never opened:
  loading it raises :class:`DecodeError` with the reason ("not a regular file
  (named pipe)", "symlink loop (...)"...), so extraction records it as a skip.
- Symlinks whose real path lies inside the root are followed; the same file
  (or folder) reached through several paths is one row, under the first path
  (folders are walked in name order; of several names of one file, the
  alphabetically first key is kept).
- Symlinks whose real path lies outside the root are not followed: an
  image-named link to a file is a row that fails with "symlink leads outside
  the folder (not followed)"; a link to a folder is listed in
  :attr:`FolderSource.ignored` with that reason. ``follow_outside=True``
  follows them.
- Folders on special file systems (``/proc``, ``/sys``, ``devtmpfs``,
  ``cgroup``...) are never walked, whatever ``follow_outside`` says; they are
  listed in :attr:`FolderSource.ignored`. A link loop or broken link without an
  image name is listed there too (it may have been a folder), unless its name
  has another extension ("notes.txt": not an image either way).
- The description counts what was not read ("...; not read: 1 link leading
  outside the folder").

Manifest rules: see :class:`ManifestSource`.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError, DecodeError, SourceNotFoundError
from ._arrays import as_image_array, preprocess_array
from ._walk import _FolderWalk, _not_read_text, _raise_if_bad_link, _special_fs
from .preprocess import _GRAY_MODES, IMAGE_EXTENSIONS, Preprocess, decode_image, open_regular_file

__all__ = ["ImageSource", "FileSource", "FolderSource", "ManifestSource", "ArraySource", "file_identity",
           "shard_of_key", "shard_rows",
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
    """Images stored as files. ``paths[i]`` is the file of row ``i``; ``root`` is what keys are relative to.

    ``refused`` maps the key of a row known, when listing, not to be readable
    (a named pipe, a link loop, a link leading outside the folder) to the
    reason: :meth:`load` raises :class:`DecodeError` with it and never opens the file.
    """

    def __init__(self, paths, keys, labels, label_names, *, root, spec="", description="", refused=None):
        self.paths = [str(p) for p in paths]
        self.keys = list(keys)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.label_names = list(label_names)
        self.root = str(root)
        self.spec = str(spec)
        self.description = description
        self.refused = dict(refused or {})

    def load(self, i: int, pre: Preprocess) -> np.ndarray:
        if self.refused:
            reason = self.refused.get(self.keys[i])
            if reason is not None:
                raise DecodeError(reason)
        return decode_image(self.paths[i], pre)

    def subset(self, indices) -> "FileSource":
        idx = check_indices(indices, len(self))
        keys = [self.keys[i] for i in idx]
        return FileSource([self.paths[i] for i in idx], keys, self.labels[idx],
                          self.label_names, root=self.root, spec=self.spec,
                          description=f"{len(idx)} of {self.description}",
                          refused={k: self.refused[k] for k in keys if k in self.refused})


class FolderSource(FileSource):
    """Every image file below a folder; class sub-folders give labels (see the module notes).

    Parameters
    ----------
    folder : str or os.PathLike
    follow_outside : bool, default=False
        Also follow symlinks whose target lies outside ``folder`` (never into
        ``/proc``, ``/sys`` or other special file systems).
    skip_unreadable : bool, default=False
        Leave out a sub-folder that cannot be read (listing it in
        :attr:`walk_errors`) instead of raising :class:`DataError`.

    Attributes
    ----------
    ignored : list of (str, str)
        Entries that are not rows, with the reason: folder links leading
        outside, special file systems, unreadable folders (``skip_unreadable``),
        broken or looping links without an image name. Folder keys end in "/".
    walk_errors : list of (str, str)
        The folders that could not be read (only with ``skip_unreadable=True``;
        otherwise the first one raises), with the operating system's reason.

    Raises
    ------
    SourceNotFoundError
        The folder does not exist.
    DataError
        It holds no image file, is itself on a special file system, or one of
        its folders cannot be read (without ``skip_unreadable``).
    """

    def __init__(self, folder, *, follow_outside: bool = False, skip_unreadable: bool = False):
        given = os.fspath(folder)
        root = Path(given).expanduser()
        if not root.exists():
            _raise_if_bad_link(root, f"image folder {given!r}")
            raise SourceNotFoundError(f"image folder {given!r} does not exist")
        if not root.is_dir():
            raise DataError(f"image source {given!r} is a file, not a folder or a .csv manifest")
        root = root.resolve()
        special = _special_fs(str(root))
        if special:
            raise DataError(f"image folder {str(root)!r} is on a special file system ({special}), not a folder "
                            "of image files")
        walk = _FolderWalk(str(root), follow_outside=follow_outside, skip_unreadable=skip_unreadable)
        keys, refused = walk.keys, walk.refused
        if not keys:
            also = f" ({_not_read_text(walk.ignored)})" if walk.ignored else ""
            raise DataError(f"image folder {str(root)!r} holds no image files{also}; accepted extensions: "
                            f"{', '.join(IMAGE_EXTENSIONS)}")
        names = sorted({k.split("/", 1)[0] for k in keys if "/" in k})
        index = {name: i for i, name in enumerate(names)}
        labels = np.asarray([index[k.split("/", 1)[0]] if "/" in k else -1 for k in keys], dtype=np.int64)
        n_root = int((labels < 0).sum())
        if not names:
            what = "no labels"
        else:
            what = f"{len(names)} class{'es' * (len(names) != 1)}"
            if n_root:
                what += f", {n_root:,} unlabelled image{'s' * (n_root != 1)} at the root"
        if walk.ignored:
            what += f"; not read: {_not_read_text(walk.ignored)}"
        self.ignored = walk.ignored
        self.walk_errors = walk.errors
        super().__init__(walk.paths, keys, labels, names, root=root, spec=str(root),
                         description=f"folder {root} ({len(keys):,} images, {what})", refused=refused)


class ManifestSource(FileSource):
    """Rows listed in a CSV file ``path[,label]``, paths relative to the CSV's folder.

    Header: the first row is a header when its cells are column names
    (:data:`_PATH_HEADERS` then, if present, :data:`_LABEL_HEADERS`, case
    insensitive: ``path,label``, ``filename,class``, ``file,target``...), or
    when its first cell does not look like an image (no image extension, no
    such file, no path separator) while a later row's does and its label is
    none of the later rows' labels. A first row that looks like neither (e.g.
    ``notes,cat`` above ``a.png,cat``) is a :class:`DataError`.

    Labels are strings; the sorted distinct labels (numerically when all are
    integers) are the classes; an empty label and ``-1`` mean unknown (-1).
    Listed files are not checked here: a missing one fails at :meth:`load`
    with the reason "file not found" (a named pipe or device with "not a
    regular file (...)": it is never opened).

    Raises
    ------
    SourceNotFoundError
        The CSV file does not exist.
    DataError
        It lists nothing, a row has more than two columns, a path is listed
        twice, or the first row is neither a header nor an image row.
    """

    def __init__(self, csv_path):
        path = Path(csv_path).expanduser()
        if not path.exists():
            _raise_if_bad_link(path, f"manifest {str(csv_path)!r}")
            raise SourceNotFoundError(f"manifest {str(csv_path)!r} does not exist")
        path = path.resolve()
        rows = read_csv_rows(path, "manifest")
        base = path.parent
        if rows and _is_header(rows[0][1], [row for _, row in rows[1:]], base, path):
            rows = rows[1:]
        if not rows:
            raise DataError(f"manifest {str(path)!r} lists no images; expected rows 'path[,label]'")
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
            raw_labels.append(_label_cell(row))
        names = _sorted_label_names({lab for lab in raw_labels if lab})
        index = {name: i for i, name in enumerate(names)}
        labels = np.asarray([index.get(lab, -1) for lab in raw_labels], dtype=np.int64)
        what = f"{len(names)} classes" if names else "no labels"
        super().__init__(paths, keys, labels, names, root=base, spec=str(path),
                         description=f"manifest {path} ({len(keys):,} images, {what})")


#: First cells of a header row (compared lower-case, with spaces and dashes as underscores).
_PATH_HEADERS = frozenset({"path", "paths", "file", "files", "filename", "file_name", "filepath", "file_path",
                           "image", "images", "img", "image_path", "image_file", "image_name", "key", "name",
                           "fname", "relpath", "relative_path"})
#: Second cells of a header row.
_LABEL_HEADERS = frozenset({"label", "labels", "class", "classes", "class_name", "classname", "target", "y",
                            "category", "label_name", "labelname", "tag"})
#: Labels that mean "unknown".
_UNKNOWN_LABELS = frozenset({"", "-1"})


def read_csv_rows(path: Path, what: str) -> list:
    """The non-blank rows of a CSV file as ``(line number, [stripped cells])``; DataError when unreadable."""
    try:
        fd = open_regular_file(path)  # never blocks on a named pipe called *.csv
    except DecodeError as err:
        raise DataError(f"{what} {str(path)!r} cannot be read: {err}") from None
    try:
        with open(fd, newline="", encoding="utf-8-sig") as f:
            rows = [(n, [c.strip() for c in row]) for n, row in enumerate(csv.reader(f), 1)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{what} {str(path)!r} cannot be read: {err}") from None
    return [(n, row) for n, row in rows if any(row)]


def _label_cell(row) -> str:
    label = row[1] if len(row) > 1 else ""
    return "" if label in _UNKNOWN_LABELS else label


def _header_word(cell: str) -> str:
    return cell.lower().replace(" ", "_").replace("-", "_")


def _looks_like_image(cell: str, base: Path) -> bool:
    if cell.lower().endswith(IMAGE_EXTENSIONS):
        return True
    try:
        return bool(cell) and os.path.isfile(base / cell)
    except (OSError, ValueError):  # a NUL byte, a name too long
        return False


def _is_header(first, later, base: Path, path: Path) -> bool:
    """Whether manifest row ``first`` is a header (see :class:`ManifestSource`); raises DataError when it is
    clearly neither a header nor an image row."""
    if _looks_like_image(first[0], base):
        return False
    if (_header_word(first[0]) in _PATH_HEADERS
            and (len(first) < 2 or not first[1] or _header_word(first[1]) in _LABEL_HEADERS)):
        return True
    if not any(_looks_like_image(row[0], base) for row in later if row):
        return False  # nothing looks like an image: plain rows (extension-less names), checked at load
    later_labels = {_label_cell(row) for row in later} - {""}
    label = _label_cell(first)
    if "/" not in first[0] and os.sep not in first[0] and "." not in first[0] and label not in later_labels:
        return True  # column names this reader does not know, e.g. "picture,kind"
    raise DataError(f"manifest {str(path)!r} line 1: {','.join(first)!r} is neither a header 'path,label' nor an "
                    f"image row (no image extension and no such file, while later rows name images)")


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


def shard_of_key(key: str, n_shards: int) -> int:
    """The shard (0..n_shards-1) a key belongs to: the first 8 bytes of the SHA-256 of its UTF-8 bytes, modulo
    ``n_shards``. It depends on the key alone, so listing the folder again (new files, another machine)
    never moves a file to another shard."""
    import hashlib

    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % n_shards


def shard_rows(keys, index: int, n_shards: int) -> np.ndarray:
    """Rows (int64, in order) whose key falls in shard ``index`` of ``n_shards`` (see :func:`shard_of_key`)."""
    return np.asarray([i for i, key in enumerate(keys) if shard_of_key(key, n_shards) == index], dtype=np.int64)


def file_identity(src, rows=None) -> "tuple[np.ndarray, np.ndarray]":
    """(sizes, mtimes in ns) of the files of ``src``'s rows (default all), int64; -1 where unknown.

    In-memory sources have no files: all -1. A file that cannot be stat'ed is -1 too.
    """
    rows = np.arange(len(src), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    sizes = np.full(len(rows), -1, np.int64)
    mtimes = np.full(len(rows), -1, np.int64)
    if isinstance(src, FileSource):
        for j, i in enumerate(rows.tolist()):
            try:
                st = os.stat(src.paths[i])
            except OSError:
                continue
            sizes[j], mtimes[j] = st.st_size, st.st_mtime_ns
    return sizes, mtimes


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
    refused = getattr(source, "refused", {})
    for i in rows:
        try:
            if source.keys[i] in refused:
                raise DecodeError(refused[source.keys[i]])
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
        fd = open_regular_file(path)  # never opens a named pipe or a device (raises DecodeError)
        with warnings.catch_warnings(), open(fd, "rb") as f, Image.open(f) as image:
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            side = min(image.size)
            if image.mode in _GRAY_MODES or (image.mode == "P" and _gray_palette(image)):
                return side, True
            image.draft("RGB", (32, 32))
            thumb = np.asarray(image.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR), dtype=np.int16)
    except DecodeError:
        raise
    except Exception as err:  # any unreadable file is only left out of the sample
        raise DecodeError(str(err) or type(err).__name__) from None
    spread = max(np.abs(thumb[..., 0] - thumb[..., 1]).max(), np.abs(thumb[..., 1] - thumb[..., 2]).max())
    return side, bool(spread <= 2)


def _gray_palette(image) -> bool:
    pal = image.getpalette() or []
    rgb = np.asarray(pal[: len(pal) // 3 * 3]).reshape(-1, 3)
    return bool(rgb.size) and bool((rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all())
