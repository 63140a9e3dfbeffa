"""Training-time input augmentation: the encoder sees a perturbed image.

With ``target="clean"`` (the default) the decoder is scored against the *unperturbed* image, so the
code has to hold what the image shows and may drop how it was shifted, cropped or corrupted (a
denoising VAE when the perturbation is noise or an erased patch, an augmentation-invariant one when it
is a shift or crop). With ``target="same"`` the perturbed image is both input and target: ordinary
data augmentation, more varied images and nothing asked to be invariant.

A setting is written as a spec string (``cvae train --augment``, ``TrainConfig.augment``)::

    shift=2              random translation by up to 2 pixels in x and y (zeros come in)
    crop=0.8             random zoom into a square window of 80 % to 100 % of the side
    flip                 horizontal flip of half the images
    noise=0.1            gaussian pixel noise with standard deviation 0.1 (pixels in [0, 1], clipped)
    erase=0.25           one zeroed square patch with a quarter of the image side
    target=clean|same    what the decoder reconstructs (default clean)

joined by commas, e.g. ``shift=2,noise=0.1``; ``auto`` (the package default) lets the image size
choose (:func:`resolve_augment`), ``none`` turns augmentation off. Every random draw of an image is a function of
(key, its row) only (:func:`~cvae_features.noise.keyed_normal`), where the training loop derives the
key from (seed, epoch): augmentation does not depend on batching or on the number of processes, and
a resumed run repeats it exactly. Validation, extraction and every probe see clean images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Optional

import torch
import torch.nn.functional as F

from .errors import ConfigError
from .model import to_unit_float
from .noise import keyed_normal

TARGETS = ("clean", "same")
# how each spec word is parsed, and the range it must lie in (for the error message)
_RANGES = {"shift": "an integer from 0 to 64", "crop": "a number in (0, 1]", "noise": "a number from 0 to 1",
           "erase": "a number from 0 to 1 (a share of the image side)"}
# the keyed draws of an image, by column: shift x, shift y, crop scale, crop x, crop y, flip, erase x, erase y
_DRAWS = 8


@dataclass(frozen=True)
class Augment:
    """One augmentation setting (see the module notes); ``Augment()`` changes nothing."""

    shift: int = 0
    crop: float = 1.0
    flip: bool = False
    noise: float = 0.0
    erase: float = 0.0
    target: str = "clean"

    def __post_init__(self):
        def bad(name):
            expected = _RANGES.get(name) or ("True or False" if name == "flip" else "'clean' or 'same'")
            raise ConfigError(f"invalid augment {name}={getattr(self, name)!r}: expected {expected}")

        if isinstance(self.shift, bool) or not isinstance(self.shift, int) or not 0 <= self.shift <= 64:
            bad("shift")
        for name, lo_open in (("crop", True), ("noise", False), ("erase", False)):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                    or not (0 < value if lo_open else 0 <= value) or value > 1):
                bad(name)
            object.__setattr__(self, name, float(value))
        if not isinstance(self.flip, bool):
            bad("flip")
        if self.target not in TARGETS:
            bad("target")

    # -- the spec string ---------------------------------------------------------
    @classmethod
    def parse(cls, spec: Optional[str]) -> "Augment":
        """The setting a spec string names (None or "" or "none": no augmentation); ConfigError otherwise."""
        if spec is None or not str(spec).strip() or str(spec).strip().lower() == "none":
            return cls()
        if not isinstance(spec, str):
            raise ConfigError(f"invalid augment={spec!r}: expected a spec string such as 'shift=2,noise=0.1'")
        known = {f.name for f in fields(cls)}
        values = {}
        for part in spec.split(","):
            name, eq, text = (s.strip() for s in part.strip().partition("="))
            if name not in known:
                raise ConfigError(f"unknown augmentation {name!r} in augment={spec!r}: expected "
                                  + ", ".join(sorted(known)))
            if name in values:
                raise ConfigError(f"augmentation {name!r} given twice in augment={spec!r}")
            if name == "flip":
                if eq:
                    raise ConfigError(f"flip takes no value in augment={spec!r}: write 'flip' to turn it on")
                values[name] = True
            elif not eq or not text:
                raise ConfigError(f"augmentation {name!r} needs a value in augment={spec!r}, e.g. {name}=...")
            elif name == "target":
                values[name] = text
            else:
                try:
                    values[name] = int(text) if name == "shift" else float(text)
                except ValueError:
                    raise ConfigError(f"invalid augment {name}={text!r}: expected {_RANGES[name]}") from None
        return cls(**values)

    def spec(self) -> Optional[str]:
        """The canonical spec string (None when nothing is perturbed): ``parse(a.spec()) == a``."""
        parts = []
        if self.shift:
            parts.append(f"shift={self.shift}")
        if self.crop < 1:
            parts.append(f"crop={self.crop:g}")
        if self.flip:
            parts.append("flip")
        if self.noise:
            parts.append(f"noise={self.noise:g}")
        if self.erase:
            parts.append(f"erase={self.erase:g}")
        if not parts:
            return None
        return ",".join(parts + ([f"target={self.target}"] if self.target != "clean" else []))

    @property
    def active(self) -> bool:
        """True when the setting perturbs anything (exactly when :meth:`spec` is not None)."""
        return self.geometric or bool(self.noise or self.erase)

    @property
    def geometric(self) -> bool:
        return bool(self.shift or self.crop < 1 or self.flip)

    # -- applying it ----------------------------------------------------------------
    def __call__(self, images: torch.Tensor, key, index: torch.Tensor) -> torch.Tensor:
        """The perturbed images, float32 in [0, 1] of the shape of ``images`` (uint8 or float in [0, 1]).

        ``index`` (int64, one per image) and ``key`` fix every draw: equal (key, index) give equal
        perturbations wherever the image is.
        """
        x = to_unit_float(images)
        if not self.active:
            return x
        n, c, h, w = x.shape
        index = torch.as_tensor(index, dtype=torch.int64, device=x.device)
        u = _uniform(keyed_normal(key, index, _DRAWS))  # (n, _DRAWS) in (0, 1)
        if self.geometric:
            x = self._warp(x, u)
        if self.erase:
            side = max(1, round(self.erase * min(h, w)))
            top = (u[:, 6] * (h - side + 1)).floor().long().clamp_(0, h - side)
            left = (u[:, 7] * (w - side + 1)).floor().long().clamp_(0, w - side)
            rows = torch.arange(h, device=x.device)[None, :]
            cols = torch.arange(w, device=x.device)[None, :]
            inside_r = (rows >= top[:, None]) & (rows < (top + side)[:, None])  # (n, h)
            inside_c = (cols >= left[:, None]) & (cols < (left + side)[:, None])  # (n, w)
            patch = inside_r[:, None, :, None] & inside_c[:, None, None, :]
            x = x.masked_fill(patch, 0.0)
        if self.noise:
            # a second key: the pixel noise must not reuse the draws above
            eps = keyed_normal(torch.as_tensor(key, dtype=torch.int64) + 1, index, c * h * w).view(n, c, h, w)
            x = (x + self.noise * eps.to(x.device)).clamp_(0.0, 1.0)
        return x

    def _warp(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Shift, crop and flip in one resampling (bilinear; integer shifts land exactly on pixels)."""
        n, _, h, w = x.shape
        s = self.shift
        dx = (u[:, 0] * (2 * s + 1)).floor().clamp_(0, 2 * s) - s  # integers in [-s, s]
        dy = (u[:, 1] * (2 * s + 1)).floor().clamp_(0, 2 * s) - s
        scale = self.crop + (1 - self.crop) * u[:, 2]  # the window's side, as a share of the image's
        cx = (2 * u[:, 3] - 1) * (1 - scale)  # the window's centre, in the [-1, 1] coordinates of the image
        cy = (2 * u[:, 4] - 1) * (1 - scale)
        sign = torch.where(u[:, 5] < 0.5, -1.0, 1.0) if self.flip else torch.ones_like(scale)
        theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0] = sign * scale
        theta[:, 1, 1] = scale
        theta[:, 0, 2] = cx + 2 * dx / w
        theta[:, 1, 2] = cy + 2 * dy / h
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _uniform(z: torch.Tensor) -> torch.Tensor:
    """Standard normal values mapped to (0, 1) by their distribution function."""
    return (0.5 * (1 + torch.erf(z.double() / math.sqrt(2)))).float().clamp_(1e-7, 1 - 1e-7)


#: The spec that lets the image size decide: shifts of up to a fourteenth of the side, reconstructed.
AUTO = "auto"
AUTO_SHIFT_DIVISOR = 14


def check_augment(spec) -> Optional[str]:
    """A spec validated and written canonically (None for no augmentation, "auto" kept); ConfigError otherwise."""
    if isinstance(spec, str) and spec.strip().lower() == AUTO:
        return AUTO
    return Augment.parse(spec).spec()


def resolve_augment(spec: Optional[str], image_size: int) -> Augment:
    """The setting a spec gives for images of side ``image_size``.

    ``"auto"`` (the package default) is whole-pixel shifts of up to ``image_size // 14`` pixels with the
    shifted image reconstructed (``target=same``): 2 px at 28 px, where it was chosen on a validation
    split of Fashion-MNIST's training images; nothing below 14 px, where one pixel is already a large move.
    """
    if spec is not None and spec.strip().lower() == AUTO:
        return Augment(shift=min(64, image_size // AUTO_SHIFT_DIVISOR), target="same")
    return Augment.parse(spec)


__all__ = ["AUTO", "Augment", "TARGETS", "check_augment", "resolve_augment"]
