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

:class:`MixturePrior` (the ``conv-vade`` family's) is an ``nn.Module``: its mixing logits,
component means and log-variances are parameters of the model. It adds
``responsibilities(mu, logvar=None)`` and ``assign(mu)`` (the component each code belongs to).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

_LOG_2PI = math.log(2 * math.pi)


class StandardNormal:
    """The standard normal prior N(0, I) over codes of width ``dim``."""

    def __init__(self, dim: int):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"invalid dim={dim!r}: expected a positive integer")
        self.dim = dim

    def __repr__(self) -> str:
        return f"StandardNormal(dim={self.dim})"

    def describe(self) -> str:
        """What the prior is, in words (figure captions)."""
        return "N(0, I)"

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


#: A mixture component's log-variance is clamped to this range (variances from 4.5e-5 to 2.2e4).
COMPONENT_LOGVAR_MIN, COMPONENT_LOGVAR_MAX = -10.0, 10.0


class MixturePrior(nn.Module):
    """A mixture of ``n_components`` diagonal gaussians over codes of width ``dim``, every part learnable.

    p(z) = sum_c pi_c N(z; m_c, diag exp(s_c)), with pi = softmax(``logits``) (shape (K,)),
    m = ``means`` (K, dim) and s = ``logvars`` (K, dim), clamped to
    [COMPONENT_LOGVAR_MIN, COMPONENT_LOGVAR_MAX] wherever they are used.

    KL(q || p) of a gaussian q against a mixture has no closed form. :meth:`kl` is the
    variational upper bound of Hershey & Olsen (2007),

        KL(q || p) <= -log sum_c pi_c exp(-KL(q || N_c)),

    tight when the components do not overlap, equal to the KL when K = 1 (or all components are
    alike). It equals VaDE's (Jiang et al. 2017) ELBO term E_q(c|x)[KL(q || N_c)] + KL(q(c|x) || pi)
    with q(c|x) at its optimum gamma_c ∝ pi_c exp(-KL(q || N_c)), which is what
    ``responsibilities(mu, logvar)`` returns.

    Parameters
    ----------
    n_components : int
        K, at least 1.
    dim : int
        Width of a code.

    The parameters start as a uniform mixture of unit-variance components whose means are drawn
    from N(0, I) with the global torch generator (seed it for a repeatable start).
    """

    def __init__(self, n_components: int, dim: int):
        super().__init__()
        for name, value in (("n_components", n_components), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"invalid {name}={value!r}: expected a positive integer")
        self.n_components, self.dim = n_components, dim
        self.logits = nn.Parameter(torch.zeros(n_components))
        self.means = nn.Parameter(torch.randn(n_components, dim))
        self.logvars = nn.Parameter(torch.zeros(n_components, dim))

    def extra_repr(self) -> str:
        return f"n_components={self.n_components}, dim={self.dim}"

    def describe(self) -> str:
        """What the prior is, in words (figure captions)."""
        return f"a learnt mixture of {self.n_components} diagonal gaussians"

    # -- the parts -------------------------------------------------------------
    def log_weights(self) -> torch.Tensor:
        """log pi, shape (K,)."""
        return torch.log_softmax(self.logits.float(), 0)

    def component_logvars(self) -> torch.Tensor:
        """The components' log-variances as used (clamped), shape (K, dim)."""
        return self.logvars.float().clamp(COMPONENT_LOGVAR_MIN, COMPONENT_LOGVAR_MAX)

    def set_components(self, weights: torch.Tensor, means: torch.Tensor, variances: torch.Tensor) -> None:
        """Overwrite the mixture (in place, without gradient): weights (K,) > 0, means and variances (K, dim)."""
        with torch.no_grad():
            self.logits.copy_(weights.to(self.logits).clamp_min(1e-12).log())
            self.means.copy_(means.to(self.means))
            self.logvars.copy_(variances.to(self.logvars).log().clamp(COMPONENT_LOGVAR_MIN, COMPONENT_LOGVAR_MAX))

    def component_kl_per_dim(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(N(mu, exp(logvar)) || N_c) of each dimension and component, shape (n, K, dim), float32."""
        mu32, logvar32 = mu.float().unsqueeze(1), logvar.float().unsqueeze(1)
        s = self.component_logvars().unsqueeze(0)
        return 0.5 * (s - logvar32 + (logvar32.exp() + (mu32 - self.means.float()).pow(2)) / s.exp() - 1)

    def _log_joint(self, z: torch.Tensor) -> torch.Tensor:
        """log pi_c + log N(z; m_c, s_c) per code and component, shape (n, K)."""
        s = self.component_logvars()
        z32 = z.float().unsqueeze(1)
        log_n = -0.5 * ((z32 - self.means.float()).pow(2) / s.exp() + s + _LOG_2PI).sum(2)
        return self.log_weights() + log_n

    # -- the prior interface ----------------------------------------------------
    def kl(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """The upper bound -log sum_c pi_c exp(-KL(q || N_c)) on KL(q || p) per sample, shape (n,), float32."""
        kl_c = self.component_kl_per_dim(mu, logvar).sum(2)
        return -torch.logsumexp(self.log_weights() - kl_c, dim=1)

    def kl_per_dim(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """The bound of :meth:`kl` split over dimensions, shape (n, dim); each row sums to :meth:`kl`.

        With gamma = ``responsibilities(mu, logvar)`` the bound is
        sum_c gamma_c KL(q || N_c) + KL(gamma || pi); dimension d gets
        sum_c gamma_c KL_d(q || N_c) plus an equal share KL(gamma || pi) / dim of the categorical term.
        """
        kl_cd = self.component_kl_per_dim(mu, logvar)
        log_pi = self.log_weights()
        log_gamma = torch.log_softmax(log_pi - kl_cd.sum(2), dim=1)
        gamma = log_gamma.exp()
        categorical = (gamma * (log_gamma - log_pi)).sum(1, keepdim=True)
        return (gamma.unsqueeze(2) * kl_cd).sum(1) + categorical / self.dim

    def responsibilities(self, mu: torch.Tensor, logvar: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Which component each code belongs to, as probabilities: shape (n, K), rows summing to 1.

        Without ``logvar``: p(c | z = mu) ∝ pi_c N(mu; m_c, s_c). With it: the optimal
        q(c | x) of the bound, ∝ pi_c exp(-KL(N(mu, exp(logvar)) || N_c)).
        """
        if logvar is None:
            return torch.softmax(self._log_joint(mu), dim=1)
        return torch.softmax(self.log_weights() - self.component_kl_per_dim(mu, logvar).sum(2), dim=1)

    @torch.no_grad()
    def assign(self, mu: torch.Tensor) -> torch.Tensor:
        """The most probable component of each code, argmax_c p(c | z = mu): int64 of shape (n,)."""
        return self._log_joint(mu).argmax(1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) = logsumexp_c (log pi_c + log N(z; m_c, s_c)) per code, shape (n,)."""
        return torch.logsumexp(self._log_joint(z), dim=1)

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
        """``n`` codes from the mixture, float32 of shape (n, dim), drawn on the CPU (``generator`` makes them
        repeatable) and moved to ``device`` (default: the prior's)."""
        weights = self.log_weights().exp().cpu()
        c = torch.multinomial(weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator)
        std = (0.5 * self.component_logvars()).exp().cpu()
        z = self.means.detach().float().cpu()[c] + eps * std[c]
        return z.to(self.means.device if device is None else device)

    @property
    def mean(self) -> torch.Tensor:
        """The mixture's mean per dimension, sum_c pi_c m_c, shape (dim,)."""
        with torch.no_grad():
            return self.log_weights().exp() @ self.means.float()

    @property
    def stddev(self) -> torch.Tensor:
        """The mixture's standard deviation per dimension (within- plus between-component variance), shape (dim,)."""
        with torch.no_grad():
            pi, m = self.log_weights().exp(), self.means.float()
            second = pi @ (self.component_logvars().exp() + m.pow(2))
            return (second - (pi @ m).pow(2)).clamp_min(0).sqrt()


__all__ = ["StandardNormal", "MixturePrior", "COMPONENT_LOGVAR_MIN", "COMPONENT_LOGVAR_MAX"]
