"""Model files (``model.pt``) and model identity: one place that writes, reads and checks them.

A model file is a plain dict saved with ``torch.save`` and read with
``torch.load(weights_only=True)``: ``format = "cvae-model"``,
``format_version`` (2; version-1 files, which have no ``arch``, load as the
default family ``conv-vae``), ``tool_version``, ``arch`` (the model family,
see :mod:`cvae_features.families`), ``config``, ``fingerprint`` and
``state_dict``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import torch

from ._version import __version__
from .errors import ConfigError, ModelError
from .families import DEFAULT_ARCH, arch_of, get_model_family

MODEL_FILE_FORMAT = "cvae-model"
MODEL_FILE_VERSION = 2
MODEL_FILENAME = "model.pt"


def fingerprint_state(arch: str, config: dict, state_dict: dict) -> str:
    """sha256 over the family, the config JSON and every tensor (name, dtype, shape, bytes), 16 hex digits.

    The default family leaves its name out, so fingerprints of version-1 model files and stores
    (which had one family) keep their values.
    """
    h = hashlib.sha256()
    if arch != DEFAULT_ARCH:
        h.update(f"arch={arch};".encode())
    h.update(json.dumps(config, sort_keys=True).encode())
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


def model_fingerprint(model) -> str:
    """The fingerprint of a model of any registered family: equal fingerprints mean equal models."""
    return fingerprint_state(arch_of(model), model.config.to_dict(), model.state_dict())


def save_model(model, path) -> Path:
    """Write ``model`` to a model file atomically (a folder or suffix-less path gets ``model.pt``)."""
    path = Path(path)
    if path.is_dir() or path.suffix == "":
        path = path / MODEL_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": MODEL_FILE_FORMAT,
        "format_version": MODEL_FILE_VERSION,
        "tool_version": __version__,
        "arch": arch_of(model),
        "config": model.config.to_dict(),
        "fingerprint": model_fingerprint(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def model_from_state(arch, config, state_dict, source=None, fingerprint=None):
    """Build a model of family ``arch`` from a config dict and a state dict (as stored in files and stores).

    Raises ModelError (one line, prefixed with ``source`` when given) for an unknown family, a
    config that its config class refuses, a state dict that is not a dict of finite tensors,
    weights that do not fit the config (names or shapes), or, when ``fingerprint`` is given,
    weights that do not match it.
    """
    where = f"{source}: " if source is not None else ""
    if not isinstance(arch, str):
        raise ModelError(f"{where}the model family is {arch!r}: expected a name")
    try:
        cls = get_model_family(arch).load()
    except ConfigError as err:
        raise ModelError(f"{where}{err}") from None
    if not isinstance(config, dict):
        raise ModelError(f"{where}the model config is of type {type(config).__name__}: expected a dict of "
                         f"{cls.config_class.__name__} fields")
    try:
        cfg = cls.config_class.from_dict(config)
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
    if fingerprint is not None and model_fingerprint(model) != fingerprint:
        raise ModelError(f"{where}weights do not match their recorded fingerprint {fingerprint} (damaged?)")
    return model


def read_model_file(path: Path):
    """The model in a model file (``path`` is a file, not a folder); one-line ModelError otherwise."""
    payload = read_torch_file(path, ModelError, "cvae model file")
    if not isinstance(payload, dict):
        raise ModelError(f"{path} is not a cvae model file: it holds a {type(payload).__name__}, not a dict")
    fmt = payload.get("format")
    if isinstance(fmt, str) and fmt == "cvae-checkpoint":
        raise ModelError(f"{path} is a training checkpoint, not a model file: pass the run directory or its "
                         f"{MODEL_FILENAME}")
    if not isinstance(fmt, str) or fmt != MODEL_FILE_FORMAT:
        raise ModelError(f"{path} is not a cvae model file (no format tag {MODEL_FILE_FORMAT!r})")
    version = payload.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelError(f"{path} has format_version {version!r}: expected a positive integer "
                         "(damaged or not written by cvae-features)")
    if version > MODEL_FILE_VERSION:
        raise ModelError(
            f"{path} is model format version {version}, newer than this tool reads "
            f"({MODEL_FILE_VERSION}); upgrade cvae-features")
    for key in ("config", "state_dict") + (("arch",) if version >= 2 else ()):
        if key not in payload:
            raise ModelError(f"{path} is a damaged cvae model file: it has no {key!r} entry")
    arch = payload["arch"] if version >= 2 else DEFAULT_ARCH
    recorded = payload.get("fingerprint")
    if recorded is not None and not isinstance(recorded, str):
        raise ModelError(f"{path} is a damaged cvae model file: its fingerprint is of type "
                         f"{type(recorded).__name__}, not a string")
    model = model_from_state(arch, payload["config"], payload["state_dict"], source=path)
    if recorded and recorded != model_fingerprint(model):
        raise ModelError(f"{path}: weights do not match their recorded fingerprint (file damaged?)")
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


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _some(names, n: int = 3) -> str:
    shown = ", ".join(repr(k) for k in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


__all__ = ["MODEL_FILE_FORMAT", "MODEL_FILE_VERSION", "MODEL_FILENAME", "fingerprint_state", "model_fingerprint",
           "save_model", "model_from_state", "read_model_file", "check_state_dict", "first_non_finite",
           "read_torch_file"]
