"""Helpers that WRITE tiny real image files for tests (no mocks: real PNG, JPEG, TIFF... bytes).

- :func:`write_image_zoo` writes one file of every kind the decoder must handle
  (good) and every kind it must refuse (bad) and says which is which.
- :func:`write_class_folder` writes a small labelled folder (one sub-folder per
  class) whose images are easy to tell apart by class.
- :func:`write_idx` / :func:`write_fake_mnist` write IDX files in the MNIST
  format, like the Fashion-MNIST distribution.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def write_image_zoo(folder) -> dict:
    """Write one small file of each kind into ``folder`` (created if needed).

    Returns
    -------
    dict with keys
        ``"good"``: {file name: short description} of files that must decode;
        ``"bad"``: {file name: a substring of the expected DecodeError reason}.
        Every file sits directly in ``folder`` (a flat folder).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    good, bad = {}, {}

    def put(name, image, description, **save):
        image.save(folder / name, **save)
        good[name] = description

    put("rgb.png", _halves(16, 16, RED, BLUE), "RGB PNG, left red / right blue")
    rgba = Image.new("RGBA", (12, 12), (255, 255, 255, 0))
    rgba.paste((255, 255, 255, 255), (0, 0, 6, 12))
    put("rgba.png", rgba, "RGBA PNG: left half opaque white, right half transparent white")
    la = Image.new("LA", (12, 12), (200, 0))
    la.paste((200, 255), (0, 0, 12, 6))
    put("la.png", la, "LA PNG: top half opaque gray 200, bottom half transparent")
    pal = Image.new("P", (10, 10), 0)
    pal.putpalette([0, 255, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    pal.paste(1, (0, 0, 10, 5))
    put("palette.png", pal, "palette PNG: top half red (index 1), bottom half transparent green (index 0)",
        transparency=0)
    ramp = np.tile(np.array([0, 257 * 128, 65535], dtype=np.uint16), (3, 1))
    put("gray16.png", Image.fromarray(ramp), "16-bit gray PNG: columns 0, 32896, 65535")
    put("bilevel.png", Image.new("1", (8, 8), 1), "1-bit PNG, all white")
    put("cmyk.jpg", Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "CMYK JPEG, red", quality=95)
    put("gray.jpg", Image.new("L", (16, 16), 90), "grayscale JPEG, value 90", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored left red / right blue; orientation 6 = rotate 90 degrees clockwise to display
    put("exif_rotated.jpg", _halves(40, 20, RED, BLUE), "JPEG 40x20 stored, EXIF orientation 6: shows 20x40, "
        "red on top", quality=95, exif=exif)
    put("rgb.bmp", Image.new("RGB", (9, 7), GREEN), "BMP, green")
    put("rgb.tiff", Image.new("RGB", (9, 7), BLUE), "TIFF, blue")
    frames = [Image.new("L", (8, 8), 50), Image.new("L", (8, 8), 150)]
    frames[0].save(folder / "frames.tif", save_all=True, append_images=frames[1:])
    good["frames.tif"] = "two-frame TIFF: frame 0 is gray 50"
    put("rgb.webp", Image.new("RGB", (10, 10), RED), "lossless WebP, red", lossless=True)
    gif = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    gif[0].save(folder / "animated.gif", save_all=True, append_images=gif[1:], duration=100, loop=0)
    good["animated.gif"] = "animated GIF: frame 0 red, frame 1 blue"
    put("tiny.PNG", Image.new("RGB", (3, 5), BLUE), "3x5 blue image (upper-case extension)")
    big = Image.new("RGB", (300, 120), RED)
    big.paste(GREEN, (90, 0, 210, 120))
    put("big_wide.png", big, "300x120: red left and right bands, green centre 120 wide")

    data = (folder / "rgb.png").read_bytes()
    # Flip bytes inside the IDAT chunk so the zlib stream or CRC is broken.
    at = data.index(b"IDAT") + 8
    (folder / "corrupt.png").write_bytes(data[:at] + bytes(b ^ 0xFF for b in data[at:at + 12]) + data[at + 12:])
    bad["corrupt.png"] = "corrupt image"
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    buf = folder / "truncated.jpg"
    noisy.save(buf, quality=90)
    full = buf.read_bytes()
    buf.write_bytes(full[: len(full) // 2])
    bad["truncated.jpg"] = "truncated image"
    (folder / "empty.png").write_bytes(b"")
    bad["empty.png"] = "empty file"
    (folder / "notes.png").write_text("this is a text file renamed to .png\n")
    bad["notes.png"] = "not an image"
    (folder / "bomb.png").write_bytes(png_header_only(20000, 10000))
    bad["bomb.png"] = "decompression bomb: 200000000 pixels"
    (folder / "readme.txt").write_text("not listed: .txt is not an image extension\n")
    return {"good": good, "bad": bad}


def _halves(width, height, left, right):
    image = Image.new("RGB", (width, height), left)
    image.paste(right, (width // 2, 0, width, height))
    return image


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` gray pixels but holds almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def write_class_folder(folder, classes=("circle", "square"), per_class: int = 4, size=(12, 12), mode: str = "L",
                       ext: str = ".png", seed: int = 0) -> dict:
    """Write ``per_class`` images in ``folder/<class>/`` for each class.

    Class k's images have mean brightness about 40 + 160 * k / (n_classes - 1)
    plus a little noise, so classes are separable by brightness.

    Returns
    -------
    dict {relative POSIX path: class index}
    """
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    written = {}
    channels = {"L": 1, "RGB": 3}[mode]
    for k, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        level = 40 + 160 * k / max(len(classes) - 1, 1)
        for i in range(per_class):
            pixels = np.clip(rng.normal(level, 10, (size[1], size[0], channels)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
            rel = f"{name}/img_{i:03d}{ext}"
            image.save(folder / rel)
            written[rel] = k
    return written


def write_idx(path, array: np.ndarray, gz: bool = False) -> Path:
    """Write ``array`` (uint8) as an IDX file (magic 0x0000 08 ndim, big-endian dims)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    payload = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def write_fake_mnist(folder, n_train: int = 20, n_test: int = 10, gz: bool = True, seed: int = 0) -> dict:
    """Write the four MNIST-format IDX files of a tiny fake data set (28x28, labels 0..9).

    Returns
    -------
    dict {"train": (images (n, 28, 28), labels (n,)), "test": (...)} of what was written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
        out[split] = (images, labels)
    return out
