"""The canonical model input and the image decoder.

Every image, whatever its file format, mode or size, becomes a uint8 array of
shape ``(C, S, S)`` through :class:`Preprocess`. The policies are fixed and
documented here so that training and extraction see exactly the same input:

- **Transparency** (RGBA, LA, palette with a transparent colour) is composited
  on **black**, i.e. every channel is multiplied by alpha / 255. ``"pad"``
  fills with black too, so "no content" is always 0.
- **16-bit and 32-bit integer** grayscale (``I;16*``, ``I``) is read as the
  range 0..65535 and scaled to 0..255; float images (``F``) are read as
  0..1 when their maximum is at most 1, else as 0..255.
- **Colour to gray** uses the ITU-R 601-2 luma (Pillow's ``convert("L")``);
  gray to colour repeats the channel. CMYK, YCbCr, LAB and HSV go through RGB.
- **EXIF orientation** is applied; GIF and multi-frame TIFF give their first
  frame.
- **Resize** (bilinear, antialiased): ``"crop"`` scales the shorter side to S
  and keeps the centre square, ``"stretch"`` scales both sides to S,
  ``"pad"`` scales the longer side to S and centres the image on black.
- **Decompression bombs** (more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``)
  are refused before any pixel is decoded.

The common PNG (8-bit gray/RGB with or without alpha, not interlaced, no
transparency, EXIF or animation chunks) takes a short path: its chunks are read
from the file's bytes here and Pillow's own zlib/unfilter decoder fills the
image, skipping Pillow's per-chunk Python reader (several times the decoding
work for small images). Everything else, and any doubt (a bad checksum, a
truncated stream), goes through ``Image.open``; both give identical pixels.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import struct
import warnings
import zlib
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

from ..errors import ConfigError, DecodeError

__all__ = ["Preprocess", "decode_image", "IMAGE_EXTENSIONS", "RESIZE_POLICIES"]

#: File name endings recognised as images (compared case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
RESIZE_POLICIES = ("crop", "stretch", "pad")

_BILINEAR = Image.Resampling.BILINEAR
# Shrinking by more than this factor first uses Pillow's fast box reduction; 3 is visually lossless.
_REDUCING_GAP = 3.0
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# (bit depth, colour type) -> Pillow mode (also its raw mode) of the PNGs the short path takes.
_PNG_FAST_MODES = {(8, 0): "L", (8, 2): "RGB", (8, 4): "LA", (8, 6): "RGBA"}
# Ancillary chunks that change the pixels or frames Pillow gives: such files take the full path.
_PNG_PIXEL_CHUNKS = frozenset({b"tRNS", b"eXIf", b"acTL", b"fcTL", b"fdAT"})
# Files up to this size are read whole with one system call; bigger ones stream through Pillow.
_WHOLE_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class Preprocess:
    """The canonical model input: a square uint8 image of ``channels`` channels.

    Parameters
    ----------
    size : int
        Side S of the output, 1 to 4096 pixels.
    channels : {1, 3}
        1 for grayscale, 3 for RGB.
    resize : {"crop", "stretch", "pad"}, default="crop"
        How a non-square image becomes square: ``"crop"`` scales the shorter
        side to S and keeps the centre, ``"stretch"`` ignores the aspect
        ratio, ``"pad"`` scales the longer side to S and fills with black.

    Calling the object on a ``PIL.Image.Image`` returns an ndarray of dtype
    uint8 and shape (channels, size, size).
    """

    size: int
    channels: int
    resize: Literal["crop", "stretch", "pad"] = "crop"

    def __post_init__(self):
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or not 1 <= self.size <= 4096:
            raise ConfigError(f"Preprocess size={self.size!r}: expected an integer from 1 to 4096")
        if isinstance(self.channels, bool) or self.channels not in (1, 3):
            raise ConfigError(f"Preprocess channels={self.channels!r}: expected 1 (gray) or 3 (RGB)")
        if self.resize not in RESIZE_POLICIES:
            raise ConfigError(f"Preprocess resize={self.resize!r}: expected one of {', '.join(RESIZE_POLICIES)}")
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "channels", int(self.channels))

    @property
    def mode(self) -> str:
        """The Pillow mode of the output: ``"L"`` or ``"RGB"``."""
        return "L" if self.channels == 1 else "RGB"

    @property
    def shape(self) -> tuple:
        """Shape of one preprocessed image, ``(channels, size, size)``."""
        return (self.channels, self.size, self.size)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(int(d["size"]), int(d["channels"]), d.get("resize", "crop"))

    def __call__(self, image: Image.Image) -> np.ndarray:
        """Convert one PIL image to the canonical input.

        Parameters
        ----------
        image : PIL.Image.Image
            Any mode, any size.

        Returns
        -------
        ndarray of dtype uint8 and shape (channels, size, size)
        """
        image = _apply_orientation(image)
        image = _to_mode(image, self.mode)
        image = self._resize(image)
        arr = np.asarray(image, dtype=np.uint8)
        if arr.ndim == 2:
            return arr[None]
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def _resize(self, image: Image.Image) -> Image.Image:
        s = self.size
        w, h = image.size
        if w == s and h == s:
            return image
        if self.resize == "stretch" or w == h:
            return image.resize((s, s), _BILINEAR, reducing_gap=_REDUCING_GAP)
        if self.resize == "crop":
            # One resize of the centre square region: no intermediate image.
            side = min(w, h)
            left, top = (w - side) / 2, (h - side) / 2
            return image.resize((s, s), _BILINEAR, box=(left, top, left + side, top + side),
                                reducing_gap=_REDUCING_GAP)
        scale = s / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        inner = image.resize((nw, nh), _BILINEAR, reducing_gap=_REDUCING_GAP)
        canvas = Image.new(image.mode, (s, s), 0)
        canvas.paste(inner, ((s - nw) // 2, (s - nh) // 2))
        return canvas

    def array(self, images: np.ndarray) -> np.ndarray:
        """Preprocess a batch of in-memory images at once (vectorised).

        Parameters
        ----------
        images : ndarray of dtype uint8 and shape (n, C, H, W), C in {1, 3}

        Returns
        -------
        ndarray of dtype uint8 and shape (n, channels, size, size)
            The input itself (no copy) when it already has that shape.
        """
        from ._arrays import preprocess_array

        return preprocess_array(images, self)


def _apply_orientation(image: Image.Image) -> Image.Image:
    # Reading EXIF costs time, so only formats that can carry an orientation are looked at.
    if image.format in ("JPEG", "MPO", "TIFF", "WEBP", "PNG") and ("exif" in image.info or image.format == "TIFF"):
        try:
            return ImageOps.exif_transpose(image)
        except Exception:  # a broken EXIF block should not lose the image
            return image
    return image


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    """Convert any Pillow mode to ``"L"`` or ``"RGB"`` with the module's policies."""
    src = image.mode
    if src == mode:
        return image
    if src == "P":
        if "transparency" in image.info:
            image = image.convert("RGBA")
            src = "RGBA"
        else:
            return image.convert(mode)
    if src in _ALPHA_MODES:
        if src in ("RGBa", "La"):
            # Already premultiplied: dropping alpha composites on black.
            return _premultiplied(image, mode)
        if src == "PA":
            image = image.convert("RGBA")
        alpha = image.getchannel("A")
        base = image.convert(mode)
        return ImageChops.multiply(base, alpha if mode == "L" else Image.merge("RGB", (alpha, alpha, alpha)))
    if src.startswith("I") or src == "F":
        return Image.fromarray(_wide_to_uint8(image)).convert(mode)
    return image.convert(mode)


def _premultiplied(image: Image.Image, mode: str) -> Image.Image:
    bands = image.split()[:-1]
    base = Image.merge("RGB", bands) if len(bands) == 3 else bands[0]
    return base.convert(mode)


def _wide_to_uint8(image: Image.Image) -> np.ndarray:
    arr = np.asarray(image)
    if image.mode == "F":
        arr = arr.astype(np.float64)
        finite = arr[np.isfinite(arr)]
        peak = float(finite.max()) if finite.size else 0.0
        scale = 255.0 if peak <= 1.0 else 1.0
        return np.clip(np.nan_to_num(arr) * scale + 0.5, 0, 255).astype(np.uint8)
    arr = np.clip(arr.astype(np.int64), 0, 65535)
    # 65535 -> 255 and 32896 -> 128: divide by 257 with rounding.
    return ((arr + 128) // 257).astype(np.uint8)


def decode_image(path, pre: Preprocess) -> np.ndarray:
    """Read one image file and return the canonical input.

    Parameters
    ----------
    path : str or os.PathLike
        An image file (PNG, JPEG, BMP, TIFF, WebP, GIF; anything Pillow reads).
    pre : Preprocess

    Returns
    -------
    ndarray of dtype uint8 and shape (pre.channels, pre.size, pre.size)

    Raises
    ------
    DecodeError
        With a short reason (``str(err)``): "file not found", "empty file",
        "permission denied", "is a directory, not a file", "not a regular file
        (named pipe)" (or socket, device: never opened), "symlink loop (...)",
        "not an image (cannot identify file)",
        "truncated image", "decompression bomb: N pixels > limit M",
        "corrupt image (...)".
    """
    stream = None
    try:
        data = _read_file(path)
        if isinstance(data, bytes):
            if data.startswith(_PNG_SIGNATURE):
                image = _open_png_fast(data)
                if image is not None:
                    return pre(image)
            data = io.BytesIO(data)
        else:
            stream = data  # a big file, streamed through Pillow from the descriptor checked above
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x the pixel limit; refuse those too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(data) as image:
                if image.format == "JPEG":
                    # Let libjpeg decode at a reduced scale (still >= the target size): much faster.
                    image.draft(pre.mode if image.mode in ("RGB", "L") else None, (pre.size, pre.size))
                return pre(image)
    except DecodeError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        found = _BOMB_PIXELS.search(str(err))
        pixels = found.group(1) if found else "too many"
        raise DecodeError(f"decompression bomb: {pixels} pixels > limit {Image.MAX_IMAGE_PIXELS}") from None
    except UnidentifiedImageError:
        raise DecodeError(_unidentified_reason(path)) from None
    except MemoryError:
        raise DecodeError("out of memory while decoding") from None
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, zlib/struct errors...
        raise DecodeError(_failure_reason(err)) from None
    finally:
        if stream is not None:
            stream.close()


#: Why a path that is not a regular file is refused, by ``stat.S_IFMT`` of its mode.
_NOT_REGULAR = {stat.S_IFDIR: "is a directory, not a file", stat.S_IFIFO: "not a regular file (named pipe)",
                stat.S_IFSOCK: "not a regular file (socket)", stat.S_IFCHR: "not a regular file (character device)",
                stat.S_IFBLK: "not a regular file (block device)"}


def not_regular_reason(mode: int):
    """Why a file of ``st_mode`` ``mode`` is not read (a FIFO, a device...); None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return _NOT_REGULAR.get(stat.S_IFMT(mode), "not a regular file")


def os_error_reason(err: OSError) -> str:
    """A short reason for an operating-system error met while reaching or opening a file."""
    if isinstance(err, (FileNotFoundError, NotADirectoryError)):
        return "file not found"
    if isinstance(err, PermissionError):
        return "permission denied"
    if isinstance(err, IsADirectoryError):
        return _NOT_REGULAR[stat.S_IFDIR]
    if err.errno == errno.ELOOP:
        return "symlink loop (too many levels of symbolic links)"
    return f"cannot read file ({err.strerror or type(err).__name__})"


def open_regular_file(path) -> int:
    """A read-only descriptor of ``path``, which must be a regular file (after following links).

    Only a regular file is ever opened: a named pipe would block ``open`` forever
    and a device may act on being opened, so both are refused from ``os.stat``
    first; the descriptor is opened non-blocking and checked again with
    ``os.fstat``, so a file swapped for a pipe in between cannot block either.

    Raises
    ------
    DecodeError
        "file not found", "permission denied", "is a directory, not a file",
        "not a regular file (named pipe)" (socket, character/block device),
        "symlink loop (...)", "cannot read file (...)".
    """
    return _open_regular(path)[0]


def _open_regular(path):
    """(descriptor, size in bytes) of a regular file, as :func:`open_regular_file`."""
    try:
        reason = not_regular_reason(os.stat(path).st_mode)
        if reason is not None:
            raise DecodeError(reason)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise DecodeError(os_error_reason(err)) from None
    try:
        st = os.fstat(fd)
    except OSError as err:
        os.close(fd)
        raise DecodeError(os_error_reason(err)) from None
    reason = not_regular_reason(st.st_mode)
    if reason is not None:
        os.close(fd)
        raise DecodeError(reason)
    return fd, st.st_size


def _read_file(path):
    """The bytes of a regular file of at most ``_WHOLE_FILE_BYTES`` (os-level: no buffer objects); for a
    bigger one, a binary file object open on it, for the caller to close. Raises :class:`DecodeError`."""
    fd, size = _open_regular(path)
    try:
        if size > _WHOLE_FILE_BYTES:
            stream, fd = os.fdopen(fd, "rb"), None
            return stream
        data = os.read(fd, size)
        while len(data) < size:  # a short read (network file systems)
            more = os.read(fd, size - len(data))
            if not more:
                break
            data += more
        return data
    except OSError as err:
        raise DecodeError(os_error_reason(err)) from None
    finally:
        if fd is not None:
            os.close(fd)


def _open_png_fast(data: bytes):
    """The common PNG of ``data`` as a PIL image, or None when it needs the full path (see the module notes)."""
    pos, end_of_data, idat = 8, len(data), []
    while pos + 12 <= end_of_data:
        length, kind = struct.unpack_from(">I4s", data, pos)
        start, end = pos + 8, pos + 8 + length
        if end + 4 > end_of_data:
            return None
        body = data[start:end]
        if zlib.crc32(body, zlib.crc32(kind)) != struct.unpack_from(">I", data, end)[0]:
            return None
        if pos == 8:  # the header chunk comes first
            if kind != b"IHDR" or length != 13:
                return None
            width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", body)
            mode = _PNG_FAST_MODES.get((depth, colour))
            limit = Image.MAX_IMAGE_PIXELS
            if (mode is None or compression or filtering or interlace or not width or not height
                    or (limit is not None and width * height > limit)):
                return None
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        elif kind in _PNG_PIXEL_CHUNKS or kind[0] < 97:  # an upper-case first letter: critical (PLTE...)
            return None
        pos = end + 4
    else:
        return None  # no IEND: truncated
    if not idat:
        return None
    try:
        return Image.frombytes(mode, (width, height), b"".join(idat), "zip", mode)
    except Exception:  # a broken or short stream: the full path gives the reason
        return None


def _unidentified_reason(path) -> str:
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
    except OSError:
        pass
    return "not an image (cannot identify file)"


def _failure_reason(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    if "truncated" in text or isinstance(err, EOFError):
        return "truncated image"
    if "broken data stream" in text:
        return "corrupt image (broken data stream)"
    if isinstance(err, ValueError) and "not supported" in text:
        return f"unsupported image ({text[:70]})"
    if len(text) > 80:
        text = text[:77] + "..."
    return f"corrupt image ({text})"
