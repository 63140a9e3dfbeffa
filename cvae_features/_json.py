"""One conversion to plain, valid JSON for everything the toolkit writes (run dirs, reports, benchmarks)."""

import math

import numpy as np


def to_builtin(value):
    """Convert numpy scalars/arrays (also nested in dicts, lists, tuples) to plain Python for JSON.

    Non-finite floats become ``None`` so the output is valid JSON (no ``NaN``/``Infinity``).
    """
    if isinstance(value, dict):
        return {str(k): to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_builtin(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_builtin(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
