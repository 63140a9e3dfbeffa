"""Reparameterisation noise keyed by image: ε for image ``index`` in an epoch is a function of
(key, index) only, so training does not depend on how images are grouped into batches or shared
between processes.

:func:`keyed_normal` is a counter-based generator: each value is a SplitMix64 hash of (key, index,
coordinate) whose two 32-bit halves become a standard normal by the Box-Muller transform, computed with vectorised
int64 tensor arithmetic (wrapping on overflow) on whatever device the index lives on.
"""

from __future__ import annotations

import math

import torch

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64
_C1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_C2 = -7723592293110705685  # 0x94D049BB133111EB


def _lsr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 values (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser: a bijective hash of int64 values."""
    z = (z ^ _lsr(z, 30)) * _C1
    z = (z ^ _lsr(z, 27)) * _C2
    return z ^ _lsr(z, 31)


def keyed_normal(key, index: torch.Tensor, dim: int, dtype=torch.float32) -> torch.Tensor:
    """Standard normal values of shape (len(index), dim), one fixed row per (key, index).

    Parameters
    ----------
    key : int or 0-d int64 tensor
        E.g. a seed derived from (run seed, epoch).
    index : int64 tensor (n,)
        The images' rows; equal (key, index) pairs give equal rows, wherever and in whatever batch.
    dim : int
    """
    index = torch.as_tensor(index, dtype=torch.int64)
    key = torch.as_tensor(key, dtype=torch.int64, device=index.device).reshape(())
    seed = _mix(key + _GOLDEN)
    counter = index[:, None] * dim + torch.arange(dim, device=index.device, dtype=torch.int64)[None, :]
    bits = _mix(counter * _GOLDEN + seed)  # one 64-bit hash per value: two 32-bit uniforms
    u1 = (_lsr(bits, 32).to(torch.float64) + 0.5) * (2.0 ** -32)  # in (0, 1): the logarithm stays finite
    u2 = (bits & 0xFFFFFFFF).to(torch.float64) * (2.0 ** -32)
    radius = torch.sqrt(-2.0 * torch.log(u1.float()))
    return (radius * torch.cos((2.0 * math.pi) * u2.float())).to(dtype)


__all__ = ["keyed_normal"]
