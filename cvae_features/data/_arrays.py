"""Vectorised preprocessing of in-memory image arrays (the fast path of built-in data sets)."""

from __future__ import annotations

import numpy as np

from ..errors import DataError


def as_image_array(images, *, name: str = "images") -> np.ndarray:
    """Validate and normalise an in-memory image array to uint8 (n, C, H, W).

    Parameters
    ----------
    images : array-like of shape (n, H, W) or (n, C, H, W), C in {1, 3}
        uint8 0..255, bool, or float in [0, 1].

    Returns
    -------
    ndarray of dtype uint8 and shape (n, C, H, W)
    """
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1] not in (1, 3) or arr.shape[2] < 1 or arr.shape[3] < 1:
        raise DataError(f"{name} of shape {arr.shape}: expected (n, H, W) or (n, C, H, W) with C = 1 or 3")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and (not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1):
            raise DataError(f"{name} of dtype {arr.dtype}: float images must lie in [0, 1]")
        return np.round(arr * 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(f"{name} of dtype {arr.dtype}: integer images must lie in 0..255")
        return arr.astype(np.uint8)
    raise DataError(f"{name} of dtype {arr.dtype}: expected uint8, bool or float in [0, 1]")


def preprocess_array(images: np.ndarray, pre) -> np.ndarray:
    """Apply a :class:`~cvae_features.data.Preprocess` to a batch (n, C, H, W) uint8.

    Same policies as the file decoder: luma for colour to gray, channel
    repetition for gray to colour, bilinear antialiased resize with the
    crop / stretch / pad rule. Returns the input itself when nothing changes.
    """
    n, c, h, w = images.shape
    out = images
    if c != pre.channels:
        out = _gray_to_rgb(out) if c == 1 else _rgb_to_gray(out)
    s = pre.size
    if h == s and w == s:
        return out
    import torch
    import torch.nn.functional as F

    if pre.resize == "crop" and h != w:
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        out = out[:, :, top:top + side, left:left + side]
        h = w = side
    if pre.resize == "pad" and h != w:
        scale = s / max(h, w)
        target = (max(1, round(h * scale)), max(1, round(w * scale)))
    else:
        target = (s, s)
    x = torch.from_numpy(np.ascontiguousarray(out)).float()
    x = F.interpolate(x, size=target, mode="bilinear", align_corners=False, antialias=True)
    x = x.round_().clamp_(0, 255).to(torch.uint8).numpy()
    if target == (s, s):
        return x
    canvas = np.zeros((n, pre.channels, s, s), dtype=np.uint8)
    top, left = (s - target[0]) // 2, (s - target[1]) // 2
    canvas[:, :, top:top + target[0], left:left + target[1]] = x
    return canvas


def _gray_to_rgb(images: np.ndarray) -> np.ndarray:
    return np.repeat(images, 3, axis=1)


def _rgb_to_gray(images: np.ndarray) -> np.ndarray:
    # Pillow's fixed-point ITU-R 601-2 luma, so arrays and files agree exactly.
    r, g, b = (images[:, i].astype(np.uint32) for i in range(3))
    luma = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16
    return luma.astype(np.uint8)[:, None]
