"""The files of a training run directory (private to :mod:`cvae_features.training`).

Every file is written to a temporary name first and moved into place with
``os.replace``, so an interrupted run never leaves a half-written file behind.
The checkpoint is a plain dict of tensors and JSON-able values, read back with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import torch

from ._json import dumps
from .errors import ConfigError, ModelError

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
CONFIG = "config.json"
HISTORY_CSV = "history.csv"
HISTORY_JSON = "history.json"
RECONSTRUCTIONS = "reconstructions.png"
SKIPPED = "skipped.csv"
CHECKPOINT_FORMAT = "cvae-checkpoint"
CHECKPOINT_VERSION = 1
#: Everything a run writes; ``overwrite`` removes exactly these and nothing else.
RUN_FILES = (CHECKPOINT, MODEL, CONFIG, HISTORY_CSV, HISTORY_JSON, RECONSTRUCTIONS, SKIPPED)
#: The history columns of a ConvVAE run (a model with other loss terms has train_/val_<term> of its own).
HISTORY_FIELDS = ("epoch", "train_loss", "train_recon", "train_kl", "beta", "val_loss", "val_recon",
                  "val_kl", "lr", "images_per_s", "seconds")


def _replace_from_tmp(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    _replace_from_tmp(path, lambda tmp: tmp.write_text(dumps(obj, indent=2) + "\n"))


def save_checkpoint(path: Path, payload: dict) -> None:
    payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **payload}
    _replace_from_tmp(path, lambda tmp: torch.save(payload, tmp))


#: What resuming reads from a checkpoint; every version-1 checkpoint has all of them.
_CHECKPOINT_DICTS = ("model", "optimizer", "model_config", "train_config")
_CHECKPOINT_KEYS = _CHECKPOINT_DICTS + ("epoch", "history", "seconds", "best_val_loss", "best_epoch", "bad_epochs",
                                        "stopped_early", "data_fingerprint")


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; a damaged or foreign file is a one-line ConfigError.

    Like model files it is read with ``torch.load(weights_only=True)`` and never unpickled otherwise;
    its entries are checked before use, and saved weights holding NaN or inf are refused.
    """
    from .modelfile import check_state_dict, read_torch_file

    payload = read_torch_file(path, ConfigError, "cvae training checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path} is not a cvae training checkpoint")
    version = payload.get("format_version", CHECKPOINT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"{path} has format_version {version!r}: expected a positive integer (damaged checkpoint)")
    if version > CHECKPOINT_VERSION:
        raise ConfigError(f"{path} is checkpoint format version {version}, newer than this "
                          f"tool reads ({CHECKPOINT_VERSION}); upgrade cvae-features")
    missing = [key for key in _CHECKPOINT_KEYS if key not in payload]
    if missing:
        raise ConfigError(f"{path} is a damaged checkpoint: it lacks {', '.join(map(repr, missing))}")
    for key in _CHECKPOINT_DICTS:
        if not isinstance(payload[key], dict):
            raise ConfigError(f"{path} is a damaged checkpoint: its {key!r} entry is of type "
                              f"{type(payload[key]).__name__}, not a dict")
    if isinstance(payload["epoch"], bool) or not isinstance(payload["epoch"], int) or payload["epoch"] < 0:
        raise ConfigError(f"{path} is a damaged checkpoint: its epoch is {payload['epoch']!r}")
    try:
        check_state_dict(payload["model"], source=f"checkpoint {path}")
    except ModelError as err:
        raise ConfigError(str(err)) from None
    return payload


def write_history(run_dir: Path, history: list) -> None:
    """history.json and history.csv; the csv columns are the first row's keys (HISTORY_FIELDS for a ConvVAE)."""
    write_json(run_dir / HISTORY_JSON, history)
    fields = list(history[0]) if history else list(HISTORY_FIELDS)

    def write_csv(tmp):
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            for row in history:
                writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in fields})

    _replace_from_tmp(run_dir / HISTORY_CSV, write_csv)


def write_skipped(run_dir: Path, skipped: list) -> None:
    """``skipped`` is a list of (key, reason); the file is only written when it is not empty."""
    if not skipped:
        return

    def write_csv(tmp):
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["key", "reason"])
            writer.writerows(skipped)

    _replace_from_tmp(run_dir / SKIPPED, write_csv)


def save_reconstructions(path: Path, originals: torch.Tensor, recons: torch.Tensor, min_tile: int = 64) -> None:
    """Originals in the top row, their reconstructions below, each tile scaled up to at least ``min_tile``.

    Parameters
    ----------
    originals, recons : uint8 Tensor of shape (n, C, S, S)
    """
    from PIL import Image

    n, c, s, _ = originals.shape
    gap = 2
    rows = [originals.cpu().numpy(), recons.cpu().numpy()]
    canvas = np.full((2 * s + 3 * gap, n * (s + gap) + gap, c), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for i in range(n):
            y, x = gap + r * (s + gap), gap + i * (s + gap)
            canvas[y:y + s, x:x + s] = row[i].transpose(1, 2, 0)
    image = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    factor = max(1, math.ceil(min_tile / s))
    if factor > 1:
        image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    _replace_from_tmp(path, lambda tmp: image.save(tmp, format="PNG"))


