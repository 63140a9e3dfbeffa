"""The semi-supervised convolutional VAE (family ``conv-m2``): Kingma et al.'s M2 on images.

The ConvVAE's convolutional trunk feeds three heads: the classifier q(y | x), the encoder
q(z | x, y) (the trunk's features with the class, one-hot) and the decoder p(x | y, z) (the code
with the class). A batch's rows with a label (``batch["labels"] >= 0``) contribute

    L(x, y) = recon(x | y, z) + beta * KL(q(z | x, y) || N(0, I)) + alpha * CE(q(y | x), y)

and the others the class marginalised exactly (one decoder pass per class),

    U(x) = sum_y q(y | x) [recon(x | y, z) + beta * KL] + sum_y q(y | x) log q(y | x),

averaged over the batch (the constant log K of the uniform class prior is left out). Kingma et
al. weight the cross-entropy by 0.1 N on the objective summed over the data set, which is
``alpha = 0.1 N / N_labelled`` here (10 with 1 % of the images labelled). The
reparameterisation noise of a row is the same for every class it is tried with.

The embedding (``encode``/``embed``, what ``cvae extract`` writes) is the mean of q(z | x) =
sum_y q(y | x) q(z | x, y), a mixture; its log-variance is that of the mixture (moments matched).
``class_probabilities(x)`` is q(y | x). ``decode(z)`` without a class uses the uniform class
vector (1/K each), so ``decode_mean`` and ``cvae show`` still draw something well defined.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Dict, Mapping, Optional

import torch
from torch import nn
from torch.nn import functional as F

from .errors import ConfigError
from .model import LOGVAR_MAX, LOGVAR_MIN, ConvVAE, VAEConfig, VAEOutput, to_unit_float
from .noise import keyed_normal


@dataclass(frozen=True)
class M2VAEConfig(VAEConfig):
    """A :class:`~cvae_features.model.VAEConfig` plus the class head.

    Parameters
    ----------
    n_classes : int, default=10
        Number of classes (labels 0 .. n_classes - 1; -1 marks an unlabelled image).
    alpha : float, default=10.0
        Weight of a labelled image's cross-entropy (Kingma et al.'s 0.1 N / N_labelled: 10 at 1 % labelled).
    classifier_hidden : int, default=256
        Width of the classifier's hidden layer.
    """

    n_classes: int = 10
    alpha: float = 10.0
    classifier_hidden: int = 256

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.n_classes, bool) or not isinstance(self.n_classes, int) or not 2 <= self.n_classes <= 10_000:
            raise ConfigError(f"invalid n_classes={self.n_classes!r}: expected an integer from 2 to 10000")
        if not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha) or self.alpha < 0:
            raise ConfigError(f"invalid alpha={self.alpha!r}: expected a finite number >= 0")
        if isinstance(self.classifier_hidden, bool) or not isinstance(self.classifier_hidden, int) \
                or not 1 <= self.classifier_hidden <= 65_536:
            raise ConfigError(f"invalid classifier_hidden={self.classifier_hidden!r}: expected an integer from 1 "
                              "to 65536")
        object.__setattr__(self, "alpha", float(self.alpha))


@dataclass
class M2Output(VAEOutput):
    """:class:`~cvae_features.model.VAEOutput` plus the class terms, per image (n,): ``neg_entropy``
    (sum_y q log q for an unlabelled image, 0 for a labelled one) and ``class_ce`` (the cross-entropy
    of a labelled image, 0 for an unlabelled one), weighted 1 and ``alpha``; ``logits`` (n, K)."""

    neg_entropy_per_sample: Optional[torch.Tensor] = None
    class_ce_per_sample: Optional[torch.Tensor] = None
    alpha: float = 0.0
    logits: Optional[torch.Tensor] = dataclasses.field(default=None, repr=False)

    def terms(self) -> Dict[str, torch.Tensor]:
        return {name: values.mean() for name, values in self.per_sample_terms().items()}

    def per_sample_terms(self) -> Dict[str, torch.Tensor]:
        return {"recon": self.recon_per_sample, "kl": self.kl_per_sample,
                "neg_entropy": self.neg_entropy_per_sample, "class_ce": self.class_ce_per_sample}

    def term_weights(self) -> Dict[str, float]:
        return {"recon": 1.0, "kl": self.beta, "neg_entropy": 1.0, "class_ce": self.alpha}


class ConvM2(ConvVAE):
    """Kingma et al.'s M2 with the ConvVAE's convolutional encoder and decoder (family ``conv-m2``)."""

    arch = "conv-m2"
    config_class = M2VAEConfig

    def __init__(self, config: Optional[M2VAEConfig] = None, **overrides):
        config = self.family_config(config, overrides)
        super().__init__(config)
        k, latent, flat = config.n_classes, config.latent_dim, self.to_latent.in_features
        self.to_latent = nn.Linear(flat + k, 2 * latent)
        self.from_latent = nn.Linear(latent + k, flat)
        self.classifier = nn.Sequential(nn.Linear(flat, config.classifier_hidden), nn.SiLU(),
                                        nn.Linear(config.classifier_hidden, k))

    # -- the heads ------------------------------------------------------------
    def _posterior(self, h: torch.Tensor, y: torch.Tensor):
        mu, logvar = self.to_latent(torch.cat([h, y.to(h.dtype)], 1)).chunk(2, dim=1)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Raw decoder output for codes z and class vectors y (n, K) (one-hot or probabilities; None: 1/K each)."""
        if y is None:
            y = torch.full((z.shape[0], self.config.n_classes), 1.0 / self.config.n_classes, device=z.device)
        h = F.silu(self.from_latent(torch.cat([z, y.to(z.dtype)], 1))).view(-1, *self._bottom)
        return self.decoder(h)

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(to_unit_float(x)))

    @torch.no_grad()
    def class_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """q(y | x), shape (n, n_classes), in eval mode."""
        was_training = self.training
        self.eval()
        try:
            return F.softmax(self.class_logits(x), dim=1)
        finally:
            self.train(was_training)

    def encode(self, x: torch.Tensor):
        """Mean and log-variance of q(z | x) = sum_y q(y | x) q(z | x, y) (the mixture's moments), each (n, latent)."""
        h = self.encoder(to_unit_float(x))
        q = F.softmax(self.classifier(h), dim=1)
        mu_y, logvar_y, _ = self._class_posteriors(h)
        return self._mixture(mu_y, logvar_y, q)

    def _class_posteriors(self, h):
        """q(z | x, y) for every row and class: mean and log-variance (n * K, latent), row-major, and the
        one-hot class rows (n * K, K) they were computed with."""
        k = self.config.n_classes
        classes = torch.eye(k, device=h.device, dtype=h.dtype).repeat(h.shape[0], 1)
        mu_y, logvar_y = self._posterior(h.repeat_interleave(k, 0), classes)
        return mu_y, logvar_y, classes

    def _mixture(self, mu_y, logvar_y, q):
        """Mean and log-variance of sum_y q_y N(mu_y, var_y) from the per-class posteriors (n * K, latent)."""
        k = self.config.n_classes
        mu_y, var_y = mu_y.view(-1, k, mu_y.shape[1]), logvar_y.exp().view(-1, k, logvar_y.shape[1])
        w = q.unsqueeze(2)
        mu = (w * mu_y).sum(1)
        var = (w * (var_y + mu_y ** 2)).sum(1) - mu ** 2
        return mu, var.clamp_min(math.exp(LOGVAR_MIN)).log().clamp(LOGVAR_MIN, LOGVAR_MAX)

    # -- the objective -----------------------------------------------------------
    def loss(self, batch: Mapping[str, torch.Tensor], beta: Optional[float] = None) -> M2Output:
        """The M2 loss of a batch (see the module notes); labels -1 are unlabelled rows."""
        key = batch.get("noise_key")
        noise = None if key is None or not self.training else \
            keyed_normal(key, batch["index"], self.config.latent_dim)
        return self._elbo(batch["images"], beta, noise, batch.get("labels"), batch.get("inputs"))

    def _elbo(self, x, beta, noise=None, labels=None, inputs=None) -> M2Output:
        x = to_unit_float(x)
        n, k = x.shape[0], self.config.n_classes
        labels = torch.full((n,), -1, dtype=torch.int64, device=x.device) if labels is None else labels
        if labels.numel() and int(labels.max()) >= k:
            raise ConfigError(f"conv-m2: label {int(labels.max())} for a model of {k} classes (0..{k - 1})")
        b = self.config.beta if beta is None else beta
        h = self.encoder(x if inputs is None else to_unit_float(inputs))
        logits = self.classifier(h)
        log_q = F.log_softmax(logits.float(), dim=1)
        q = log_q.exp()
        if noise is None and self.training:
            noise = torch.randn(n, self.config.latent_dim, device=x.device)
        lab = labels >= 0
        # every row with every class (labelled rows need only theirs, but one pass keeps the code plain)
        mu_y, logvar_y, classes = self._class_posteriors(h)
        z = mu_y if noise is None else mu_y + noise.to(mu_y.dtype).repeat_interleave(k, 0) * (0.5 * logvar_y).exp()
        out = self.decode(z, classes)
        recon_y = self.reconstruction_nll(out.float(), x.repeat_interleave(k, 0)).view(n, k)
        kl_y = self.prior.kl(mu_y, logvar_y).view(n, k)
        onehot = F.one_hot(labels.clamp_min(0), k).to(q.dtype)
        weight = torch.where(lab.unsqueeze(1), onehot, q)  # labelled: their class; unlabelled: q(y | x)
        recon = (weight * recon_y).sum(1)
        kl = (weight * kl_y).sum(1)
        neg_entropy = torch.where(lab, torch.zeros_like(recon), (q * log_q).sum(1))
        class_ce = torch.where(lab, -(onehot * log_q).sum(1), torch.zeros_like(recon))
        loss = (recon + b * kl + neg_entropy + self.config.alpha * class_ce).mean()
        mu, logvar = self._mixture(mu_y, logvar_y, torch.where(lab.unsqueeze(1), onehot, q.detach()))
        chosen = weight.argmax(1)
        decoder_out = out.view(n, k, *out.shape[1:])[torch.arange(n, device=x.device), chosen]
        return M2Output(loss, recon.mean(), kl.mean(), mu, logvar, recon, kl, decoder_out, b,
                        neg_entropy_per_sample=neg_entropy, class_ce_per_sample=class_ce, alpha=self.config.alpha,
                        logits=logits)

    def forward(self, x: torch.Tensor, beta: Optional[float] = None) -> M2Output:
        return self._elbo(x, beta)

    @torch.no_grad()
    def scores(self, x: torch.Tensor) -> dict:
        """Per-image scores in eval mode (z = μ of each class): ``recon_error`` = sum_y q(y | x) recon(x | y);
        ``neg_elbo`` the marginal bound with β = 1: that plus sum_y q KL + sum_y q log q + log K."""
        was_training = self.training
        self.eval()
        try:
            out = self._elbo(x, 1.0)
        finally:
            self.train(was_training)
        q = F.softmax(out.logits.float(), dim=1)
        entropy_part = (q * q.clamp_min(1e-30).log()).sum(1)
        return {"recon_error": out.recon_per_sample,
                "neg_elbo": out.recon_per_sample + out.kl_per_sample + entropy_part + math.log(self.config.n_classes),
                "mu": out.mu, "logvar": out.logvar}


__all__ = ["M2VAEConfig", "ConvM2", "M2Output"]
