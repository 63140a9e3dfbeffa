"""Everything :func:`cvae_features.training.train` settles before the first step (private).

The data (files decoded once into an on-disk image cache, in-memory data sets and arrays as they
are; with the files that were skipped), the
model config that follows it, the checks on resume, the claim on a run
directory, the device and the seeds.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Optional
from pathlib import Path

import numpy as np
import torch

from . import _rundir as rd
from .errors import ConfigError, DataError
from .model import VAEConfig


@dataclass
class Data:
    images: object  # uint8 (n, C, S, S) on the CPU: a tensor, or CachedImages over the cache
    model_config: VAEConfig
    preprocess: object  # Preprocess or None for in-memory arrays
    description: str
    skipped: list
    fingerprint: str
    spec: Optional[str] = None  # what open_source reopens; None for in-memory arrays
    labels: Optional[torch.Tensor] = None  # int64 (n,) of the images' rows, -1 = unknown (all -1 for arrays)
    cache_dir: Optional[Path] = None  # the image cache the images are read from (file sources)


def load_data(source, tcfg, overrides: dict, preprocess, data_dir, progress, config_class=VAEConfig,
              cache_dir=None) -> Data:
    """The training data. Files are decoded once into the image cache at ``cache_dir`` (built, finished or
    reused; see :mod:`cvae_features.data.cache`) and read from it batch by batch; in-memory sources
    (built-in data sets, arrays) stay in memory."""
    size_hint, channels_hint = overrides.get("image_size"), overrides.get("channels")
    if isinstance(source, (torch.Tensor, np.ndarray)):
        images = _as_image_tensor(source)
        if tcfg.max_images is not None and tcfg.max_images < len(images):
            images = images[_subset_rows(len(images), tcfg)]
        size, channels = images.shape[-1], images.shape[1]
        for name, hint, actual in (("image_size", size_hint, size), ("channels", channels_hint, channels)):
            if hint is not None and hint != actual:
                raise ConfigError(f"model config {name}={hint} does not match the images' {name} {actual}")
        pre, description, skipped, spec = None, f"in-memory array of shape {tuple(images.shape)}", [], None
        labels = torch.full((len(images),), -1, dtype=torch.int64)
        label_names = []
    else:
        from .data import infer_preprocess, load_images, open_source

        src = open_source(str(source), data_dir=data_dir) if isinstance(source, (str, Path)) else source
        description, spec = src.description, getattr(src, "spec", None)
        if preprocess is None:
            preprocess = infer_preprocess(src, image_size=size_hint, channels=channels_hint)
        for name, hint, actual in (("image_size", size_hint, preprocess.size),
                                   ("channels", channels_hint, preprocess.channels)):
            if hint is not None and hint != actual:
                raise ConfigError(f"model config {name}={hint} does not match the preprocess {name} {actual}")
        rows = None
        if tcfg.max_images is not None and tcfg.max_images < len(src):
            rows = _subset_rows(len(src), tcfg).numpy()
            src = src.subset(rows)
        from .data import ArraySource

        digest = None
        if isinstance(src, ArraySource) or cache_dir is None:
            images, kept, bad = load_images(src, preprocess, workers=tcfg.workers, progress=progress)
            images = torch.as_tensor(images)
        else:
            from .data.cache import build_cache

            cache = build_cache(src, preprocess, cache_dir, workers=tcfg.workers, progress=progress)
            images, kept, bad, digest = cache.images, cache.kept, cache.skipped, cache.fingerprint
        # kept: the row of src (after the subset) of each decoded image, so labels line up with images
        known = np.asarray(src.labels, dtype=np.int64)
        if known.shape != (len(src),):  # a source that gives no per-row labels: all unknown
            known = np.full(len(src), -1, dtype=np.int64)
        labels = torch.as_tensor(known[kept])
        label_names = list(getattr(src, "label_names", []))
        keys = src.keys
        skipped = [(keys[int(row)], str(reason)) for row, reason in bad]
        if len(images) == 0:
            raise DataError(f"no image of {description} could be decoded ({len(skipped)} skipped)")
        pre = preprocess
        size, channels = pre.size, pre.channels
    derived = {"image_size": int(size), "channels": int(channels)}
    with_classes = "n_classes" in {f.name for f in dataclasses.fields(config_class)}  # a semi-supervised family
    if with_classes and "n_classes" not in overrides:
        derived["n_classes"] = len(label_names)
    n_known = int(torch.unique(labels[labels >= 0]).numel()) if with_classes else 0
    if with_classes and n_known < 2:
        raise ConfigError(f"a model with classes learns them from labelled images, and {description} has labelled "
                          f"images of {n_known} class(es); label some images of at least 2 classes (class "
                          "sub-folders, a manifest's label column, or cvae train --labels)")
    try:
        mcfg = config_class.from_dict({**overrides, **derived})
    except ConfigError as err:
        raise ConfigError(f"{err} (image_size {size} and channels {channels} come from the data)") from None
    if with_classes and int(labels.max()) >= mcfg.n_classes:
        raise ConfigError(f"n_classes={mcfg.n_classes} but {description} has {len(label_names)} classes")
    if isinstance(images, torch.Tensor):
        digest = hashlib.blake2b(np.ascontiguousarray(images.numpy()).data, digest_size=8).hexdigest()
    if with_classes:  # a model that learns from the labels: other labels are other data (resume refuses them)
        names = "\n".join(label_names).encode()
        digest = hashlib.blake2b(digest.encode() + names + labels.numpy().astype("<i8").tobytes(),
                                 digest_size=8).hexdigest()
    if isinstance(images, torch.Tensor):
        return Data(images.contiguous(), mcfg, pre, description, skipped, digest, spec, labels)
    return Data(images, mcfg, pre, description, skipped, digest, spec, labels, cache_dir=Path(cache_dir))


def _as_image_tensor(array) -> torch.Tensor:
    images = torch.as_tensor(array)
    if images.dtype != torch.uint8:
        raise DataError(f"in-memory images have dtype {images.dtype}: expected uint8 (0..255)")
    if images.ndim == 3:  # (n, H, W) grayscale
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[2] != images.shape[3] or len(images) == 0:
        raise DataError(f"in-memory images have shape {tuple(images.shape)}: expected (n, C, S, S) with n >= 1, "
                        "C in {1, 3} and square images")
    return images.cpu()


def _subset_rows(n: int, tcfg) -> torch.Tensor:
    g = torch.Generator().manual_seed(derive_seed(tcfg.seed, "subset"))
    return torch.randperm(n, generator=g)[:tcfg.max_images].sort().values


def model_overrides(model_config, config_class=VAEConfig) -> dict:
    """The model fields the caller chose; image_size/channels at their defaults count as unchosen."""
    if model_config is None:
        return {}
    if isinstance(model_config, config_class):
        d = model_config.to_dict()
        defaults = config_class()
        for name in ("image_size", "channels"):
            if d[name] == getattr(defaults, name):
                del d[name]
        return d
    if isinstance(model_config, dict):
        # Names and values are checked now, before any data is read; widths depend on the size, so they wait.
        config_class.from_dict({k: v for k, v in model_config.items() if k != "widths"})
        return dict(model_config)
    raise ConfigError(f"invalid model_config of type {type(model_config).__name__}: "
                      f"expected a {config_class.__name__}, a dict or None")


def agree(kind: str, saved, given, config_class=VAEConfig):
    """On resume the saved config rules; given values must agree with it (device and amp may change)."""
    if given is None:
        return saved
    given_d = given.to_dict() if hasattr(given, "to_dict") else dict(given)
    if kind == "model" and not isinstance(given, dict):
        given_d = model_overrides(given, config_class)
    saved_d = saved.to_dict()
    free = {"device", "amp", "amp_dtype", "workers", "cache_dir", "keep_cache"} if kind == "train" else set()
    changes = {k: v for k, v in given_d.items() if k in free and v != saved_d.get(k)}
    conflicts = [f"{k}={v!r} (checkpoint: {saved_d.get(k)!r})" for k, v in given_d.items()
                 if k not in free and v != saved_d.get(k)]
    if conflicts:
        raise ConfigError(f"cannot resume with a different {kind} config: {', '.join(conflicts)}; "
                          "resume uses the run's recorded settings (or start again with overwrite)")
    return dataclasses.replace(saved, **changes)


def agree_preprocess(saved: dict, given):
    from .data import Preprocess

    saved_pre = Preprocess.from_dict(saved)
    if given is not None and given != saved_pre:
        raise ConfigError(f"cannot resume with preprocess {given} (checkpoint: {saved_pre})")
    return saved_pre


def existing_run(run_dir: Path):
    """What ``run_dir`` holds, as (kind, words): the one reading behind every rerun rule and advice.

    kind is None when it holds neither a checkpoint nor a model (a run that never finished an epoch:
    a new run may start there, nothing of value is lost); "finished" or "resumable" for a readable
    checkpoint (``resume`` returns or continues it); "stuck" for a model without a checkpoint or a
    damaged checkpoint, which only ``overwrite`` (or another directory) gets past.
    """
    ckpt = run_dir / rd.CHECKPOINT
    if ckpt.exists():
        try:
            state = rd.load_checkpoint(ckpt)
        except ConfigError:
            return "stuck", f"a damaged {rd.CHECKPOINT}"
        if state.get("finished"):
            return "finished", "a finished run"
        epochs = state["train_config"].get("epochs", "?")
        return "resumable", f"an unfinished run (epoch {state['epoch']} of {epochs})"
    if (run_dir / rd.MODEL).exists():
        return "stuck", f"a {rd.MODEL} without a {rd.CHECKPOINT}"
    return None, "no checkpoint"


def lock_run_dir(run_dir: Path):
    """Hold ``run_dir/.lock`` (an exclusive, non-blocking ``flock``) for as long as the returned file is open:
    a second training in the same directory is refused in one line instead of mixing two runs' files."""
    import fcntl
    import os

    run_dir.mkdir(parents=True, exist_ok=True)
    fh = open(run_dir / ".lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        pid = fh.read().strip()
        fh.close()
        raise ConfigError(f"run_dir {run_dir} is in use by another training process"
                          f"{f' (pid {pid})' if pid.isdigit() else ''}: wait for it to finish or use another "
                          "directory") from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


def claim_run_dir(run_dir: Path, overwrite: bool) -> None:
    present = [name for name in rd.RUN_FILES if (run_dir / name).exists()]
    kind, what = existing_run(run_dir)
    if overwrite or kind is None:
        for name in present:
            (run_dir / name).unlink()
        return
    if kind == "stuck":
        raise ConfigError(f"run_dir {run_dir} already holds {what}, so it cannot be resumed: replace it "
                          "(--overwrite) or pick another directory")
    raise ConfigError(f"run_dir {run_dir} already holds {what}: resume it (--resume) or replace it (--overwrite)")


def interrupted_advice(run_dir: Path) -> str:
    """The one line to show after training was interrupted (Ctrl-C): what the run dir holds, what to rerun.

    It follows :func:`existing_run`, i.e. the rules the rerun itself applies.
    """
    kind, what = existing_run(run_dir)
    if kind == "resumable":
        return f"interrupted; {run_dir} holds {what}: rerun with --resume to go on from its last checkpoint"
    if kind == "finished":
        return f"interrupted after the last epoch; {run_dir} holds {what}: rerun with --resume for its summary"
    if kind == "stuck":
        return f"interrupted; {run_dir} holds {what}, which cannot be resumed: rerun with --overwrite to start again"
    return (f"interrupted before the first epoch ended, so no checkpoint was written in {run_dir}: "
            "rerun the same command without --resume to start again")


def derive_seed(seed: int, *keys) -> int:
    """A well-mixed 63-bit seed derived from the run seed and a purpose (and epoch)."""
    words = [seed] + [k if isinstance(k, int) else int.from_bytes(k.encode()[:8], "little") for k in keys]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))
