"""The convolutional VAE (the default model family, ``conv-vae``): its configuration and the network.

``ConvVAE.loss`` (on a batch dict; ``forward`` on images) is the training path
(it returns a :class:`VAEOutput`); the KL term refers to ``model.prior``;
``ConvVAE.embed`` is the feature path (posterior mean μ, eval mode, no grad).
Model files are written and read by :mod:`cvae_features.modelfile`; the family
registry is :mod:`cvae_features.families`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Literal, Mapping, Optional, Tuple, get_args

import torch
from torch import nn
from torch.nn import functional as F

from .errors import ConfigError
from .modelfile import (MODEL_FILE_FORMAT, MODEL_FILE_VERSION, MODEL_FILENAME, check_state_dict,
                        first_non_finite, read_torch_file)
from .modelfile import fingerprint_state as _fingerprint_state
from .modelfile import model_fingerprint, model_from_state, save_model
from .noise import keyed_normal
from .priors import StandardNormal

Likelihood = Literal["bernoulli", "gaussian"]
_DEFAULT_WIDTHS = (32, 64, 128, 256, 256, 256)
#: The encoder's log-variance is clamped to this range: exp(logvar) stays finite, and so do the KL and its gradient.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0
#: Floor of the gaussian likelihood's learned log-variance: the squared error is never divided by ~0.
LOG_SIGMA2_MIN = -9.0


def _depth_for(image_size: int) -> int:
    """Number of stride-2 levels so that the smallest feature map is at most 4x4."""
    depth, size = 0, image_size
    while size > 4:
        size = math.ceil(size / 2)
        depth += 1
    return max(depth, 1)


@dataclass(frozen=True)
class VAEConfig:
    """Configuration of a :class:`ConvVAE`, validated when it is built.

    Parameters
    ----------
    image_size : int, default=28
        Side of the square input image, 8 to 256.
    channels : int, default=1
        1 (grayscale) or 3 (RGB).
    latent_dim : int, default=256
        Width of the latent code (and of the embedding), 1 to 4096.
    widths : tuple of int or None, default=None
        Channels of each encoder level (the decoder mirrors them). ``None``
        derives one width per level from the image size (32, 64, 128, 256...).
    likelihood : {"bernoulli", "gaussian"}, default="bernoulli"
        Pixel likelihood; "gaussian" learns one global variance.
    beta : float, default=0.05
        Weight of the KL term (β-VAE), >= 0.
    convs_per_level : int, default=1
        Convolutions per encoder/decoder level (1 to 4); more is deeper.
    batch_norm : bool, default=False
        Batch normalisation after each convolution.
    """

    image_size: int = 28
    channels: int = 1
    latent_dim: int = 256
    widths: Optional[Tuple[int, ...]] = None
    likelihood: Likelihood = "bernoulli"
    beta: float = 0.05
    convs_per_level: int = 1
    batch_norm: bool = False

    def __post_init__(self):
        def bad(name, value, expected):
            raise ConfigError(f"invalid {name}={value!r}: expected {expected}")

        if not isinstance(self.image_size, int) or not 8 <= self.image_size <= 256:
            bad("image_size", self.image_size, "an integer from 8 to 256")
        if self.channels not in (1, 3):
            bad("channels", self.channels, "1 or 3")
        if not isinstance(self.latent_dim, int) or not 1 <= self.latent_dim <= 4096:
            bad("latent_dim", self.latent_dim, "an integer from 1 to 4096")
        if self.likelihood not in get_args(Likelihood):
            bad("likelihood", self.likelihood, "'bernoulli' or 'gaussian'")
        if not isinstance(self.beta, (int, float)) or not math.isfinite(self.beta) or self.beta < 0:
            bad("beta", self.beta, "a finite number >= 0")
        if not isinstance(self.convs_per_level, int) or not 1 <= self.convs_per_level <= 4:
            bad("convs_per_level", self.convs_per_level, "an integer from 1 to 4")
        if self.widths is not None:
            widths = tuple(self.widths)
            if len(widths) != self.depth or not all(isinstance(w, int) and 1 <= w <= 2048 for w in widths):
                bad("widths", self.widths,
                    f"{self.depth} integers from 1 to 2048 (one per level for image_size={self.image_size})")
            object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "beta", float(self.beta))

    @property
    def depth(self) -> int:
        """Number of stride-2 levels in the encoder (and decoder)."""
        return _depth_for(self.image_size)

    @property
    def level_widths(self) -> Tuple[int, ...]:
        """The widths actually used, one per level."""
        return self.widths if self.widths is not None else _DEFAULT_WIDTHS[: self.depth]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["widths"] = list(self.widths) if self.widths is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "VAEConfig":
        d = dict(check_config_keys(cls, d, "model config"))
        if d.get("widths") is not None:
            d["widths"] = tuple(d["widths"])
        return cls(**d)


def check_config_keys(cls, d: dict, what: str) -> dict:
    """``d`` unchanged if every key is a field of the dataclass ``cls``; ConfigError naming the others."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown {what} keys {unknown}: expected some of {sorted(known)}")
    return d


@dataclass
class VAEOutput:
    """What :meth:`ConvVAE.loss` (and :meth:`ConvVAE.forward`) returns for a batch of n images.

    ``loss``, ``recon`` and ``kl`` are batch means (scalars); ``recon_per_sample``
    and ``kl_per_sample`` have shape (n,); ``mu`` and ``logvar`` (n, latent_dim);
    ``decoder_out`` (n, C, H, W) holds logits (bernoulli) or means (gaussian);
    ``beta`` is the KL weight the loss used.

    The training loop reads only ``loss`` and the three methods below, which every
    model family's output offers: ``loss`` is the sum of each term's batch mean
    times its weight, and the terms are logged as ``train_<name>`` / ``val_<name>``.
    """

    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    recon_per_sample: torch.Tensor
    kl_per_sample: torch.Tensor
    decoder_out: torch.Tensor = field(repr=False)
    beta: Optional[float] = None

    def terms(self) -> Dict[str, torch.Tensor]:
        """The loss's parts as batch means (0-d tensors), by name: recon, kl."""
        return {"recon": self.recon, "kl": self.kl}

    def per_sample_terms(self) -> Dict[str, torch.Tensor]:
        """The loss's parts per sample (shape (n,)), by the names of :meth:`terms`."""
        return {"recon": self.recon_per_sample, "kl": self.kl_per_sample}

    def term_weights(self) -> Dict[str, float]:
        """The weight of each term in ``loss``: 1 for recon, beta for kl."""
        return {"recon": 1.0, "kl": self.beta}


def _conv_block(c_in, c_out, stride, batch_norm, transpose=False, output_padding=0):
    if transpose:
        conv = nn.ConvTranspose2d(c_in, c_out, 3, stride=stride, padding=1,
                                  output_padding=output_padding, bias=not batch_norm)
    else:
        conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=not batch_norm)
    layers = [conv]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.SiLU())
    return layers


def to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images in 0..255 become float32 in [0, 1]; float input is returned as float32."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float()


class ConvVAE(nn.Module):
    """A convolutional variational auto-encoder whose posterior mean is the embedding.

    Parameters
    ----------
    config : VAEConfig or None
        The architecture; ``None`` uses ``VAEConfig()``.
    **overrides
        Fields of ``VAEConfig`` to build the config from, e.g.
        ``ConvVAE(image_size=32, channels=3)``.
    """

    arch = "conv-vae"  # its name in the model-family registry (cvae_features.families)
    config_class = VAEConfig
    accepts_inputs = True  # loss() encodes batch["inputs"] when given (training-time augmentation)

    def __init__(self, config: Optional[VAEConfig] = None, **overrides):
        super().__init__()
        config = self.family_config(config, overrides)
        self.config = config
        widths = config.level_widths
        bn = config.batch_norm

        sizes = [config.image_size]
        for _ in range(config.depth):
            sizes.append(math.ceil(sizes[-1] / 2))
        self._sizes = sizes
        self._bottom = (widths[-1], sizes[-1], sizes[-1])
        flat = widths[-1] * sizes[-1] * sizes[-1]

        enc, c = [], config.channels
        for w in widths:
            enc += _conv_block(c, w, 2, bn)
            for _ in range(config.convs_per_level - 1):
                enc += _conv_block(w, w, 1, bn)
            c = w
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        self.to_latent = nn.Linear(flat, 2 * config.latent_dim)

        self.from_latent = nn.Linear(config.latent_dim, flat)
        dec = []
        for level in reversed(range(config.depth)):
            c_in, c_out = widths[level], widths[max(level - 1, 0)]
            target = sizes[level]
            dec += _conv_block(c_in, c_out, 2, bn, transpose=True, output_padding=1 - target % 2)
            for _ in range(config.convs_per_level - 1):
                dec += _conv_block(c_out, c_out, 1, bn)
        dec.append(nn.Conv2d(widths[0], config.channels, 3, padding=1))
        self.decoder = nn.Sequential(*dec)
        if config.likelihood == "gaussian":
            self.log_sigma2 = nn.Parameter(torch.zeros(()))
        # A plain object, not a module: the prior has no parameters and adds no state_dict keys.
        self.prior = StandardNormal(config.latent_dim)

    @classmethod
    def family_config(cls, config, overrides: dict):
        """``config`` (None: the defaults) with ``overrides`` applied; ConfigError unless it is the family's
        ``config_class`` (or a subclass)."""
        if config is None:
            config = cls.config_class(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        if not isinstance(config, cls.config_class):
            raise ConfigError(f"{cls.arch} takes a config of type {cls.config_class.__name__}, "
                              f"not {type(config).__name__}")
        return config

    # -- the two halves -------------------------------------------------
    def encode(self, x: torch.Tensor):
        """Posterior parameters (mu, logvar), each of shape (n, latent_dim)."""
        h = self.to_latent(self.encoder(to_unit_float(x)))
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw decoder output (n, C, H, W): logits (bernoulli) or means (gaussian)."""
        h = F.silu(self.from_latent(z)).view(-1, *self._bottom)
        return self.decoder(h)

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """Expected image in [0, 1] for latent codes z, shape (n, C, H, W)."""
        out = self.decode(z)
        return torch.sigmoid(out) if self.config.likelihood == "bernoulli" else out.clamp(0, 1)

    def reconstruction_nll(self, decoder_out: torch.Tensor, x: torch.Tensor,
                           weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Negative log-likelihood of x under the decoder output, summed per image: shape (n,).

        ``weight`` (broadcast to x) multiplies each pixel's term; 0/1 weights sum over a subset of pixels.
        """
        if self.config.likelihood == "bernoulli":
            nll = F.binary_cross_entropy_with_logits(decoder_out, x, reduction="none")
        else:
            log_s2 = self.log_sigma2.clamp(min=LOG_SIGMA2_MIN)
            nll = 0.5 * ((x - decoder_out) ** 2 / log_s2.exp() + log_s2 + math.log(2 * math.pi))
        if weight is not None:
            nll = nll * weight
        return nll.flatten(1).sum(1)

    # -- training path ----------------------------------------------------
    def loss(self, batch: Mapping[str, torch.Tensor], beta: Optional[float] = None) -> VAEOutput:
        """The training loss of a batch and its parts; samples z in train mode, uses z = mu in eval mode.

        Parameters
        ----------
        batch : dict
            ``{"images": (n, C, H, W) uint8 or float in [0, 1], "labels": int64 (n,) with -1 for
            unknown, "index": int64 (n,), "noise_key": 0-d int64 (optional), "inputs": float (n, C, H, W)
            (optional)}``, as the training loop builds it. With ``inputs`` (perturbed images, see
            :mod:`cvae_features.augment`) the encoder sees them and the decoder is scored against
            ``images``. With ``noise_key`` the reparameterisation noise of each image is
            :func:`~cvae_features.noise.keyed_normal` of (noise_key, index): the same whatever batch
            or process the image is in; without it, ``torch.randn``.
        beta : float or None
            KL weight for this step (β warm-up); ``None`` uses ``config.beta``.
        """
        key = batch.get("noise_key")
        noise = None if key is None or not self.training else \
            keyed_normal(key, batch["index"], self.config.latent_dim)
        return self._elbo(batch["images"], beta, noise, batch.get("inputs"))

    def forward(self, x: torch.Tensor, beta: Optional[float] = None) -> VAEOutput:
        """:meth:`loss` of the images ``x`` alone (a tensor of shape (n, C, H, W)): the same output."""
        return self._elbo(x, beta)

    def _elbo(self, x: torch.Tensor, beta: Optional[float], noise: Optional[torch.Tensor] = None,
              inputs: Optional[torch.Tensor] = None) -> VAEOutput:
        x = to_unit_float(x)
        mu, logvar = self.encode(x if inputs is None else inputs)
        if self.training:
            eps = torch.randn_like(mu) if noise is None else noise.to(mu.dtype)
            z = mu + eps * (0.5 * logvar).exp()
        else:
            z = mu
        out = self.decode(z)
        recon = self.reconstruction_nll(out.float(), x)
        kl = self.loss_prior.kl(mu, logvar)  # float32 even under autocast
        b = self.config.beta if beta is None else beta
        loss = (recon + b * kl).mean()
        return VAEOutput(loss, recon.mean(), kl.mean(), mu, logvar, recon, kl, out, b)

    @property
    def loss_prior(self):
        """The prior the loss's KL term refers to: ``prior`` (a family may use another for a while)."""
        return self.prior

    # -- feature path -------------------------------------------------------
    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding μ(x), shape (n, latent_dim), computed in eval mode without gradients."""
        was_training = self.training
        self.eval()
        try:
            return self.encode(x)[0]
        finally:
            self.train(was_training)

    @torch.no_grad()
    def scores(self, x: torch.Tensor) -> dict:
        """Per-image anomaly scores in eval mode (z = μ, so deterministic), each of shape (n,).

        ``recon_error``: the reconstruction negative log-likelihood; ``neg_elbo``: that plus the KL
        term with β = 1. Also returns ``mu`` and ``logvar`` from the same encoder pass.
        """
        was_training = self.training
        self.eval()
        try:
            out = self(x)
        finally:
            self.train(was_training)
        return {"recon_error": out.recon_per_sample, "neg_elbo": out.recon_per_sample + out.kl_per_sample,
                "mu": out.mu, "logvar": out.logvar}

    # -- identity and files ---------------------------------------------------
    def fingerprint(self) -> str:
        """A short hash of the config and every weight: equal fingerprints mean equal models."""
        return model_fingerprint(self)

    def save(self, path) -> Path:
        """Write the model file (weights + config + fingerprint) atomically; returns its path."""
        return save_model(self, path)

    @classmethod
    def from_state(cls, config: dict, state_dict: dict, source=None) -> "ConvVAE":
        """Build a model from a config dict and a state dict (as stored in model files and stores).

        Raises ModelError (one line, prefixed with ``source`` when given) for a config that is not a
        valid VAEConfig, a state dict that is not a dict of tensors, weights that do not fit the
        config (names or shapes), or weights holding NaN or infinite values.
        """
        return model_from_state(cls.arch, config, state_dict, source=source)


def fingerprint_state(config: VAEConfig, state_dict: dict) -> str:
    """The fingerprint of a ``ConvVAE`` with this config and these weights (see :func:`modelfile.fingerprint_state`)."""
    return _fingerprint_state(ConvVAE.arch, config.to_dict(), state_dict)


def resolve_device(name: str) -> torch.device:
    """``'auto'`` (CUDA when available, else CPU), ``'cpu'``, ``'cuda'`` or ``'cuda:N'`` -> a torch device.

    Raises ConfigError for a malformed name or for CUDA on a machine without it.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"invalid device={name!r}: expected 'auto', 'cpu' or 'cuda[:N]'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"invalid device={name!r}: CUDA is not available here (use 'cpu' or 'auto')")
    return device


def load_model(path):
    """The model in a run directory, a model file or a store carrying weights: :func:`cvae_features.resolve.load_model`."""
    from .resolve import load_model as _load_model

    return _load_model(path)


def count_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


__all__ = ["VAEConfig", "VAEOutput", "ConvVAE", "load_model", "resolve_device", "fingerprint_state", "to_unit_float",
           "count_parameters", "Likelihood", "check_state_dict", "first_non_finite", "read_torch_file",
           "MODEL_FILE_FORMAT", "MODEL_FILE_VERSION", "MODEL_FILENAME"]
