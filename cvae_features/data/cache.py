"""A preprocessed uint8 cache of a source's model inputs on disk, memory-mapped: training without holding
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
another identity is rebuilt, never mixed. :class:`MappedImages` is the read side: random access to
rows through ``index_select`` and slicing, so the training loop shuffles without loading everything.
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


class MappedImages:
    """Rows of a memory-mapped uint8 image array, as much of a tensor as the training loop needs.

    ``index_select(0, rows)`` and ``[rows]`` (a tensor, array or slice of positions) read only those
    images; ``[positions]`` with a tensor or array gives another view (no copy), so a train/validation
    split costs nothing.
    """

    def __init__(self, array: np.ndarray, rows: Optional[np.ndarray] = None):
        self._array = array
        self._rows = np.arange(len(array), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self.shape = torch.Size((len(self._rows), *array.shape[1:]))
        self.dtype = torch.uint8
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        return len(self._rows)

    def numel(self) -> int:
        return int(np.prod(self.shape))

    def _read(self, positions: np.ndarray) -> torch.Tensor:
        rows = self._rows[positions]
        order = np.argsort(rows, kind="stable")  # read in file order, hand back in the asked order
        out = np.empty((len(rows), *self._array.shape[1:]), dtype=np.uint8)
        out[order] = self._array[rows[order]]
        return torch.from_numpy(out)

    def index_select(self, dim: int, positions) -> torch.Tensor:
        if dim != 0:
            raise ValueError("MappedImages selects rows (dim 0) only")
        return self._read(np.asarray(torch.as_tensor(positions).cpu(), dtype=np.int64))

    def __getitem__(self, key):
        if isinstance(key, slice):
            return self._read(np.arange(len(self))[key])
        if isinstance(key, (torch.Tensor, np.ndarray, list)):
            positions = np.asarray(torch.as_tensor(key).cpu(), dtype=np.int64)
            return MappedImages(self._array, self._rows[positions])
        raise TypeError(f"MappedImages takes a slice or an index array, not {type(key).__name__}")

    def cpu(self) -> "MappedImages":
        return self

    def contiguous(self) -> "MappedImages":
        return self

    def fingerprint(self) -> str:
        """blake2b (8 bytes) over the rows' bytes in order, read in chunks (the in-memory path's value)."""
        h = hashlib.blake2b(digest_size=8)
        for start in range(0, len(self), 4096):
            h.update(np.ascontiguousarray(self._read(np.arange(start, min(start + 4096, len(self)))).numpy()).data)
        return h.hexdigest()


class ImageCache:
    """An open cache folder (see the module notes). ``images``: :class:`MappedImages` of the decoded rows."""

    def __init__(self, folder: Path, meta: dict, array: np.ndarray, status: np.ndarray, skipped: List[tuple]):
        self.folder, self.meta, self._array, self.status, self.skipped = folder, meta, array, status, skipped
        self.kept = np.flatnonzero(status == DECODED)
        self.images = MappedImages(array, self.kept)

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
    array = np.memmap(folder / "images.u8", dtype=np.uint8, mode="r+", shape=shape)
    status = np.memmap(folder / "status.i1", dtype=np.int8, mode="r+", shape=(len(source),))
    pending = np.flatnonzero(status == PENDING)
    if len(pending):
        with tqdm(total=len(source), initial=len(source) - len(pending), disable=not progress, unit="img",
                  desc="caching images", leave=False) as bar, open(folder / "skipped.jsonl", "a") as skips:
            for batch in iter_batches(source, pre, batch_size=batch_size, workers=workers, indices=pending):
                rows = np.asarray(batch.indices, dtype=np.int64)
                if len(rows):
                    array[rows] = batch.images.numpy()
                    array.flush()  # the images first, then their status: a cut leaves them pending
                for row, reason in batch.skipped:
                    skips.write(json.dumps([int(row), str(reason)]) + "\n")
                skips.flush()
                status[rows] = DECODED
                status[[int(r) for r, _ in batch.skipped]] = SKIPPED
                status.flush()
                bar.update(len(rows) + len(batch.skipped))
    skipped = _read_skips(folder, status)
    kept = np.flatnonzero(status == DECODED)
    if len(kept) == 0:
        raise DataError(f"no image of {getattr(source, 'description', 'the source')} could be decoded "
                        f"({len(skipped)} skipped)")
    if not meta.get("complete"):
        meta["content_fingerprint"] = MappedImages(array, kept).fingerprint()
        meta["complete"] = True
        _write_meta(folder, meta)
    del array, status
    return open_cache(folder)


def open_cache(folder) -> ImageCache:
    """A complete cache, read-only; DataError when the folder holds none."""
    folder = Path(folder)
    meta = _read_meta(folder)
    if meta is None or not meta.get("complete"):
        raise DataError(f"{folder} holds no complete image cache")
    shape = tuple(meta["shape"])
    array = np.memmap(folder / "images.u8", dtype=np.uint8, mode="r", shape=shape)
    status = np.array(np.memmap(folder / "status.i1", dtype=np.int8, mode="r", shape=(shape[0],)))
    return ImageCache(folder, meta, array, status, _read_skips(folder, status))


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


__all__ = ["build_cache", "open_cache", "remove_cache", "cache_identity", "ImageCache", "MappedImages",
           "CACHE_FORMAT", "CACHE_VERSION"]
