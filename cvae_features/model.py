"""The convolutional VAE: its configuration, the network, and the model file.

``ConvVAE.loss`` (on a batch dict; ``forward`` on images) is the training path
(it returns a :class:`VAEOutput`); the KL term refers to ``model.prior``;
``ConvVAE.embed`` is the feature path (posterior mean μ, eval mode, no grad).
A model file is a plain dict of tensors and JSON-able values written with
``torch.save`` and read back with ``torch.load(weights_only=True)``, so loading
never unpickles arbitrary objects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Literal, Mapping, Optional, Tuple, get_args

import torch
from torch import nn
from torch.nn import functional as F

from ._version import __version__
from .errors import ConfigError, ModelError
from .priors import StandardNormal

Likelihood = Literal["bernoulli", "gaussian"]
MODEL_FILE_FORMAT = "cvae-model"
MODEL_FILE_VERSION = 1
MODEL_FILENAME = "model.pt"
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

    def __init__(self, config: Optional[VAEConfig] = None, **overrides):
        super().__init__()
        if config is None:
            config = VAEConfig(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
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
            unknown, "index": int64 (n,)}``, as the training loop builds it; the VAE reads only
            ``images``.
        beta : float or None
            KL weight for this step (β warm-up); ``None`` uses ``config.beta``.
        """
        return self._elbo(batch["images"], beta)

    def forward(self, x: torch.Tensor, beta: Optional[float] = None) -> VAEOutput:
        """:meth:`loss` of the images ``x`` alone (a tensor of shape (n, C, H, W)): the same output."""
        return self._elbo(x, beta)

    def _elbo(self, x: torch.Tensor, beta: Optional[float]) -> VAEOutput:
        x = to_unit_float(x)
        mu, logvar = self.encode(x)
        if self.training:
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        else:
            z = mu
        out = self.decode(z)
        recon = self.reconstruction_nll(out.float(), x)
        kl = self.prior.kl(mu, logvar)  # float32 even under autocast
        b = self.config.beta if beta is None else beta
        loss = (recon + b * kl).mean()
        return VAEOutput(loss, recon.mean(), kl.mean(), mu, logvar, recon, kl, out, b)

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

    # -- identity and files ---------------------------------------------------
    def fingerprint(self) -> str:
        """A short hash of the config and every weight: equal fingerprints mean equal models."""
        return fingerprint_state(self.config, self.state_dict())

    def save(self, path) -> Path:
        """Write the model file (weights + config + fingerprint) atomically; returns its path."""
        path = Path(path)
        if path.is_dir() or path.suffix == "":
            path = path / MODEL_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": MODEL_FILE_FORMAT,
            "format_version": MODEL_FILE_VERSION,
            "tool_version": __version__,
            "config": self.config.to_dict(),
            "fingerprint": self.fingerprint(),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }
        tmp = path.with_name(path.name + ".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def from_state(cls, config: dict, state_dict: dict, source=None) -> "ConvVAE":
        """Build a model from a config dict and a state dict (as stored in model files and stores).

        Raises ModelError (one line, prefixed with ``source`` when given) for a config that is not a
        valid VAEConfig, a state dict that is not a dict of tensors, weights that do not fit the
        config (names or shapes), or weights holding NaN or infinite values.
        """
        where = f"{source}: " if source is not None else ""
        if not isinstance(config, dict):
            raise ModelError(f"{where}the model config is of type {type(config).__name__}: expected a dict of "
                             "VAEConfig fields")
        try:
            cfg = VAEConfig.from_dict(config)
        except (ValueError, TypeError) as err:  # ConfigError is a ValueError
            raise ModelError(f"{where}invalid model config: {_first_line(err)}") from None
        check_state_dict(state_dict, source)
        model = cls(cfg)
        expected = model.state_dict()
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        if missing or unexpected:
            parts = ([f"missing {_some(missing)}"] if missing else []) + (
                [f"unexpected {_some(unexpected)}"] if unexpected else [])
            raise ModelError(f"{where}weights do not fit the model config: {'; '.join(parts)}")
        for name, ref in expected.items():
            if tuple(state_dict[name].shape) != tuple(ref.shape):
                raise ModelError(f"{where}weights do not fit the model config: tensor {name!r} has shape "
                                 f"{tuple(state_dict[name].shape)}, expected {tuple(ref.shape)}")
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as err:
            raise ModelError(f"{where}weights do not fit the model config: {_first_line(err)}") from None
        model.eval()
        return model


def check_state_dict(state_dict, source=None) -> None:
    """ModelError unless ``state_dict`` is a dict of tensors by name, every value finite.

    The message (one line, prefixed with ``source`` when given) names the first offending entry.
    """
    where = f"{source}: " if source is not None else ""
    if not isinstance(state_dict, dict):
        raise ModelError(f"{where}the weights are of type {type(state_dict).__name__}: expected a dict of tensors")
    for name, value in state_dict.items():
        if not isinstance(name, str):
            raise ModelError(f"{where}a weight is named {name!r} (of type {type(name).__name__}): expected "
                             "string names")
        if not isinstance(value, torch.Tensor):
            raise ModelError(f"{where}weight {name!r} is of type {type(value).__name__}: expected a tensor")
    bad = first_non_finite(state_dict)
    if bad is not None:
        name, n_bad, numel = bad
        raise ModelError(f"{where}tensor {name!r} holds non-finite values (NaN or inf in {n_bad} of {numel}); "
                         "these weights are unusable: retrain or use another model file")


def first_non_finite(state_dict: dict):
    """(name, number of non-finite values, size) of the first floating tensor holding NaN or inf, else None."""
    for name, t in state_dict.items():
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()):
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                return name, int((~finite).sum()), t.numel()
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _some(names, n: int = 3) -> str:
    shown = ", ".join(repr(k) for k in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def fingerprint_state(config: VAEConfig, state_dict: dict) -> str:
    """sha256 over the config JSON and every tensor (name, dtype, shape, bytes), 16 hex digits."""
    import json

    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


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


def load_model(path) -> ConvVAE:
    """Load a model from a model file, a run directory holding ``model.pt``, or a feature store carrying one.

    The file is read with ``torch.load(weights_only=True)``: anything but tensors and plain values is
    refused, never unpickled. Every way a file can be unusable is a one-line ModelError naming the file
    and the problem: missing, empty, truncated, not a torch file, holding other objects, not a cvae model
    file (or a training checkpoint), a newer or malformed format version, a missing or invalid config,
    weights that are not a dict of tensors or do not fit the config, a fingerprint mismatch, or weights
    holding NaN or infinite values.

    Raises
    ------
    ModelError
        If the path is missing or holds no loadable model.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model not found: {path} (expected a run directory, a {MODEL_FILENAME} file or a .h5 store)")
    if path.is_dir():
        candidate = path / MODEL_FILENAME
        if not candidate.exists():
            raise ModelError(f"no {MODEL_FILENAME} in run directory {path}")
        path = candidate
    if not path.is_file():
        raise ModelError(f"{path} is not a regular file: expected a {MODEL_FILENAME} model file")
    try:
        hdf5 = _is_hdf5(path)
    except OSError as err:
        raise ModelError(f"cannot read {path}: {err.strerror or _first_line(err)}") from None
    if hdf5:
        from .store import FeatureStore

        with FeatureStore(path) as store:
            return store.load_model()
    payload = read_torch_file(path, ModelError, "cvae model file")
    if not isinstance(payload, dict):
        raise ModelError(f"{path} is not a cvae model file: it holds a {type(payload).__name__}, not a dict")
    fmt = payload.get("format")
    if isinstance(fmt, str) and fmt == "cvae-checkpoint":
        raise ModelError(f"{path} is a training checkpoint, not a model file: pass the run directory or its "
                         f"{MODEL_FILENAME}")
    if not isinstance(fmt, str) or fmt != MODEL_FILE_FORMAT:
        raise ModelError(f"{path} is not a cvae model file (no format tag {MODEL_FILE_FORMAT!r})")
    version = payload.get("format_version", MODEL_FILE_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelError(f"{path} has format_version {version!r}: expected a positive integer "
                         "(damaged or not written by cvae-features)")
    if version > MODEL_FILE_VERSION:
        raise ModelError(
            f"{path} is model format version {version}, newer than this tool reads "
            f"({MODEL_FILE_VERSION}); upgrade cvae-features")
    for key in ("config", "state_dict"):
        if key not in payload:
            raise ModelError(f"{path} is a damaged cvae model file: it has no {key!r} entry")
    model = ConvVAE.from_state(payload["config"], payload["state_dict"], source=path)
    recorded = payload.get("fingerprint")
    if recorded is not None and not isinstance(recorded, str):
        raise ModelError(f"{path} is a damaged cvae model file: its fingerprint is of type "
                         f"{type(recorded).__name__}, not a string")
    if recorded and recorded != model.fingerprint():
        raise ModelError(f"{path}: weights do not match their recorded fingerprint (file damaged?)")
    return model


def read_torch_file(path: Path, error=ModelError, what: str = "cvae model file"):
    """``torch.load(path, weights_only=True)`` on the CPU; any failure is a one-line ``error`` naming the file.

    torch's own message is never passed on: for a file holding objects other than tensors and plain
    values it advises loading with unpickling allowed, which must never be done with an untrusted file.
    """
    try:
        if path.stat().st_size == 0:
            raise error(f"{path} is empty: not a {what}")
    except OSError as err:
        raise error(f"cannot read {path}: {err.strerror or _first_line(err)}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's text only picks the wording; it is never shown (it suggests unpickling the file).
        if "global" in str(err).lower():
            reason = "it holds Python objects other than tensors and plain values, which are refused, never unpickled"
        else:
            reason = "it is not a torch file of tensors and plain values"
    except RuntimeError as err:
        zip_damage = "zip" in str(err).lower() or "PytorchStreamReader" in str(err)
        reason = "it is damaged or truncated" if zip_damage else "torch cannot read it"
    except OSError as err:
        raise error(f"cannot read {path}: {err.strerror or _first_line(err)}") from None
    except Exception:  # torch raises many kinds (KeyError, EOFError, ValueError...) for a file it did not write
        reason = "it is truncated or not a torch file"
    raise error(f"{path} is not a {what} this tool can load safely: {reason}")


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == b"\x89HDF\r\n\x1a\n"


def count_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


__all__ = ["VAEConfig", "VAEOutput", "ConvVAE", "load_model", "resolve_device", "fingerprint_state", "to_unit_float",
           "count_parameters", "Likelihood", "check_state_dict", "first_non_finite", "read_torch_file"]
