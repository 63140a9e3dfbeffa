"""Labels for some images of a source, from a CSV file ``key,label`` (``cvae train SOURCE --labels LABELS``).

The keys are the source's own row keys (a folder's relative paths such as ``shoes/a.png``, a
built-in data set's ``fashion-mnist:train/00012``; ``cvae extract`` writes them to the store).
A first row ``key,label`` (any case) is a header. Rows of the source the file does not list are
unlabelled (-1), as are rows listed with an empty label or ``-1``. The classes are the sorted
distinct labels (numerically when all are integers), whatever labels the source had before.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from ..errors import DataError, SourceNotFoundError
from .sources import _UNKNOWN_LABELS, _sorted_label_names, read_csv_rows


def read_label_file(path) -> dict:
    """``{key: label}`` from a ``key,label`` CSV (labels as strings; unknown ones left out).

    Raises
    ------
    SourceNotFoundError
        No such file.
    DataError
        Unreadable, a row without exactly two cells, an empty key, or a key listed twice.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise SourceNotFoundError(f"labels file {str(path)!r} does not exist")
    rows = read_csv_rows(path, "labels file")
    if rows and [c.lower() for c in rows[0][1]] == ["key", "label"]:
        rows = rows[1:]
    out, line_of = {}, {}
    for n, row in rows:
        if len(row) != 2:
            raise DataError(f"labels file {str(path)!r} line {n}: expected 'key,label', got {len(row)} cell(s)")
        key, label = row
        if not key:
            raise DataError(f"labels file {str(path)!r} line {n}: empty key")
        if key in line_of:
            raise DataError(f"labels file {str(path)!r} line {n}: key {key!r} is already listed on line {line_of[key]}")
        line_of[key] = n
        if label not in _UNKNOWN_LABELS:
            out[key] = label
    return out


def with_labels(source, labels: dict, *, what: str = "labels file"):
    """A copy of ``source`` whose labels are ``labels`` (``{key: label}``), every other row unlabelled.

    Raises
    ------
    DataError
        A key the source does not hold (the count and the first few are named).
    """
    index = {key: i for i, key in enumerate(source.keys)}
    missing = [key for key in labels if key not in index]
    if missing:
        shown = ", ".join(repr(k) for k in missing[:3])
        raise DataError(f"{what}: {len(missing)} key(s) are not images of {source.description} (e.g. {shown}); "
                        "keys are the source's own: relative paths for a folder, name:split/NNNNN for a data set")
    names = _sorted_label_names(set(labels.values()))
    class_of = {name: c for c, name in enumerate(names)}
    y = np.full(len(source.keys), -1, dtype=np.int64)
    for key, label in labels.items():
        y[index[key]] = class_of[label]
    out = copy.copy(source)
    out.labels, out.label_names = y, names
    out.description = f"{source.description}, {len(labels):,} labelled from {what}"
    return out


__all__ = ["read_label_file", "with_labels"]
