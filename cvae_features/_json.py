"""One conversion to plain, valid JSON for everything the toolkit writes (CLI ``--json``, run dirs, reports,
show.json, benchmarks): :func:`to_builtin` makes plain data, :func:`dumps` writes it strictly."""

import dataclasses
import json
import math
from pathlib import PurePath

import numpy as np


def to_builtin(value):
    """Convert a value to plain Python that JSON can hold, recursively.

    numpy scalars and arrays become numbers and lists, paths become strings, objects with a
    ``to_dict()`` (result records) and other dataclasses become dicts, tuples become lists,
    dict keys become strings. Non-finite floats (NaN, ±inf) become ``None``, so the output is
    valid JSON (no ``NaN``/``Infinity``). Anything else is returned as it is.
    """
    if isinstance(value, dict):
        return {str(k): to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_builtin(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_builtin(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, PurePath):
        return str(value)
    if callable(getattr(value, "to_dict", None)) and not isinstance(value, type):
        return to_builtin(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_builtin({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    return value


def dumps(value, **kwargs) -> str:
    """``json.dumps`` of :func:`to_builtin` (``value``) with ``allow_nan=False``: strict JSON or a ValueError/TypeError.

    ``kwargs`` go to ``json.dumps`` (``indent``, ``sort_keys``).
    """
    return json.dumps(to_builtin(value), allow_nan=False, **kwargs)
