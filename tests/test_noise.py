"""Keyed reparameterisation noise (``cvae_features.noise``): SplitMix64 of (key, index, coordinate), two 32-bit
halves through Box-Muller, checked against the same recipe written with Python integers."""

import math

import numpy as np
import pytest
import torch

from cvae_features.noise import keyed_normal

M64 = 1 << 64
GOLDEN, C1, C2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * C1) % M64
    z = ((z ^ (z >> 27)) * C2) % M64
    return z ^ (z >> 31)


def reference(key: int, index, dim: int) -> np.ndarray:
    """float64 normals: bits = mix(counter * golden + mix(key + golden)), counter = index * dim + coordinate."""
    seed = _mix((key + GOLDEN) % M64)
    out = np.empty((len(index), dim))
    for r, i in enumerate(index):
        for j in range(dim):
            bits = _mix(((i * dim + j) * GOLDEN + seed) % M64)
            u1 = ((bits >> 32) + 0.5) / 2**32
            u2 = (bits & 0xFFFFFFFF) / 2**32
            out[r, j] = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
    return out


def test_keyed_normal_is_splitmix64_through_box_muller():
    for key, index, dim in ((7, [3, 9, 4], 5), (-3, [0, 1, 2**40], 3), (2**62, [12345], 8)):
        z = keyed_normal(key, torch.tensor(index), dim)
        assert z.dtype == torch.float32 and tuple(z.shape) == (len(index), dim)
        np.testing.assert_allclose(z.numpy(), reference(key % M64, index, dim), rtol=2e-5, atol=2e-6)
    as_tensor = keyed_normal(torch.tensor(7), torch.tensor([3]), 5, dtype=torch.float64)
    assert as_tensor.dtype == torch.float64
    np.testing.assert_allclose(as_tensor.numpy(), reference(7, [3], 5), rtol=2e-5, atol=2e-6)
    assert keyed_normal(1, torch.zeros(0, dtype=torch.int64), 4).shape == (0, 4)


def test_indices_and_keys_of_other_integer_types_and_devices():
    want = keyed_normal(7, torch.tensor([3, 2**30]), 8)
    assert torch.equal(keyed_normal(7, torch.tensor([3, 2**30], dtype=torch.int32), 8), want)  # no int32 overflow
    assert torch.equal(keyed_normal(7, [3, 2**30], 8), want)
    assert torch.equal(keyed_normal(torch.tensor(7), torch.tensor([3, 2**30]), 8), want)
    meta = keyed_normal(7, torch.arange(3, device="meta"), 4)  # computed where the index lives
    assert meta.device.type == "meta" and tuple(meta.shape) == (3, 4)


def test_the_smallest_32_bit_half_still_gives_a_finite_value():
    # bits = 0 (both halves 0): counter * golden + seed = 0 mod 2^64, as mix(0) = 0
    key = 7
    seed = _mix((key + GOLDEN) % M64)
    counter = (-seed * pow(GOLDEN, -1, M64)) % M64
    index = counter - M64 if counter >= 1 << 63 else counter  # as int64
    z = keyed_normal(key, torch.tensor([index]), 1)
    assert _mix((counter * GOLDEN + seed) % M64) == 0
    assert z.item() == pytest.approx(math.sqrt(-2.0 * math.log(0.5 / 2**32)), rel=1e-6)  # u1 = 2^-33, u2 = 0
