"""A preprocessed uint8 cache of a source's model inputs on disk, read row by row: training without holding
the decoded images in memory.

A cache is a folder:

- ``meta.json``: format, version, the identity it was built for (a hash of the source's spec, keys,
  file sizes and modification times, and the preprocessing), the shape, and once complete the
  content fingerprint (blake2b, 8 bytes, over the decoded images in row order: the same value as
  hashing the images decoded into memory);
- ``images.u8``: uint8 (n, C, S, S), row i = source row i (rows that could not be decoded stay zero);
- ``status.i1``: int8 (n,), 0 pending, 1 decoded, 2 skipped (a row's status is written only after its
  image is flushed, so a cache cut short at any moment resumes with the pending rows);
- ``skipped.jsonl``: one ``[row, reason]`` per skipped row.

:func:`build_cache` builds or finishes one (decoding in parallel, resumable); a cache built for
another identity is rebuilt, never mixed. :class:`CachedImages` is the read side: random access to
rows through ``index_select`` and slicing, so the training loop shuffles without loading everything.

Rows are read and written with ``pread``/``pwrite`` at their offsets rather than through a memory
map: mapped file pages count in a process's resident memory as they are touched, so an epoch over a
mapped cache would grow it to the cache's size; positioned reads keep the process's memory at one
batch while the operating system's page cache keeps the hot rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from ..errors import DataError
from .loader import iter_batches
from .sources import file_identity

CACHE_FORMAT = "cvae-image-cache"
CACHE_VERSION = 1
PENDING, DECODED, SKIPPED = 0, 1, 2
_FILES = ("meta.json", "images.u8", "status.i1", "skipped.jsonl")


def cache_identity(source, pre) -> str:
    """16 hex digits over what the cache's content depends on: the source's spec, keys and file
    identities (size, modification time), and the preprocessing."""
    sizes, mtimes = file_identity(source)
    h = hashlib.sha256()
    h.update(json.dumps({"spec": getattr(source, "spec", "") or "", "preprocess": pre.to_dict(),
                         "n": len(source)}, sort_keys=True).encode())
    for key in source.keys:
        h.update(key.encode("utf-8", "surrogateescape") + b"\0")
    h.update(sizes.tobytes())
    h.update(mtimes.tobytes())
    return h.hexdigest()[:16]


class CachedImages:
    """Rows of a cache's image file, as much of a uint8 tensor (n, C, S, S) as the training loop needs.

    ``index_select(0, positions)`` and ``[slice]`` read only those images (positioned reads, in file
    order, handed back in the asked order); ``[positions]`` with a tensor or array gives another view
    (no copy, no read), so a train/validation split costs nothing.
    """

    def __init__(self, path, shape, rows: Optional[np.ndarray] = None):
        self.path, self._full_shape = Path(path), tuple(shape)
        self._row_bytes = int(np.prod(self._full_shape[1:]))
        self._rows = np.arange(self._full_shape[0], dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        self.shape = torch.Size((len(self._rows), *self._full_shape[1:]))
        self.dtype = torch.uint8
        self.device = torch.device("cpu")
        self._fd = None

    def __len__(self) -> int:
        return len(self._rows)

    def __getstate__(self):
        return {**self.__dict__, "_fd": None}

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def numel(self) -> int:
        return int(np.prod(self.shape))

    def _read(self, positions: np.ndarray) -> torch.Tensor:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        rows = self._rows[positions]
        out = np.empty((len(rows), self._row_bytes), dtype=np.uint8)
        for i in np.argsort(rows, kind="stable").tolist():  # file order: the disk reads ahead
            data = os.pread(self._fd, self._row_bytes, int(rows[i]) * self._row_bytes)
            if len(data) != self._row_bytes:
                raise DataError(f"image cache {self.path} is shorter than its rows (damaged or being rebuilt)")
            out[i] = np.frombuffer(data, dtype=np.uint8)
        return torch.from_numpy(out.reshape(len(rows), *self._full_shape[1:]))

    def index_select(self, dim: int, positions) -> torch.Tensor:
        if dim != 0:
            raise ValueError("CachedImages selects rows (dim 0) only")
        return self._read(np.asarray(torch.as_tensor(positions).cpu(), dtype=np.int64))

    def __getitem__(self, key):
        if isinstance(key, slice):
            return self._read(np.arange(len(self))[key])
        if isinstance(key, (torch.Tensor, np.ndarray, list)):
            positions = np.asarray(torch.as_tensor(key).cpu(), dtype=np.int64)
            return CachedImages(self.path, self._full_shape, self._rows[positions])
        raise TypeError(f"CachedImages takes a slice or an index array, not {type(key).__name__}")

    def cpu(self) -> "CachedImages":
        return self

    def contiguous(self) -> "CachedImages":
        return self

    def fingerprint(self) -> str:
        """blake2b (8 bytes) over the rows' bytes in order, read in chunks (the in-memory path's value)."""
        h = hashlib.blake2b(digest_size=8)
        for start in range(0, len(self), 4096):
            h.update(np.ascontiguousarray(self._read(np.arange(start, min(start + 4096, len(self)))).numpy()).data)
        return h.hexdigest()


class ImageCache:
    """An open cache folder (see the module notes). ``images``: :class:`CachedImages` of the decoded rows."""

    def __init__(self, folder: Path, meta: dict, status: np.ndarray, skipped: List[tuple]):
        self.folder, self.meta, self.status, self.skipped = folder, meta, status, skipped
        self.kept = np.flatnonzero(status == DECODED)
        self.images = CachedImages(folder / "images.u8", meta["shape"], self.kept)

    @property
    def fingerprint(self) -> str:
        return self.meta["content_fingerprint"]


def build_cache(source, pre, folder, *, workers=None, batch_size: int = 256, progress: bool = False) -> ImageCache:
    """Decode ``source`` with ``pre`` into the cache folder ``folder`` (created), or finish or reuse the one there.

    A folder holding a cache of another identity (other files, keys, preprocessing) or of another
    format is emptied and rebuilt. Returns the complete cache.

    Raises
    ------
    DataError
        No image could be decoded.
    """
    from tqdm.auto import tqdm

    folder = Path(folder)
    identity = cache_identity(source, pre)
    shape = (len(source), pre.channels, pre.size, pre.size)
    meta = _read_meta(folder)
    if meta is None or meta.get("identity") != identity or tuple(meta.get("shape", ())) != shape:
        _clear(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "identity": identity, "shape": list(shape),
                "source": getattr(source, "description", ""), "preprocess": pre.to_dict(), "complete": False}
        with open(folder / "images.u8", "wb") as fh:
            fh.truncate(int(np.prod(shape)))
        with open(folder / "status.i1", "wb") as fh:
            fh.truncate(len(source))
        (folder / "skipped.jsonl").write_text("")
        _write_meta(folder, meta)
    status = np.fromfile(folder / "status.i1", dtype=np.int8)
    if len(status) != len(source):
        raise DataError(f"image cache {folder} is damaged (status of {len(status)} rows for {len(source)}); "
                        "delete it and run again")
    pending = np.flatnonzero(status == PENDING)
    row_bytes = int(np.prod(shape[1:]))
    if len(pending):
        fd_images = os.open(folder / "images.u8", os.O_WRONLY)
        fd_status = os.open(folder / "status.i1", os.O_WRONLY)
        try:
            with tqdm(total=len(source), initial=len(source) - len(pending), disable=not progress, unit="img",
                      desc="caching images", leave=False) as bar, open(folder / "skipped.jsonl", "a") as skips:
                for batch in iter_batches(source, pre, batch_size=batch_size, workers=workers, indices=pending):
                    rows = np.asarray(batch.indices, dtype=np.int64)
                    pixels = batch.images.numpy().reshape(len(rows), row_bytes)
                    for j, row in enumerate(rows.tolist()):
                        os.pwrite(fd_images, pixels[j].tobytes(), row * row_bytes)
                    os.fsync(fd_images)  # the images first, then their status: a cut leaves them pending
                    for row, reason in batch.skipped:
                        skips.write(json.dumps([int(row), str(reason)]) + "\n")
                    skips.flush()
                    marks = [(int(r), DECODED) for r in rows] + [(int(r), SKIPPED) for r, _ in batch.skipped]
                    for row, code in marks:
                        os.pwrite(fd_status, bytes([code]), row)
                        status[row] = code
                    bar.update(len(marks))
        finally:
            os.close(fd_images)
            os.close(fd_status)
    skipped = _read_skips(folder, status)
    kept = np.flatnonzero(status == DECODED)
    if len(kept) == 0:
        raise DataError(f"no image of {getattr(source, 'description', 'the source')} could be decoded "
                        f"({len(skipped)} skipped)")
    if not meta.get("complete"):
        meta["content_fingerprint"] = CachedImages(folder / "images.u8", shape, kept).fingerprint()
        meta["complete"] = True
        _write_meta(folder, meta)
    return open_cache(folder)


def open_cache(folder) -> ImageCache:
    """A complete cache, read-only; DataError when the folder holds none."""
    folder = Path(folder)
    meta = _read_meta(folder)
    if meta is None or not meta.get("complete"):
        raise DataError(f"{folder} holds no complete image cache")
    status = np.fromfile(folder / "status.i1", dtype=np.int8)
    if len(status) != meta["shape"][0]:
        raise DataError(f"image cache {folder} is damaged (status of {len(status)} rows for {meta['shape'][0]})")
    return ImageCache(folder, meta, status, _read_skips(folder, status))


def remove_cache(folder) -> None:
    """Delete a cache folder's files (and the folder when nothing else is in it)."""
    _clear(Path(folder))
    try:
        Path(folder).rmdir()
    except OSError:
        pass


def _read_meta(folder: Path) -> Optional[dict]:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT or meta.get("version") != CACHE_VERSION:
        return None
    if not all((folder / name).is_file() for name in _FILES):
        return None
    return meta


def _write_meta(folder: Path, meta: dict) -> None:
    tmp = folder / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, sort_keys=True))
    os.replace(tmp, folder / "meta.json")


def _read_skips(folder: Path, status: np.ndarray) -> List[Tuple[int, str]]:
    """(row, reason) of the skipped rows, in row order (a row repeated by a resumed build counts once)."""
    reasons = {}
    for line in (folder / "skipped.jsonl").read_text().splitlines():
        try:
            row, reason = json.loads(line)
        except (ValueError, TypeError):
            continue  # a line cut short by a kill; its row is still pending or written again
        reasons[int(row)] = str(reason)
    return [(row, reasons.get(row, "could not be decoded")) for row in np.flatnonzero(status == SKIPPED).tolist()]


def _clear(folder: Path) -> None:
    for name in _FILES + ("meta.json.tmp",):
        try:
            (folder / name).unlink()
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            shutil.rmtree(folder / name)


__all__ = ["build_cache", "open_cache", "remove_cache", "cache_identity", "ImageCache", "CachedImages",
           "CACHE_FORMAT", "CACHE_VERSION"]
