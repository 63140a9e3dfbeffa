"""Kingma et al.'s M2 semi-supervised VAE (2014) on feature vectors: the M1+M2 few-label method.

M2 is a generative model of a feature vector x given its class y and a latent code z,
p(x | y, z) p(z) p(y) (Gaussian x, N(0, I) z, uniform y), with two inference networks:
the classifier q(y | x) and the encoder q(z | x, y). It is trained on labelled and
unlabelled rows together by minimising, per row,

- labelled:   L(x, y) = -log p(x | y, z) + KL(q(z | x, y) || p(z)) - log p(y)  (one z sample);
- unlabelled: U(x) = sum_y q(y | x) L(x, y) - H(q(y | x))  (the class marginalised exactly);
- plus the classifier's cross-entropy on the labelled rows, weighted ``alpha * N / N_labelled``
  (Kingma et al.: alpha = 0.1).

Each step averages L over a batch of labelled rows and U over a batch of unlabelled rows and
adds the two means, as common implementations of M2 do: the few labelled rows weigh as much as
the many unlabelled ones (weighting each row alike let the unlabelled rows pull the classes
away from the labels: on digits with 3 labels a class, 0.55-0.59 test accuracy against 0.75-0.78
with the balanced batches). Classes come from ``argmax_y q(y | x)``.

"M1+M2": the inputs are a first model's codes; here the encoder means μ of a feature store
(the fewshot probe's ``m2`` method, :mod:`cvae_features.probes.fewshot`). Before fitting, the
rows are projected on their first ``n_components`` principal axes (fitted on the labelled and
unlabelled rows: no labels involved) and scaled by one number, so that the Gaussian decoder
models a few informative directions rather than hundreds of noisy ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .errors import ConfigError, TrainingError
from .model import LOGVAR_MAX, LOGVAR_MIN  # the encoder's log-variance range, as in the ConvVAE

#: Floor of the decoder Gaussian's log standard deviation (sigma >= ~0.011): its terms stay finite.
LOG_SIGMA_MIN = -4.5


@dataclass(frozen=True)
class M2Config:
    """Settings of :func:`fit_m2` (the defaults were compared on a validation split of Fashion-MNIST
    training rows: benchmarks/fashion_mnist_m2.py).

    Parameters
    ----------
    n_components : int, default=50
        Principal axes kept from the inputs (capped by the rows and columns); 0 keeps the inputs as they are.
    hidden : int, default=128
        Width of the two hidden layers of each network (256 scored 0.4 points higher on the
        validation split, at three times the time).
    latent_dim : int, default=8
        Width of z. A small z leaves the class y to carry what separates the rows: with a wide z
        the decoder can ignore y and the unlabelled term then only pushes q(y | x) towards uniform.
    alpha : float, default=0.1
        The labelled rows' cross-entropy is weighted ``alpha * N / N_labelled`` (N: all rows).
    steps : int, default=2000
        Optimiser steps (Adam).
    batch_size : int, default=128
        Unlabelled rows per step.
    labelled_batch : int, default=64
        Labelled rows per step (drawn with replacement, capped at the labelled rows).
    lr : float, default=1e-3
    warmup_steps : int, default=300
        The unlabelled term's weight rises linearly from 0 to 1 over these steps, so that the
        classifier has learnt from the labels before the unlabelled rows pull on it.
    """

    n_components: int = 50
    hidden: int = 128
    latent_dim: int = 8
    alpha: float = 0.1
    steps: int = 2000
    batch_size: int = 128
    labelled_batch: int = 64
    lr: float = 1e-3
    warmup_steps: int = 300

    def __post_init__(self):
        for name in ("hidden", "latent_dim", "steps", "batch_size", "labelled_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"M2 {name}: expected a positive integer, got {value!r}")
        for name in ("n_components", "warmup_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"M2 {name}: expected an integer >= 0, got {value!r}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha >= 0):
            raise ConfigError(f"M2 alpha: expected a finite number >= 0, got {self.alpha!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"M2 lr: expected a positive number, got {self.lr!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Softplus(), nn.Linear(hidden, hidden), nn.Softplus(),
                         nn.Linear(hidden, n_out))


class M2Net(nn.Module):
    """The three networks of M2 on vectors of width ``n_in`` with ``n_classes`` classes."""

    def __init__(self, n_in: int, n_classes: int, hidden: int = 128, latent_dim: int = 8):
        super().__init__()
        self.n_in, self.n_classes, self.latent_dim = int(n_in), int(n_classes), int(latent_dim)
        self.classifier = _mlp(n_in, hidden, n_classes)  # q(y | x): logits
        self.encoder = _mlp(n_in + n_classes, hidden, 2 * latent_dim)  # q(z | x, y): mean, log-variance
        self.decoder = _mlp(latent_dim + n_classes, hidden, n_in)  # p(x | y, z): mean
        self.log_sigma = nn.Parameter(torch.zeros(n_in))  # p(x | y, z): one log std per input column

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)

    def neg_elbo(self, x: torch.Tensor, y_onehot: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """L(x, y) per row: -log p(x | y, z) + KL(q(z | x, y) || N(0, I)) + log K, z = one reparameterised sample
        (``noise`` the standard normal draw, shape (n, latent_dim); drawn when None)."""
        mu, logvar = self.encoder(torch.cat([x, y_onehot], 1)).chunk(2, dim=1)
        logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        if noise is None:
            noise = torch.randn_like(mu)
        z = mu + noise * torch.exp(0.5 * logvar)
        mean = self.decoder(torch.cat([z, y_onehot], 1))
        log_sigma = self.log_sigma.clamp(min=LOG_SIGMA_MIN)
        nll = (0.5 * ((x - mean) / log_sigma.exp()) ** 2 + log_sigma + 0.5 * math.log(2 * math.pi)).sum(1)
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1.0 - logvar).sum(1)
        return nll + kl + math.log(self.n_classes)

    def unlabelled_loss(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """U(x) per row: sum_y q(y | x) L(x, y) - H(q(y | x)), every class tried (``noise`` shape (n, K, latent))."""
        n, k = x.shape[0], self.n_classes
        log_q = F.log_softmax(self.logits(x), dim=1)
        xs = x.repeat_interleave(k, dim=0)
        ys = F.one_hot(torch.arange(k, device=x.device).repeat(n), k).to(x.dtype)
        per_class = self.neg_elbo(xs, ys, None if noise is None else noise.reshape(n * k, -1)).view(n, k)
        q = log_q.exp()
        return (q * per_class).sum(1) + (q * log_q).sum(1)

    def objective(self, x_lab, y_lab, x_unl, *, alpha: float, n_lab: int, n_unl: int,
                  unlabelled_weight: float = 1.0) -> torch.Tensor:
        """The M2 objective of one step: mean L(labelled batch) + w * mean U(unlabelled batch)
        + alpha * (n_lab + n_unl) / n_lab * mean cross-entropy(labelled batch).

        ``n_lab`` / ``n_unl`` are the sizes of the whole labelled / unlabelled sets, ``w`` the
        unlabelled weight of the warm-up.
        """
        y1h = F.one_hot(y_lab, self.n_classes).to(x_lab.dtype)
        loss = self.neg_elbo(x_lab, y1h).mean()
        loss = loss + alpha * (n_lab + n_unl) / n_lab * F.cross_entropy(self.logits(x_lab), y_lab)
        if x_unl is not None and x_unl.shape[0] and unlabelled_weight > 0:
            loss = loss + unlabelled_weight * self.unlabelled_loss(x_unl).mean()
        return loss


class M2Classifier:
    """A fitted M2 (see :func:`fit_m2`): ``predict``, ``predict_proba``, ``classes_``, ``history``."""

    def __init__(self, net: M2Net, classes: np.ndarray, centre: np.ndarray, axes: np.ndarray | None, scale: float,
                 config: M2Config, history: list):
        self.net, self.classes_, self.config, self.history = net, classes, config, history
        self._centre, self._axes, self._scale = centre, axes, scale

    def transform(self, X) -> torch.Tensor:
        """Rows as the networks see them: centred, projected on the principal axes, scaled."""
        Z = np.asarray(X, dtype=np.float64) - self._centre
        if self._axes is not None:
            Z = Z @ self._axes
        return torch.as_tensor(Z / self._scale, dtype=torch.float32)

    def predict_proba(self, X) -> np.ndarray:
        self.net.eval()
        with torch.no_grad():
            return F.softmax(self.net.logits(self.transform(X)), dim=1).numpy().astype(np.float64)

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


def warmup_weight(step: int, warmup_steps: int) -> float:
    """The unlabelled term's weight at ``step`` (0-based): rises linearly from 0 to 1 over ``warmup_steps``."""
    return 1.0 if step >= warmup_steps else step / warmup_steps


def _projection(X: np.ndarray, n_components: int):
    centre = X.mean(axis=0)
    Xc = X - centre
    k = min(n_components, X.shape[0] - 1, X.shape[1])
    axes = None
    if n_components and k >= 1 and k < X.shape[1]:
        _, _, vt = np.linalg.svd(Xc, full_matrices=False)
        axes = vt[:k].T
        Xc = Xc @ axes
    scale = float(Xc.std())
    return centre, axes, scale if scale > 0 and math.isfinite(scale) else 1.0


def fit_m2(X_lab, y_lab, X_unl=None, config: M2Config | None = None, *, seed: int = 0) -> M2Classifier:
    """Fit M2 on labelled rows ``X_lab`` (labels ``y_lab``, any integers) and unlabelled rows ``X_unl``.

    Seeded: the same inputs and seed give the same model (one CPU thread count assumed). With no
    unlabelled rows it is a classifier regularised by the labelled rows' generative terms only.

    Raises
    ------
    ConfigError
        Fewer than 2 classes among the labels, labels not one per labelled row, or widths that differ.
    TrainingError
        The objective became NaN or infinite (the fit diverged: a smaller ``lr`` helps).
    """
    config = config or M2Config()
    X_lab = np.asarray(X_lab, dtype=np.float64)
    y_lab = np.asarray(y_lab)
    if X_lab.ndim != 2 or y_lab.shape != (X_lab.shape[0],):
        raise ConfigError(f"M2: expected labelled rows (n, d) and n labels, got {X_lab.shape} and {y_lab.shape}")
    X_unl = np.empty((0, X_lab.shape[1])) if X_unl is None else np.asarray(X_unl, dtype=np.float64)
    if X_unl.ndim != 2 or X_unl.shape[1] != X_lab.shape[1]:
        raise ConfigError(f"M2: unlabelled rows have shape {X_unl.shape}, expected (n, {X_lab.shape[1]})")
    if not (np.isfinite(X_lab).all() and np.isfinite(X_unl).all()):
        raise ConfigError("M2: the rows hold NaN or infinite values")
    classes, y_idx = np.unique(y_lab, return_inverse=True)
    if classes.size < 2:
        raise ConfigError(f"M2: the labelled rows hold {classes.size} class(es); at least 2 are needed")
    centre, axes, scale = _projection(np.vstack([X_lab, X_unl]), config.n_components)
    n_lab, n_unl = X_lab.shape[0], X_unl.shape[0]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        result = M2Classifier(None, classes, centre, axes, scale, config, [])
        x_lab, x_unl = result.transform(X_lab), result.transform(X_unl) if n_unl else None
        y_t = torch.as_tensor(y_idx, dtype=torch.long)
        net = M2Net(x_lab.shape[1], classes.size, config.hidden, config.latent_dim)
        opt = torch.optim.Adam(net.parameters(), lr=config.lr)
        lab_batch = min(config.labelled_batch, n_lab)
        order, pos = torch.randperm(n_unl, generator=gen) if n_unl else None, 0
        net.train()
        for step in range(config.steps):
            li = torch.randint(0, n_lab, (lab_batch,), generator=gen)
            xb = None
            if n_unl:
                if pos >= n_unl:
                    order, pos = torch.randperm(n_unl, generator=gen), 0
                xb = x_unl[order[pos:pos + config.batch_size]]
                pos += config.batch_size
            weight = warmup_weight(step, config.warmup_steps)
            loss = net.objective(x_lab[li], y_t[li], xb, alpha=config.alpha, n_lab=n_lab, n_unl=n_unl,
                                 unlabelled_weight=weight)
            if not torch.isfinite(loss):
                raise TrainingError(f"M2: the objective became {loss.item()} at step {step + 1} of {config.steps}: "
                                    f"the fit diverged; try a smaller lr (now {config.lr:g})")
            opt.zero_grad()
            loss.backward()
            opt.step()
            if (step + 1) % 100 == 0 or step + 1 == config.steps:
                result.history.append({"step": step + 1, "loss": float(loss.item())})
        net.eval()
        result.net = net
    return result


__all__ = ["M2Config", "M2Net", "M2Classifier", "fit_m2", "warmup_weight"]
