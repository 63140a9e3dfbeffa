"""Training a :class:`~cvae_features.model.ConvVAE`: the loop and its run directory.

``train`` decodes the source once into memory, splits off a seeded validation
set and trains with Adam and a learning-rate schedule. Each epoch ends with a
checkpoint, so ``resume=True`` continues an interrupted run exactly: the shuffle
order and the reparameterisation noise of an epoch derive from ``(seed, epoch)``
only, and the model, optimizer and scheduler states are restored, so a resumed
run ends with the same weights (on the CPU) as an uninterrupted one.

A run directory holds ``model.pt`` (the best-validation weights, or the last
ones without validation), ``checkpoint.pt``, ``config.json`` (the resolved
configuration), ``history.csv``/``history.json``, ``reconstructions.png`` and
``skipped.csv`` when files could not be decoded.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence, Union, get_args

import torch

from . import _rundir as rd
from ._version import __version__
from ._train_hooks import TrainHook
from ._train_loop import Loop
from ._train_setup import (agree, agree_preprocess, claim_run_dir, derive_seed, load_data, lock_run_dir,
                           model_overrides)
from .augment import check_augment
from .errors import ConfigError, CvaeError, DataError, LostProcessError
from ._distributed import from_env, local_device, lost_contact
from .families import DEFAULT_ARCH, model_class
from .model import ConvVAE, VAEConfig, check_config_keys, load_model, resolve_device

Schedule = Literal["onecycle", "cosine", "constant"]
AmpDtype = Literal["bfloat16", "float16"]
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
#: TrainConfig.augment's default (the image size decides; see the field's notes).
DEFAULT_AUGMENT = "auto"


@dataclass(frozen=True)
class TrainConfig:
    """How to train, validated when it is built.

    Parameters
    ----------
    epochs : int, default=20
        Passes over the training images, 1 to 100000.
    batch_size : int, default=128
        Images per optimizer step, 1 to 65536.
    lr : float, default=2e-3
        Peak learning rate of Adam, > 0.
    weight_decay : float, default=0.0
        Adam's L2 penalty, >= 0.
    schedule : {"onecycle", "cosine", "constant"}, default="onecycle"
        Learning-rate schedule over all steps of the run.
    beta_warmup_epochs : float, default=0.0
        The KL weight ramps linearly from 0 to the model's ``beta`` over this
        many epochs (0 = no warm-up). Validation always uses the full ``beta``.
    val_fraction : float, default=0.1
        Share of the images held out for validation, in [0, 1); 0 disables
        validation and early stopping.
    patience : int or None, default=None
        Stop when the validation loss has not improved for this many epochs;
        None disables early stopping.
    seed : int, default=0
        Seeds the weights, the split, the shuffle order and the noise.
    device : {"auto", "cpu", "cuda", "cuda:N"}, default="auto"
        "auto" picks CUDA when it is available.
    amp : bool or None, default=None
        Mixed precision (autocast); None turns it on for CUDA only.
    amp_dtype : {"bfloat16", "float16"}, default="bfloat16"
        Autocast dtype; float16 uses a gradient scaler.
    grad_clip : float or None, default=None
        Clip the gradient norm to this value; None disables clipping.
    max_images : int or None, default=None
        Train on a seeded random subset of this many images; None uses all.
    workers : int or None, default=None
        Decoding processes for file sources (None: the data layer's default).
    cache_dir : str or None, default=None
        Where file sources are decoded once into an on-disk uint8 cache that training reads
        batch by batch (memory does not grow with the number of images; see
        :mod:`cvae_features.data.cache`). None: ``<run_dir>/cache``. A cache built for other files
        or another preprocessing is rebuilt; an interrupted build is finished by the next run.
    keep_cache : bool, default=False
        Keep the cache when training finishes (it is removed otherwise; an interrupted run keeps it
        for ``resume``).
    labelled_per_batch : int, default=0
        Labelled training images drawn (seeded, with replacement) into every batch besides its
        ``batch_size`` shuffled images, so that few labels reach every step of a semi-supervised
        model (``conv-m2``); 0 draws none. Needs labelled training images when > 0, and then keeps
        every labelled image in the training split (validation takes unlabelled images first).
    augment : str or None, default="auto"
        Perturb the encoder's input during training, e.g. ``"shift=2"``, ``"noise=0.1"`` or
        ``"shift=2,target=same"`` (see :mod:`cvae_features.augment`); the decoder reconstructs the
        clean image unless the spec ends in ``target=same``. None (or ``"none"``): no augmentation.
        Kept in canonical form. ``"auto"``, the default: whole-pixel shifts of up to a fourteenth of
        the image side with the shifted image reconstructed (``shift=2,target=same`` at 28 px, chosen
        on a validation split of Fashion-MNIST's training images, see
        ``benchmarks/results/fashion_mnist_tuning.md``; nothing below 14 px). A saved config without
        the key (written before augmentation existed) loads as None.
    """

    epochs: int = 20
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    schedule: Schedule = "onecycle"
    beta_warmup_epochs: float = 0.0
    val_fraction: float = 0.1
    patience: Optional[int] = None
    seed: int = 0
    device: str = "auto"
    amp: Optional[bool] = None
    amp_dtype: AmpDtype = "bfloat16"
    grad_clip: Optional[float] = None
    max_images: Optional[int] = None
    workers: Optional[int] = None
    cache_dir: Optional[str] = None
    keep_cache: bool = False
    labelled_per_batch: int = 0
    augment: Optional[str] = DEFAULT_AUGMENT

    def __post_init__(self):
        def bad(name, expected):
            raise ConfigError(f"invalid {name}={getattr(self, name)!r}: expected {expected}")

        def integer(name, lo, hi, optional=False):
            value = getattr(self, name)
            if optional and value is None:
                return
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= hi:
                bad(name, ("None or " if optional else "") + f"an integer from {lo} to {hi}")
            object.__setattr__(self, name, int(value))

        def real(name, lo, hi=math.inf, lo_open=False, hi_open=False, optional=False):
            value = getattr(self, name)
            if optional and value is None:
                return
            ok = (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
                  and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi))
            if not ok:
                low = f"> {lo}" if lo_open else f">= {lo}"
                high = "" if hi == math.inf else (f" and < {hi}" if hi_open else f" and <= {hi}")
                bad(name, ("None or " if optional else "") + f"a finite number {low}{high}")
            object.__setattr__(self, name, float(value))

        integer("epochs", 1, 100_000)
        integer("batch_size", 1, 65_536)
        integer("labelled_per_batch", 0, 65_536)
        real("lr", 0, lo_open=True)
        real("weight_decay", 0)
        if self.schedule not in get_args(Schedule):
            bad("schedule", "'onecycle', 'cosine' or 'constant'")
        real("beta_warmup_epochs", 0)
        real("val_fraction", 0, 1, hi_open=True)
        integer("patience", 1, 100_000, optional=True)
        integer("seed", 0, 2**32 - 1)
        if not isinstance(self.device, str) or not _DEVICE.match(self.device):
            bad("device", "'auto', 'cpu', 'cuda' or 'cuda:N'")
        if self.amp is not None and not isinstance(self.amp, bool):
            bad("amp", "None, True or False")
        if self.amp_dtype not in get_args(AmpDtype):
            bad("amp_dtype", "'bfloat16' or 'float16'")
        real("grad_clip", 0, lo_open=True, optional=True)
        integer("max_images", 1, 2**40, optional=True)
        integer("workers", 0, 1024, optional=True)
        if self.cache_dir is not None:
            if not isinstance(self.cache_dir, (str, os.PathLike)) or not str(self.cache_dir).strip():
                bad("cache_dir", "None or a folder path")
            object.__setattr__(self, "cache_dir", str(self.cache_dir))
        if not isinstance(self.keep_cache, bool):
            bad("keep_cache", "True or False")
        object.__setattr__(self, "augment", check_augment(self.augment))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """A config from a dict of fields; the missing ones take their defaults."""
        return cls(**check_config_keys(cls, d, "train config"))

    @classmethod
    def from_saved(cls, d: dict) -> "TrainConfig":
        """The config a run recorded: one recorded before ``augment`` existed trained without it."""
        return cls.from_dict({"augment": None, **d})


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    model : ConvVAE
        The best-validation weights (the last ones without validation), on the CPU, in eval mode.
    run_dir : Path
    history : list of dict
        One row per epoch: epoch, train_loss, train_recon, train_kl, beta, val_loss, val_recon,
        val_kl (None without validation), lr, images_per_s, seconds.
    best_epoch : int
        The epoch whose weights are in ``model`` (1-based).
    stopped_early : bool
    epochs_run : int
        Epochs completed by the run, counting those before a resume.
    seconds : float
        Total time of the epochs (training and validation, not the run-dir writes), across resumes.
    n_train, n_val : int
    skipped : list of (str, str)
        (key, reason) of every image that could not be decoded.
    """

    model: ConvVAE
    run_dir: Path
    history: list
    best_epoch: int
    stopped_early: bool
    epochs_run: int
    seconds: float
    n_train: int
    n_val: int
    skipped: list

    @property
    def best_val_loss(self) -> Optional[float]:
        return self.history[self.best_epoch - 1]["val_loss"] if self.history else None

    @property
    def images_per_s(self) -> float:
        """Training throughput over the whole run (training phases only)."""
        train_s = sum(self.n_train / r["images_per_s"] for r in self.history if r["images_per_s"])
        return self.n_train * len(self.history) / train_s if train_s else float("nan")

    def to_dict(self) -> dict:
        return {
            "run_dir": str(self.run_dir), "epochs_run": self.epochs_run, "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss, "stopped_early": self.stopped_early,
            "final_train_loss": self.history[-1]["train_loss"] if self.history else None,
            "seconds": self.seconds, "images_per_s": self.images_per_s, "n_train": self.n_train,
            "n_val": self.n_val, "n_skipped": len(self.skipped), "fingerprint": self.model.fingerprint(),
        }


def train(source, run_dir, *, model_config: Union[VAEConfig, dict, None] = None,
          train_config: Union[TrainConfig, dict, None] = None, preprocess=None, resume: bool = False,
          overwrite: bool = False, progress: bool = True, data_dir=None,
          callback: Optional[Callable[[int, int, dict], None]] = None,
          hooks: Sequence[TrainHook] = (), arch: Optional[str] = None) -> TrainResult:
    """Train a model (a ConvVAE by default) on a source and write the run directory.

    Parameters
    ----------
    source : ImageSource, str, path, or uint8 Tensor/ndarray of shape (n, C, S, S)
        What to train on; a string is a source spec for ``open_source`` (a
        folder, a ``.csv`` manifest or a built-in name such as ``"digits"``).
    run_dir : str or path
        Where the run's files go (created if needed).
    model_config : VAEConfig, dict or None
        The architecture. ``image_size`` and ``channels`` left unset (absent
        from a dict, or equal to the VAEConfig defaults 28 and 1) follow the
        data: the preprocess, the built-in data set's native format or the
        array's shape.
    train_config : TrainConfig, dict or None
        How to train; a dict gives only the fields that differ from the defaults.
    preprocess : Preprocess or None
        The canonical input for file sources; None infers it (``infer_preprocess``).
    resume : bool, default=False
        Continue the run in ``run_dir`` from its last checkpoint with its
        recorded configuration; configs passed here must agree with it.
    overwrite : bool, default=False
        Replace a run already in ``run_dir``.
    progress : bool, default=True
        Show progress bars on stderr.
    data_dir : str or path, optional
        Where built-in data sets are looked for.
    callback : callable(epoch, batch_index, logs), optional
        Called after every optimizer step with the 1-based epoch, the 0-based
        batch index and ``{"loss": 0-d tensor, "beta": float, "lr": float,
        "n_batches": int, "model": ConvVAE, "batch": dict}``; reading ``loss``
        forces a device sync. ``batch`` is what the model's ``loss`` got:
        ``{"images": uint8 (b, C, S, S), "labels": int64 (b,) (-1 = unknown),
        "index": int64 (b,) (rows of the training set)}``. An exception it
        raises stops training (the last checkpoint stays resumable).
    arch : str or None
        The model family (:mod:`cvae_features.families`); None: the default ``conv-vae``
        (on resume: the run's own). ``model_config`` is then that family's config class.
    hooks : sequence of TrainHook, optional
        Called after every step, every epoch and at the end of training (see
        :class:`TrainHook`), after the run directory's files of the epoch are
        written and after ``callback``.

    Returns
    -------
    TrainResult

    Raises
    ------
    ConfigError
        Bad configuration, a run dir that already holds a run, a resume without a checkpoint or from
        a damaged one.
    TrainingError
        The loss became NaN or infinite.
    """
    # Training seeds the global generators; the caller's random state is given back afterwards.
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        return _train(source, Path(run_dir), model_config, train_config, preprocess, resume, overwrite, progress,
                      data_dir, callback, hooks, arch)


def _train(source, run_dir: Path, model_config, train_config, preprocess, resume, overwrite, progress, data_dir,
           callback, hooks=(), arch=None) -> TrainResult:
    if resume and overwrite:
        raise ConfigError("resume=True and overwrite=True exclude each other: pick one")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run_dir={str(run_dir)!r} is a file: expected a directory")
    ckpt_path = run_dir / rd.CHECKPOINT
    state = None
    if resume:
        if not ckpt_path.exists():
            raise ConfigError(f"cannot resume: {run_dir} holds no {rd.CHECKPOINT} (start a new run without resume)")
        state = rd.load_checkpoint(ckpt_path)
        saved_arch = state.get("arch", DEFAULT_ARCH)
        if arch is not None and arch != saved_arch:
            raise ConfigError(f"cannot resume a {saved_arch} run as arch={arch!r}: resume uses the run's own "
                              "model family (or start again with overwrite)")
        arch = saved_arch
        config_class = model_class(arch).config_class
        tcfg = agree("train", TrainConfig.from_saved(state["train_config"]), train_config)
        overrides = agree("model", config_class.from_dict(state["model_config"]), model_config,
                          config_class).to_dict()
        saved_pre = state.get("preprocess")
        if saved_pre is not None:
            preprocess = agree_preprocess(saved_pre, preprocess)
    else:
        arch = DEFAULT_ARCH if arch is None else arch
        config_class = model_class(arch).config_class  # ConfigError for a family nobody registered
        tcfg = _as_train_config(train_config)
        overrides = model_overrides(model_config, config_class)

    # several processes (torchrun): rank 0 claims the run dir, builds the image cache and writes files
    device = resolve_device(tcfg.device)
    dist = from_env(device)
    try:
        if dist.active and dist.world > tcfg.batch_size:
            raise ConfigError(f"{dist.world} processes for batches of {tcfg.batch_size} images: every process "
                              "needs at least one image per batch (use fewer processes or a larger --batch-size)")
        lock = dist.on_main(lambda: lock_run_dir(run_dir))  # held by the main process until training ends
        try:
            return _train_in(dist, local_device(device, dist), source, run_dir, tcfg, overrides, config_class,
                             arch, state, preprocess, resume, overwrite, progress, data_dir, callback, hooks)
        except RuntimeError as err:
            reason = lost_contact(err) if dist.active and not isinstance(err, CvaeError) else ""
            if reason:
                raise LostProcessError(
                    f"process {dist.rank} lost the other training process(es) ({reason}): one stopped or "
                    f"was killed; {run_dir} keeps the last finished epoch: run the same command with --resume") from None
            raise
        finally:
            if lock is not None:
                lock.close()
    finally:
        dist.close()


def _train_in(dist, device, source, run_dir, tcfg, overrides, config_class, arch, state, preprocess, resume,
              overwrite, progress, data_dir, callback, hooks) -> TrainResult:
    ckpt_path = run_dir / rd.CHECKPOINT
    if not resume:
        dist.on_main(lambda: claim_run_dir(run_dir, overwrite))
    cache_dir = Path(tcfg.cache_dir) if tcfg.cache_dir is not None else run_dir / "cache"

    def load():
        return load_data(source, tcfg, overrides, preprocess, data_dir, progress and dist.main, config_class,
                         cache_dir=cache_dir)

    loaded = []
    dist.on_main(lambda: loaded.append(load()))  # the main process builds the cache; the others open it
    data = loaded[0] if loaded else load()
    mcfg = data.model_config
    dist.check_same("run", {"arch": arch, "model_config": mcfg.to_dict(), "data": data.fingerprint,
                            **{k: v for k, v in tcfg.to_dict().items() if k not in ("workers", "device")}})
    if state is not None and (state["data_fingerprint"] != data.fingerprint):
        raise ConfigError(f"cannot resume: the data differ from the checkpoint's ({len(data.images)} images, "
                          f"fingerprint {data.fingerprint} vs {state['data_fingerprint']}); pass the same source")
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        rd.write_skipped(run_dir, data.skipped)

    n = len(data.images)
    n_val = 0 if tcfg.val_fraction == 0 else min(max(1, round(n * tcfg.val_fraction)), n - 1)
    if n - n_val < 1:
        raise DataError(f"only {n} image(s) in {data.description}: need at least 1 to train")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(tcfg.seed, "split")))
    if tcfg.labelled_per_batch:  # few labels: every labelled image trains; validation takes unlabelled ones first
        known = data.labels[perm] >= 0
        perm = torch.cat([perm[~known], perm[known]])
    val_images, train_images = data.images[perm[:n_val]], data.images[perm[n_val:]]
    val_labels, train_labels = data.labels[perm[:n_val]], data.labels[perm[n_val:]]

    amp_dtype = None
    if tcfg.amp if tcfg.amp is not None else device.type == "cuda":
        amp_dtype = getattr(torch, tcfg.amp_dtype)

    if dist.main:
        rd.write_json(run_dir / rd.CONFIG, {
            "tool_version": __version__, "torch_version": torch.__version__,
            "arch": arch, "model_config": mcfg.to_dict(), "train_config": tcfg.to_dict(),
            "preprocess": data.preprocess.to_dict() if data.preprocess is not None else None,
            "source": {"description": data.description, "spec": data.spec, "n_images": n, "n_train": n - n_val,
                       "n_val": n_val, "n_skipped": len(data.skipped), "data_fingerprint": data.fingerprint},
            "device": str(device), "amp": tcfg.amp_dtype if amp_dtype is not None else None,
            "processes": dist.world,
        })

    if state is not None and state.get("finished"):
        return _finish(dist, data, tcfg, run_dir, state, n - n_val, n_val)

    state_extra = {"arch": arch, "model_config": mcfg.to_dict(), "train_config": tcfg.to_dict(),
                   "preprocess": data.preprocess.to_dict() if data.preprocess is not None else None,
                   "source": data.description, "data_fingerprint": data.fingerprint}
    loop = Loop(mcfg, tcfg, device, amp_dtype, train_images, val_images, progress, callback,
                train_labels=train_labels, val_labels=val_labels, hooks=hooks, model_class=model_class(arch),
                dist=dist)
    if state is not None:
        try:
            loop.restore(state)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"cannot resume from {ckpt_path}: its saved state does not fit this run ({first}); "
                              "start again with overwrite") from None
    state = loop.run(run_dir, state_extra)
    return _finish(dist, data, tcfg, run_dir, state, n - n_val, n_val)


def _finish(dist, data, tcfg, run_dir, state, n_train, n_val) -> TrainResult:
    dist.barrier()  # model.pt is written (by the main process) before anyone reads it
    if dist.main:
        _drop_cache(data, tcfg)
    return _result(run_dir, state, n_train, n_val, data.skipped)


def _drop_cache(data, tcfg) -> None:
    """A finished run needs its image cache no more (unless asked to keep it)."""
    if data.cache_dir is not None and not tcfg.keep_cache:
        from .data.cache import remove_cache

        remove_cache(data.cache_dir)


def _result(run_dir: Path, state: dict, n_train: int, n_val: int, skipped: list) -> TrainResult:
    return TrainResult(model=load_model(run_dir / rd.MODEL), run_dir=run_dir, history=list(state["history"]),
                       best_epoch=state["best_epoch"], stopped_early=bool(state["stopped_early"]),
                       epochs_run=state["epoch"], seconds=float(state["seconds"]), n_train=n_train, n_val=n_val,
                       skipped=list(skipped))


def _as_train_config(train_config) -> TrainConfig:
    if train_config is None:
        return TrainConfig()
    if isinstance(train_config, TrainConfig):
        return train_config
    if isinstance(train_config, dict):
        return TrainConfig.from_dict(train_config)
    raise ConfigError(f"invalid train_config of type {type(train_config).__name__}: "
                      "expected a TrainConfig, a dict or None")


__all__ = ["TrainConfig", "TrainResult", "TrainHook", "train"]
