"""The mixture-prior VAE (family ``conv-vade``): VaDE (Jiang et al. 2017) on the ConvVAE, for clustering.

The ConvVAE whose prior is a :class:`~cvae_features.priors.MixturePrior` of ``n_clusters``
diagonal gaussians with learnable weights, means and variances. The loss is the ConvVAE's with
the KL term against the mixture (the Hershey-Olsen bound, which is VaDE's ELBO with q(c | x) at
its optimum); the cluster of an image is argmax_c p(c | z = μ(x)) (:meth:`ConvVaDE.cluster`,
``MixturePrior.assign``), so it can be read from a feature store's μ alone.

Initialisation. A mixture trained from a random start collapses onto few components, so VaDE
pretrains an auto-encoder and fits a GMM to its codes. Here that is one run, not two:

- the first ``pretrain_steps`` training steps (calls of ``loss`` in train mode) train the plain
  VAE against N(0, I), and the μ of their images go into a ring buffer of ``init_rows`` rows;
- after the last of them the mixture is set from those codes by a seeded k-means (k-means++
  start, Lloyd iterations) followed by EM of a diagonal GMM, in float64 on the CPU; from then
  on the KL term refers to the mixture. With ``pretrain_steps=0`` the mixture starts at its
  random means (drawn from the run's seeded generator) and trains from there.

Why this way: everything the schedule depends on (the step count, the buffer) is a model
buffer, so it is in the ``state_dict``: a checkpoint taken mid-pretraining resumes exactly, and
model files and stores carry it. The seed of the k-means start is the batch's ``noise_key``
(derived by the training loop from the run's seed and the epoch), so a run is repeatable.
Several processes (DistributedDataParallel) would each see different codes and fit different
mixtures, so a model with ``pretrain_steps > 0`` refuses to be built in a distributed run
(ConfigError); with ``pretrain_steps=0`` all state is in parameters and DDP keeps it in step.

Validation losses and ``scores`` use the prior in force at that step: N(0, I) during
pretraining, the mixture after.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional

import torch

from .errors import ConfigError
from .model import ConvVAE, VAEConfig, VAEOutput
from .noise import keyed_normal
from .priors import MixturePrior, StandardNormal

_KMEANS_ITERS, _EM_ITERS = 50, 30
_VAR_FLOOR = 1e-4  # of the codes' mean variance: a component fitted to near-identical codes keeps some width


@dataclass(frozen=True)
class VaDEConfig(VAEConfig):
    """A :class:`~cvae_features.model.VAEConfig` plus the mixture prior.

    Parameters
    ----------
    n_clusters : int, default=10
        Components of the mixture prior (the clusters), 2 to 1000.
    pretrain_steps : int, default=200
        Training steps against N(0, I) before the mixture is fitted to the codes seen (0: no
        pretraining, the mixture trains from its random start).
    init_rows : int, default=2048
        How many of the most recent pretraining codes the initial mixture is fitted to (a model
        buffer: it is saved with the weights). At least ``n_clusters``.
    """

    n_clusters: int = 10
    pretrain_steps: int = 200
    init_rows: int = 2048

    def __post_init__(self):
        super().__post_init__()

        def integer(name, low, high):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"invalid {name}={value!r}: expected an integer from {low} to {high}")

        integer("n_clusters", 2, 1000)
        integer("pretrain_steps", 0, 10_000_000)
        integer("init_rows", self.n_clusters, 1_000_000)


def fit_diagonal_gmm(x: torch.Tensor, k: int, generator: torch.Generator, *, kmeans_iters: int = _KMEANS_ITERS,
                     em_iters: int = _EM_ITERS):
    """A diagonal gaussian mixture of ``k`` components fitted to the rows of ``x`` (n, d), n >= k.

    k-means++ start drawn with ``generator``, Lloyd iterations, then EM; float64 on the CPU, so
    the result depends on ``x`` and the generator's state only. Returns (weights (k,), means (k, d),
    variances (k, d)), float64.
    """
    x = x.detach().to("cpu", torch.float64)
    n = x.shape[0]
    if n < k:
        raise ConfigError(f"cannot fit {k} mixture components to {n} codes: expected at least {k}")
    # k-means++: each next centre drawn with probability proportional to the squared distance to the nearest one
    centres = x[torch.randint(n, (1,), generator=generator)]
    d2 = torch.cdist(x, centres).pow(2).squeeze(1)
    for _ in range(1, k):
        weights = d2 if float(d2.sum()) > 0 else torch.ones(n, dtype=torch.float64)
        centres = torch.cat([centres, x[torch.multinomial(weights, 1, generator=generator)]])
        d2 = torch.minimum(d2, torch.cdist(x, centres[-1:]).pow(2).squeeze(1))
    for _ in range(kmeans_iters):
        nearest = torch.cdist(x, centres).argmin(1)
        counts = torch.bincount(nearest, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, nearest, x)
        moved = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
        if torch.equal(moved, centres):
            break
        centres = moved
    floor = _VAR_FLOOR * max(float(x.var(0, unbiased=False).mean()), 1e-12)
    resp = torch.nn.functional.one_hot(torch.cdist(x, centres).argmin(1), k).to(x.dtype)
    for step in range(em_iters + 1):
        # M step from the responsibilities (hard k-means ones first), then E step
        mass = resp.sum(0) + 1e-10
        weights = mass / n
        means = resp.T @ x / mass[:, None]
        variances = (resp.T @ x.pow(2) / mass[:, None] - means.pow(2)).clamp_min(floor)
        if step == em_iters:
            break
        log_joint = weights.log() - 0.5 * ((x[:, None, :] - means).pow(2) / variances + variances.log()
                                           + math.log(2 * math.pi)).sum(2)
        resp = torch.softmax(log_joint, 1)
    return weights, means, variances


class ConvVaDE(ConvVAE):
    """VaDE with the ConvVAE's encoder and decoder (family ``conv-vade``); ``model.prior`` is a MixturePrior."""

    arch = "conv-vade"
    config_class = VaDEConfig

    def __init__(self, config: Optional[VaDEConfig] = None, **overrides):
        config = self.family_config(config, overrides)
        if config.pretrain_steps and torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            raise ConfigError("conv-vade with pretrain_steps > 0 trains in one process only (each process would fit "
                              "its own mixture to its own codes): drop --nproc, or set --pretrain-steps 0 "
                              "(pretrain_steps=0)")
        super().__init__(config)
        self.prior = MixturePrior(config.n_clusters, config.latent_dim)
        self._pretrain_prior = StandardNormal(config.latent_dim)
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.int64))
        self.register_buffer("codes_seen", torch.zeros((), dtype=torch.int64))
        self.register_buffer("init_codes", torch.zeros(config.init_rows if config.pretrain_steps else 0,
                                                       config.latent_dim))

    @property
    def pretraining(self) -> bool:
        """True while the KL term still refers to N(0, I) (the first ``pretrain_steps`` steps)."""
        return int(self.steps_seen) < self.config.pretrain_steps

    def loss(self, batch: Mapping[str, torch.Tensor], beta: Optional[float] = None) -> VAEOutput:
        """The VAE loss of a batch, KL against N(0, I) while pretraining and the mixture after (see the module
        notes); in train mode a call is one training step."""
        key = batch.get("noise_key")
        noise = None if key is None or not self.training else \
            keyed_normal(key, batch["index"], self.config.latent_dim)
        return self._vade_elbo(batch["images"], beta, noise, key, batch.get("inputs"))

    def forward(self, x: torch.Tensor, beta: Optional[float] = None) -> VAEOutput:
        return self._vade_elbo(x, beta)

    def _vade_elbo(self, x, beta, noise=None, key=None, inputs=None) -> VAEOutput:
        out = self._elbo(x, beta, noise, inputs)
        if self.training:
            self._count_step(out.mu, key)
        return out

    @property
    def loss_prior(self):
        """N(0, I) while pretraining, the mixture after: the prior the KL term refers to now."""
        return self._pretrain_prior if self.pretraining else self.prior

    @torch.no_grad()
    def _count_step(self, mu: torch.Tensor, key) -> None:
        n_steps = self.config.pretrain_steps
        step = int(self.steps_seen)
        if step < n_steps:
            rows = self.init_codes.shape[0]
            where = (int(self.codes_seen) + torch.arange(mu.shape[0], device=mu.device)) % rows
            self.init_codes[where[-rows:]] = mu.detach().float()[-rows:]
            self.codes_seen += mu.shape[0]
        self.steps_seen += 1
        if step + 1 == n_steps:
            seed = int(key) if key is not None else 0
            self.fit_prior(self.init_codes[:min(int(self.codes_seen), self.init_codes.shape[0])],
                           torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def fit_prior(self, codes: torch.Tensor, generator: torch.Generator) -> None:
        """Set the mixture to a diagonal GMM fitted to ``codes`` (n, latent_dim) (:func:`fit_diagonal_gmm`)."""
        self.prior.set_components(*fit_diagonal_gmm(codes, self.config.n_clusters, generator))

    @torch.no_grad()
    def cluster_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """p(c | z = μ(x)) of each image, shape (n, n_clusters), in eval mode."""
        return self.prior.responsibilities(self.embed(x))

    @torch.no_grad()
    def cluster(self, x: torch.Tensor) -> torch.Tensor:
        """The cluster of each image, argmax_c p(c | z = μ(x)): int64 of shape (n,), in eval mode."""
        return self.prior.assign(self.embed(x))


__all__ = ["VaDEConfig", "ConvVaDE", "fit_diagonal_gmm"]
