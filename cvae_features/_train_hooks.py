"""Hooks of the training loop: what happens around the steps that is not training itself (private).

The loop (:class:`cvae_features._train_loop.Loop`) calls its hooks on the main
process only (``Loop.is_main_process``; later the rank-0 process of a
distributed run), so every write to the run directory goes through a hook:
:class:`RunDirWriter` does today's writes in today's order. The ``callback`` of
:func:`cvae_features.training.train` is a hook too (:class:`CallbackHook`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import _rundir as rd
from .modelfile import save_model


class TrainHook:
    """Called by the training loop on the main process; every method does nothing unless overridden.

    The loop calls, in the order the hooks were given:

    - ``on_batch_end(loop, epoch, batch_index, logs)`` after every optimizer step, with the 1-based
      epoch, the 0-based batch index and ``logs`` (as the ``callback`` of :func:`train` gets them);
    - ``on_epoch_end(loop, row, state, improved, finished)`` after every epoch, with its history row
      (already appended to ``loop.history``), the checkpoint ``state`` of the end of the epoch (a dict
      of CPU tensors and plain values), whether the validation loss improved on the best so far
      (always True without validation) and whether this is the last epoch (the epoch limit or early
      stopping);
    - ``on_train_end(loop, state)`` once after the last epoch, with the final state.

    ``loop`` gives the model (``loop.model``), the optimizer, ``loop.epoch``, ``loop.history`` and
    ``loop.best_epoch``. An exception raised by a hook stops training.
    """

    def on_batch_end(self, loop, epoch: int, batch_index: int, logs: dict) -> None:
        pass

    def on_epoch_end(self, loop, row: dict, state: dict, improved: bool, finished: bool) -> None:
        pass

    def on_train_end(self, loop, state: dict) -> None:
        pass


class CallbackHook(TrainHook):
    """The ``callback(epoch, batch_index, logs)`` of :func:`train`, called after every optimizer step."""

    def __init__(self, callback):
        self.callback = callback

    def on_batch_end(self, loop, epoch, batch_index, logs):
        self.callback(epoch, batch_index, logs)


class RunDirWriter(TrainHook):
    """The run directory's files at the end of every epoch.

    ``model.pt`` when the validation loss improved (before the checkpoint: a crash in between redoes
    the epoch on resume), ``reconstructions.png`` after the last epoch, then ``checkpoint.pt`` and
    ``history.csv``/``history.json``.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def on_epoch_end(self, loop, row, state, improved, finished):
        if improved:
            save_model(loop.model, self.run_dir / rd.MODEL)
        if finished:
            self._write_reconstructions(loop)
        rd.save_checkpoint(self.run_dir / rd.CHECKPOINT, state)
        rd.write_history(self.run_dir, loop.history)

    def _write_reconstructions(self, loop, n: int = 16):
        from .resolve import load_model

        images = loop.val_images if len(loop.val_images) else loop.train_images.cpu()
        originals = images[:n]
        best = load_model(self.run_dir / rd.MODEL)
        with torch.no_grad():
            recons = best.decode_mean(best.embed(originals))
        rd.save_reconstructions(self.run_dir / rd.RECONSTRUCTIONS, originals,
                                (recons.clamp(0, 1) * 255).round().to(torch.uint8))


__all__ = ["TrainHook", "CallbackHook", "RunDirWriter"]
