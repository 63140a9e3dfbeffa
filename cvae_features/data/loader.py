"""Batches of preprocessed images, decoded in parallel; a bad file is reported, never raised."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, DataError
from .preprocess import Preprocess
from .sources import ArraySource, ImageSource, check_indices

__all__ = ["Batch", "iter_batches", "load_images", "default_workers"]


@dataclass
class Batch:
    """One chunk of requested rows.

    Attributes
    ----------
    indices : ndarray of dtype int64 and shape (b,)
        Source rows decoded OK, in request order.
    images : torch.Tensor of dtype uint8 and shape (b, C, S, S)
        Their images, ``images[j]`` is row ``indices[j]``.
    skipped : list of (int, str)
        Rows of this chunk that could not be decoded, with the reason.
    output : object
        What ``transform(images)`` returned, when :func:`iter_batches` was given one; else None.
    """

    indices: np.ndarray
    images: torch.Tensor
    skipped: list = field(default_factory=list)
    output: object = None

    def __len__(self) -> int:
        return len(self.indices)


def default_workers(source: ImageSource) -> int:
    """Worker processes used when ``workers=None``: 0 for in-memory data, else one per usable core."""
    if isinstance(source, ArraySource):
        return 0
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class _RowDataset(Dataset):
    """Map-style data set over the requested rows; item j is (row, image or None, reason or None)."""

    def __init__(self, source: ImageSource, pre: Preprocess, rows: np.ndarray):
        self.source, self.pre, self.rows = source, pre, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, j):
        row = int(self.rows[j])
        try:
            return row, self.source.load(row, self.pre), None
        except Exception as err:  # DecodeError, and anything unforeseen: a bad file never stops the run
            return row, None, str(err) or type(err).__name__


def _collate(items, shape, transform=None):
    """One Batch whose ``images`` is still an ndarray: a worker pickles it into the pipe, much cheaper for
    small batches than moving a tensor to shared memory and passing its file descriptor."""
    ok = [(row, img) for row, img, _ in items if img is not None]
    skipped = [(row, reason) for row, img, reason in items if img is None]
    images = np.stack([img for _, img in ok]) if ok else np.empty((0, *shape), dtype=np.uint8)
    batch = Batch(np.asarray([row for row, _ in ok], dtype=np.int64), images, skipped)
    if transform is not None:
        batch.output = transform(torch.from_numpy(images))
    return batch


def iter_batches(source: ImageSource, pre: Preprocess, batch_size: int = 256, workers=None, indices=None,
                 transform=None):
    """Yield the requested rows as :class:`Batch` objects, in order.

    Parameters
    ----------
    source : ImageSource
    pre : Preprocess
    batch_size : int, default=256
        Rows requested per batch; a batch holds fewer images when some were skipped.
    workers : int, optional
        Decoding processes; default one per core for files and 0 (in-process) for
        in-memory data, which takes a vectorised path whatever this says.
    indices : array-like of int, optional
        Rows to read, in this order; default all.
    transform : callable, optional
        Applied to each batch's ``images`` (also an empty one) in the process that
        decoded it, a worker when there are workers; its result is ``Batch.output``.
        CPU work that follows decoding (the encoder) then runs in the workers too,
        which keeps every core busy without threads and processes competing. With
        workers it must be picklable where processes are spawned (not forked).

    Yields
    ------
    Batch
        One per ``batch_size`` chunk of ``indices``, in order; a chunk whose
        rows all failed still yields (with empty ``images``) so its skips are reported.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r}: expected a positive integer")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer))
                                or workers < 0):
        raise ConfigError(f"workers={workers!r}: expected a non-negative integer or None (all cores)")
    rows = check_indices(indices, len(source))
    if isinstance(source, ArraySource):
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            # A copy: batches never alias the source's (possibly read-only, shared) array.
            images = torch.from_numpy(np.array(source.batch(chunk, pre)))
            yield Batch(chunk, images, [], transform(images) if transform is not None else None)
        return
    if workers is None:
        workers = default_workers(source)
    n_batches = -(-len(rows) // batch_size)
    loader = DataLoader(_RowDataset(source, pre, rows), batch_size=int(batch_size), shuffle=False,
                        num_workers=min(int(workers), n_batches), persistent_workers=False,
                        collate_fn=functools.partial(_collate, shape=pre.shape, transform=transform))
    for batch in loader:
        batch.images = torch.from_numpy(batch.images)
        yield batch


def load_images(source: ImageSource, pre: Preprocess, workers=None, progress: bool = False, indices=None,
                batch_size: int = 256):
    """Decode every requested row into one in-memory tensor (for training).

    Parameters
    ----------
    source : ImageSource
    pre : Preprocess
    workers : int, optional
        As in :func:`iter_batches`.
    progress : bool, default=False
        Show a tqdm bar on stderr.
    indices : array-like of int, optional
        Rows to read; default all.

    Returns
    -------
    images : torch.Tensor of dtype uint8 and shape (n_ok, C, S, S)
    indices : ndarray of dtype int64 and shape (n_ok,)
        The source row of each image.
    skipped : list of (int, str)
        Rows that could not be decoded, with the reason.

    Raises
    ------
    DataError
        Rows were requested but none could be decoded.
    """
    from tqdm.auto import tqdm

    rows = check_indices(indices, len(source))
    out = torch.empty((len(rows), *pre.shape), dtype=torch.uint8)
    done, kept, skipped = 0, [], []
    with tqdm(total=len(rows), disable=not progress, unit="img", desc="decoding images", leave=False) as bar:
        for batch in iter_batches(source, pre, batch_size=batch_size, workers=workers, indices=rows):
            out[done:done + len(batch)] = batch.images
            done += len(batch)
            kept.append(batch.indices)
            skipped += batch.skipped
            bar.update(len(batch) + len(batch.skipped))
    if len(rows) and done == 0:
        row, reason = skipped[0]
        raise DataError(f"none of the {len(rows)} images of {source.description} could be decoded "
                        f"(first: {source.keys[row]}: {reason})")
    if done < len(rows):
        out = out[:done].clone()  # release the rows reserved for skipped files
    return out, (np.concatenate(kept) if kept else np.zeros(0, np.int64)), skipped
