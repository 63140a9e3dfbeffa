"""The epoch loop of :func:`cvae_features.training.train` (private).

The loop feeds the model batches ``{"images": uint8 (b, C, H, W), "labels": int64 (b,)
(-1 = unknown), "index": int64 (b,)}`` (``index``: rows of the training set, or of
the validation set for validation batches) and trains on ``model.loss(batch, beta)``.
With ``TrainConfig.augment`` (:mod:`cvae_features.augment`) training batches also carry
``"inputs"``, float (b, C, H, W): the perturbed images the encoder is to see while the
decoder is scored against ``"images"`` (families that accept this set ``accepts_inputs =
True``); with ``target=same`` the perturbed images replace ``"images"`` instead. The loop
reads only ``loss`` and the terms of what that returns (``terms()``,
``per_sample_terms()``, ``term_weights()``), logged as ``train_<term>`` and
``val_<term>``. Everything else (run-dir files, the callback) is done by hooks
(:mod:`cvae_features._train_hooks`), called on the main process only.

An epoch's shuffle order and reparameterisation noise derive from ``(seed,
epoch)`` only, and the model, optimizer, scheduler (and gradient scaler) states
are checkpointed at the end of each epoch, so a run resumed from its last
checkpoint repeats exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path

import torch

from ._train_hooks import CallbackHook, RunDirWriter
from .augment import resolve_augment
from ._train_setup import derive_seed
from ._version import __version__
from .errors import ConfigError, TrainingError
from ._distributed import Dist, LossModule
from .model import ConvVAE

# Checking the loss forces a GPU sync, so on CUDA it happens once per this many batches.
_CUDA_SYNC_EVERY = 25
# Above this size the training images stay in (pinned) host memory and move to the GPU per batch.
_MAX_DEVICE_BYTES = 4 << 30


class Loop:
    """Model, optimizer, scheduler and the per-epoch bookkeeping of one run.

    ``train_labels``/``val_labels`` (int64, -1 = unknown; None: all unknown) go with the images
    into the batches. ``hooks`` (:class:`~cvae_features._train_hooks.TrainHook`) run after
    ``callback`` and the run-dir writer, and only when ``is_main_process``: a loop that is not the
    main process trains the same way and writes nothing. ``model_class`` builds the model from
    ``mcfg``.

    With ``dist`` (:class:`~cvae_features._distributed.Dist`) of several processes, the model is
    wrapped in DistributedDataParallel: every process walks the same seeded permutation, takes its
    share of each global batch of ``batch_size`` images, and weights its mean loss by its share, so
    the averaged gradient is the global batch's; losses, validation sums and the NaN guard are summed
    across processes, so every process takes the same decisions (early stopping, errors). Only the
    main process (rank 0) runs hooks and writes.
    """

    def __init__(self, mcfg, tcfg, device, amp_dtype, train_images, val_images, progress, callback=None, *,
                 train_labels=None, val_labels=None, hooks=(), is_main_process=True, model_class=ConvVAE,
                 dist=None):
        self.tcfg, self.device, self.amp_dtype = tcfg, device, amp_dtype
        self.dist = dist if dist is not None else Dist()
        self.is_main_process = bool(is_main_process) and self.dist.main
        self.progress = progress and self.dist.main
        self.hooks = ([CallbackHook(callback)] if callback is not None else []) + list(hooks)
        torch.manual_seed(derive_seed(tcfg.seed, "init"))
        self.model = model_class(mcfg).to(device)
        self.ddp = None
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(LossModule(self.model),
                                               device_ids=[device.index] if device.type == "cuda" else None)
        self.beta = mcfg.beta
        self.augment = resolve_augment(tcfg.augment, mcfg.image_size)
        if self.augment.active and self.augment.target == "clean" and not getattr(self.model, "accepts_inputs", False):
            raise ConfigError(f"augment={tcfg.augment!r}: model family {getattr(self.model, 'arch', '?')!r} does not "
                              "take separate encoder inputs, so it cannot reconstruct the clean image; add "
                              "'target=same' to train on the perturbed images instead")
        train_labels = _labels_for(train_images, train_labels)
        val_labels = _labels_for(val_images, val_labels)
        cuda = device.type == "cuda"
        if not isinstance(train_images, torch.Tensor):
            pass  # rows of the on-disk image cache: read batch by batch, never all at once
        elif cuda and train_images.numel() <= _MAX_DEVICE_BYTES:
            train_images, train_labels = train_images.to(device), train_labels.to(device)
        elif cuda:
            train_images = train_images.pin_memory()
        self.train_images, self.val_images = train_images, val_images
        self.train_labels, self.val_labels = train_labels, val_labels
        self.n_train = len(train_images)
        # the labelled training rows, drawn into every batch when tcfg.labelled_per_batch > 0
        self.labelled_rows = torch.nonzero(train_labels.cpu() >= 0).flatten()
        if tcfg.labelled_per_batch and not len(self.labelled_rows):
            raise ConfigError(f"labelled_per_batch={tcfg.labelled_per_batch}: no training image has a label "
                              "(labels come from class sub-folders, a manifest or --labels)")
        self.n_batches = math.ceil(self.n_train / tcfg.batch_size)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay,
                                          **({"fused": True} if cuda else {}))
        total = tcfg.epochs * self.n_batches
        if tcfg.schedule == "onecycle":
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=tcfg.lr, total_steps=total)
        elif tcfg.schedule == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total)
        else:
            self.scheduler = None
        self.scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 and cuda else None
        self.epoch, self.history, self.seconds = 0, [], 0.0
        self.term_names = []  # the names of the model's loss terms, known after the first batch
        self.best_val, self.best_epoch, self.bad_epochs, self.stopped_early = math.inf, 0, 0, False

    def restore(self, state):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.history, self.seconds = state["epoch"], list(state["history"]), state["seconds"]
        best = state["best_val_loss"]
        self.best_val = math.inf if best is None else best
        self.best_epoch, self.bad_epochs = state["best_epoch"], state["bad_epochs"]

    def run(self, run_dir: Path, extra: dict) -> dict:
        from tqdm.auto import tqdm

        tcfg = self.tcfg
        # model.pt, the checkpoint and history are written by a hook: on the main process only
        hooks = [RunDirWriter(run_dir), *self.hooks] if self.is_main_process else []
        bar = tqdm(total=tcfg.epochs * self.n_batches, initial=self.epoch * self.n_batches, file=sys.stderr,
                   disable=not self.progress, unit="batch", dynamic_ncols=True, leave=True)
        state = None
        try:
            while self.epoch < tcfg.epochs:
                epoch = self.epoch + 1
                bar.set_description(f"epoch {epoch}/{tcfg.epochs}")
                t0 = time.perf_counter()
                train_row = self._train_epoch(epoch, bar, run_dir, hooks)
                train_s = time.perf_counter() - t0
                val = self._evaluate(self.val_images, self.val_labels) if len(self.val_images) else None
                if val is not None and not all(math.isfinite(v) for v in (val[0], *val[1].values())):
                    raise TrainingError(self._nan_message(f"validation loss became {val[0]} at epoch {epoch}",
                                                          run_dir))
                row = {"epoch": epoch, **train_row, "val_loss": val[0] if val else None,
                       **{f"val_{name}": val[1][name] if val else None for name in self.term_names},
                       "lr": self.optimizer.param_groups[0]["lr"], "images_per_s": self.n_train / train_s}
                improved = val is None or val[0] < self.best_val
                if improved:
                    self.best_val = val[0] if val else math.inf
                    self.best_epoch, self.bad_epochs = epoch, 0
                else:
                    self.bad_epochs += 1
                self.stopped_early = tcfg.patience is not None and val is not None and self.bad_epochs >= tcfg.patience
                finished = self.stopped_early or epoch == tcfg.epochs
                row["seconds"] = time.perf_counter() - t0
                self.history.append(row)
                self.seconds += row["seconds"]
                self.epoch = epoch
                state = self._state(extra, finished)
                for hook in hooks:
                    hook.on_epoch_end(self, row, state, improved, finished)
                bar.set_postfix_str(_postfix(row))
                if finished:
                    break
        finally:
            bar.close()
        for hook in hooks:
            hook.on_train_end(self, state)
        return state

    def _train_epoch(self, epoch: int, bar, run_dir: Path, hooks) -> dict:
        tcfg, model, opt, sched, scaler = self.tcfg, self.model, self.optimizer, self.scheduler, self.scaler
        images, labels = self.train_images, self.train_labels
        device, bs, n_batches = self.device, tcfg.batch_size, self.n_batches
        model.train()
        shuffle = torch.Generator().manual_seed(derive_seed(tcfg.seed, "shuffle", epoch))
        order = torch.randperm(self.n_train, generator=shuffle)
        if images.device != order.device:
            order = order.to(images.device)
        # The reparameterisation noise of an image depends on (seed, epoch, its row) only (batch["noise_key"]);
        # the global generator is seeded too, for models that draw their own.
        extra = torch.Generator().manual_seed(derive_seed(tcfg.seed, "labelled", epoch))
        noise_seed = derive_seed(tcfg.seed, "noise", epoch)
        torch.manual_seed(noise_seed)
        noise_key = torch.tensor(noise_seed, dtype=torch.int64)
        augment_key = derive_seed(tcfg.seed, "augment", epoch)
        sums, names = None, None  # per batch: loss and the model's terms, named at the first batch
        sizes = torch.tensor([min(bs, self.n_train - b * bs) for b in range(n_batches)], dtype=torch.float64)
        warm = tcfg.beta_warmup_epochs
        autocast = (torch.autocast(device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        sync_every = _CUDA_SYNC_EVERY if device.type == "cuda" else 1
        checked, t0 = 0, time.perf_counter()
        for b in range(n_batches):
            rows = order[b * bs:(b + 1) * bs]
            if tcfg.labelled_per_batch:  # a seeded draw of labelled rows joins the batch (M2's labelled batch)
                drawn = self.labelled_rows[torch.randint(len(self.labelled_rows), (tcfg.labelled_per_batch,),
                                                         generator=extra)]
                rows = torch.cat([rows, drawn.to(rows.device)])
            n_global, share = len(rows), 1.0
            if self.dist.active:  # this process's part of the global batch (at least one row, maybe weighted 0)
                mine = rows.tensor_split(self.dist.world)[self.dist.rank]
                share = len(mine) * self.dist.world / n_global
                rows = mine if len(mine) else rows[:1]
            batch = {"images": images.index_select(0, rows), "labels": labels.index_select(0, rows), "index": rows,
                     "noise_key": noise_key}
            if images.device != device:
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            if self.augment.active:  # keyed by (seed, epoch, row): the same whatever the batch or process
                perturbed = self.augment(batch["images"], augment_key, batch["index"])
                batch["images" if self.augment.target == "same" else "inputs"] = perturbed
            beta = self.beta if warm == 0 else self.beta * min(1.0, (epoch - 1 + (b + 1) / n_batches) / warm)
            with autocast:
                out = model.loss(batch, beta=beta) if self.ddp is None else self.ddp(batch, beta)
            opt.zero_grad(set_to_none=True)
            loss = out.loss if self.ddp is None else out.loss * share  # DDP averages: the global mean
            if scaler is None:
                loss.backward()
                if tcfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
                opt.step()
            else:
                scaler.scale(loss).backward()
                if tcfg.grad_clip is not None:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
                scaler.step(opt)
                scaler.update()
            if sched is not None:
                sched.step()
            terms = out.terms()
            if sums is None:
                names = self.term_names = list(terms)
                sums = torch.zeros(n_batches, 1 + len(names), device=device)
            values = torch.stack((out.loss, *(terms[name] for name in names))).detach()
            if self.dist.active:  # batch means over the global batch
                values = self.dist.all_sum(values * (share * n_global / self.dist.world)) / n_global
            sums[b] = values
            if hooks:
                logs = {"loss": out.loss.detach(), "beta": beta, "lr": opt.param_groups[0]["lr"],
                        "n_batches": n_batches, "model": model, "batch": batch}
                for hook in hooks:
                    hook.on_batch_end(self, epoch, b, logs)
            if (b + 1) % sync_every == 0 or b + 1 == n_batches:
                losses = sums[checked:b + 1, 0].float().cpu()
                finite = torch.isfinite(losses)
                if not finite.all():
                    first = checked + int((~finite).nonzero()[0, 0]) + 1
                    value = float(losses[first - checked - 1])
                    raise TrainingError(self._nan_message(
                        f"loss became {value} at epoch {epoch} batch {first}", run_dir))
                bar.update(b + 1 - checked)
                if self.progress:
                    rate = (b + 1) * bs / (time.perf_counter() - t0)
                    bar.set_postfix_str(f"loss={float(losses.mean()):.4g} img/s={rate:.0f}", refresh=False)
                checked = b + 1
        means = (sums.double().cpu() * sizes[:, None]).sum(0) / self.n_train
        return {"train_loss": float(means[0]), **{f"train_{name}": float(means[1 + i]) for i, name in enumerate(names)},
                "beta": beta}

    @torch.no_grad()
    def _evaluate(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512):
        """(loss, {term: mean}) over the images in eval mode (z = mu) with the full beta.

        Each term's per-sample values are summed in float64; the loss is the sum of the term means
        times the term weights the model reports.
        """
        model, device = self.model, self.device
        model.eval()
        sums, weights = None, None
        n_images = len(images)
        positions = torch.arange(n_images)
        if self.dist.active:  # each process evaluates its part; the sums are added up below
            positions = positions.tensor_split(self.dist.world)[self.dist.rank]
        autocast = (torch.autocast(device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        for chunk in positions.split(batch_size):
            start, stop = int(chunk[0]), int(chunk[-1]) + 1
            batch = {"images": images[start:stop], "labels": labels[start:stop], "index": torch.arange(start, stop)}
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast:
                out = model.loss(batch, beta=self.beta)
            per_sample = out.per_sample_terms()
            if sums is None:
                sums = {name: torch.zeros((), device=device, dtype=torch.float64) for name in per_sample}
                weights = out.term_weights()
            for name, values in per_sample.items():
                sums[name] += values.double().sum()
        model.train()
        if self.dist.active:
            if sums is None:  # more processes than validation images: this one had none
                with torch.no_grad(), autocast:
                    probe = model.eval().loss({"images": images[0:1], "labels": labels[0:1],
                                               "index": torch.arange(1)}, beta=self.beta)
                model.train()
                sums = {name: torch.zeros((), device=device, dtype=torch.float64) for name in probe.per_sample_terms()}
                weights = probe.term_weights()
            totals = self.dist.all_sum(torch.stack([sums[name] for name in sums]))
            sums = dict(zip(sums, totals))
        means = {name: float(total) / n_images for name, total in sums.items()}
        return sum(weights[name] * mean for name, mean in means.items()), means

    def _state(self, extra: dict, finished: bool) -> dict:
        return {
            "tool_version": __version__, "epoch": self.epoch, "finished": finished,
            "stopped_early": self.stopped_early,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "history": self.history, "seconds": self.seconds,
            "best_val_loss": None if self.best_val == math.inf else self.best_val,
            "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, **extra,
        }

    def _nan_message(self, what: str, run_dir: Path) -> str:
        if self.epoch == 0:
            kept = f"no epoch had finished, so {run_dir} holds no checkpoint"
        else:
            kept = f"the last good checkpoint (epoch {self.epoch}) is kept in {run_dir}"
        return f"{what}; {kept}; try a lower --lr"


def _labels_for(images: torch.Tensor, labels) -> torch.Tensor:
    """int64 labels of the images on their device; None means all unknown (-1)."""
    if labels is None:
        return torch.full((len(images),), -1, dtype=torch.int64, device=images.device)
    labels = torch.as_tensor(labels, dtype=torch.int64).to(images.device)
    if labels.shape != (len(images),):
        raise ValueError(f"labels of shape {tuple(labels.shape)} for {len(images)} images")
    return labels


def _postfix(row: dict) -> str:
    text = f"loss={row['train_loss']:.4g}"
    if row["val_loss"] is not None:
        text += f" val={row['val_loss']:.4g}"
    return text + f" img/s={row['images_per_s']:.0f}"


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj
