"""Priors over the latent code: the distribution a model's KL term, samples and traversals refer to.

A model owns its prior (``model.prior``); everything that assumes a distribution
of codes asks it instead of assuming N(0, I): the KL term of the training loss,
sampling new images, the range of latent traversals and the prior term of
inpainting. A prior without learnable parameters is a plain object, so it adds
nothing to the model's ``state_dict`` (model files and their fingerprints do not
depend on it).

The interface a prior offers:

- ``dim``: the width of a code;
- ``kl(mu, logvar)``: KL(q || prior) per sample, shape (n,), for the diagonal
  gaussian posterior q = N(mu, exp(logvar)), summed in float32;
- ``kl_per_dim(mu, logvar)``: the same before the sum, shape (n, dim);
- ``sample(n, generator=None, device=None)``: n codes, shape (n, dim);
- ``log_prob(z)``: log density per code, shape (n,);
- ``mean`` and ``stddev``: per-dimension location and scale, shape (dim,)
  (what a traversal's range follows).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

_LOG_2PI = math.log(2 * math.pi)


class StandardNormal:
    """The standard normal prior N(0, I) over codes of width ``dim``."""

    def __init__(self, dim: int):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"invalid dim={dim!r}: expected a positive integer")
        self.dim = dim

    def __repr__(self) -> str:
        return f"StandardNormal(dim={self.dim})"

    def kl_per_dim(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(N(mu, exp(logvar)) || N(0, 1)) of each dimension, shape (n, dim), in float32 (or wider)."""
        # autocast may hand back bf16/fp16; the KL is computed in fp32
        mu32, logvar32 = mu.float(), logvar.float()
        return -0.5 * (1 + logvar32 - mu32.pow(2) - logvar32.exp())

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(N(mu, diag exp(logvar)) || N(0, I)) per sample, shape (n,), summed in float32."""
        mu32, logvar32 = mu.float(), logvar.float()
        return -0.5 * (1 + logvar32 - mu32.pow(2) - logvar32.exp()).sum(1)

    def sample(self, n: int, generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
        """``n`` codes drawn from N(0, I), float32 of shape (n, dim); ``generator`` makes them repeatable."""
        return torch.randn(n, self.dim, generator=generator, device=device)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I) per code, shape (n,)."""
        return -0.5 * (z.pow(2).sum(1) + self.dim * _LOG_2PI)

    @property
    def mean(self) -> torch.Tensor:
        """Per-dimension mean, zeros of shape (dim,)."""
        return torch.zeros(self.dim)

    @property
    def stddev(self) -> torch.Tensor:
        """Per-dimension standard deviation, ones of shape (dim,)."""
        return torch.ones(self.dim)


__all__ = ["StandardNormal"]
