"""Data-parallel training across processes (private): who this process is, and the few collectives the
trainer needs.

``torchrun --nproc-per-node N ...`` (or ``cvae train --nproc N``) starts N processes with ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK`` set; :func:`from_env` joins them into a process group (gloo on CPU, NCCL
on CUDA). A single process (no ``WORLD_SIZE``, or 1) gets a :class:`Dist` whose collectives do nothing.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import ConfigError, CvaeError


@dataclass
class Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str = ""
    owned: bool = False  # this module started the process group (and ends it)

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over processes of ``tensor`` (a new tensor on the tensor's device; gloo sums on the CPU)."""
        if not self.active:
            return tensor
        device = tensor.device
        work = tensor.detach().clone()
        if self.backend == "gloo" and work.device.type != "cpu":
            work = work.cpu()
        torch.distributed.all_reduce(work, op=torch.distributed.ReduceOp.SUM)
        return work.to(device)

    def on_main(self, fn: Callable):
        """Run ``fn`` on the main process only and return its result there (None elsewhere); an error it
        raises is raised on every process (the same one line, so none is left waiting)."""
        if not self.active:
            return fn()
        box, result = [None], None
        if self.main:
            try:
                result = fn()
            except CvaeError as err:
                box[0] = (type(err).__name__, str(err))
        torch.distributed.broadcast_object_list(box, src=0)
        if box[0] is not None:
            from . import errors

            raise getattr(errors, box[0][0], ConfigError)(box[0][1])
        return result

    def check_same(self, what: str, value: dict) -> None:
        """ConfigError on every process unless every process holds the same ``value`` (a JSON-able dict)."""
        if not self.active:
            return
        values = [None] * self.world
        torch.distributed.all_gather_object(values, value)
        for rank, other in enumerate(values):
            if other != values[0]:
                keys = sorted(k for k in set(other) | set(values[0]) if other.get(k) != values[0].get(k))
                raise ConfigError(f"the {self.world} processes disagree on the {what}: process {rank} has "
                                  f"{', '.join(f'{k}={other.get(k)!r}' for k in keys[:3])}, process 0 "
                                  f"{', '.join(f'{k}={values[0].get(k)!r}' for k in keys[:3])}; start them with the "
                                  "same command")

    def close(self) -> None:
        if self.owned and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.owned = False


def from_env(device: torch.device) -> Dist:
    """The process group this process belongs to (joined now when torchrun started it), or a single process."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (as torchrun sets them)") from None
    if world <= 1:
        return Dist()
    if not torch.distributed.is_available():
        raise ConfigError("this torch was built without torch.distributed: data-parallel training is not possible")
    backend = "nccl" if device.type == "cuda" else "gloo"
    owned = False
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        owned = True
    else:
        backend = torch.distributed.get_backend()
    return Dist(world, rank, local_rank, backend, owned)


# what gloo and NCCL say when the process at the other end of a collective has gone
_LOST_WORDS = ("connection reset", "connection closed", "broken pipe", "connection refused", "socket closed",
               "remote process exited", "nccl communicator was aborted")


def lost_contact(err: BaseException) -> str:
    """The reason in a few words when ``err`` is a collective that failed because another process is gone
    (a gloo/NCCL connection error), else ``""``."""
    text = str(err).strip()
    words = text.lower()
    if not (isinstance(err, getattr(torch.distributed, "DistNetworkError", ())) or any(w in words for w in _LOST_WORDS)):
        return ""
    # gloo: "[.../gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:37526: Connection reset by peer. This is..."
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    return text.split(". ", 1)[0].splitlines()[0][:120]


def local_device(device: torch.device, dist: Dist) -> torch.device:
    """Each process of a CUDA run gets its own GPU (``cuda:LOCAL_RANK``)."""
    if device.type == "cuda" and dist.active:
        if dist.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"process {dist.rank} has LOCAL_RANK {dist.local_rank} but this machine has "
                              f"{torch.cuda.device_count()} GPU(s): use at most that many processes per node")
        torch.cuda.set_device(dist.local_rank)
        return torch.device("cuda", dist.local_rank)
    return device


class LossModule(torch.nn.Module):
    """What DistributedDataParallel wraps: its forward is the model's ``loss(batch, beta)``, so gradients
    are synchronised through DDP's hooks."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch, beta=None):
        return self.model.loss(batch, beta=beta)


__all__ = ["Dist", "from_env", "local_device", "lost_contact", "LossModule"]
