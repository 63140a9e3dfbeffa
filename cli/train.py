"""``cvae train SOURCE -o RUN_DIR``: parse options and call :func:`cvae_features.training.train`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ._common import LAUNCHED, LOST_EXIT, echo_json, library_errors

# Option name -> (config it belongs to, field). Only options given on the command line are passed,
# so the library's defaults stay the single source of truth.
_MODEL_OPTIONS = {"latent_dim": "latent_dim", "beta": "beta", "likelihood": "likelihood",
                  "image_size": "image_size", "channels": "channels", "n_clusters": "n_clusters",
                  "pretrain_steps": "pretrain_steps"}
_TRAIN_OPTIONS = {"epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "seed": "seed", "device": "device",
                  "val_fraction": "val_fraction", "patience": "patience", "schedule": "schedule",
                  "beta_warmup": "beta_warmup_epochs", "max_images": "max_images", "workers": "workers",
                  "cache_dir": "cache_dir", "keep_cache": "keep_cache", "labelled_per_batch": "labelled_per_batch",
                  "augment": "augment"}
#: Labelled images drawn into every batch of a --labels run unless --labelled-per-batch says otherwise.
LABELLED_PER_BATCH = 32


@click.command("train")
@click.argument("source")
@click.option("-o", "--output", "run_dir", required=True, type=click.Path(file_okay=False),
              help="Run directory for model.pt, checkpoint.pt, config.json, history and plots.")
@click.option("--epochs", type=int, default=None, help="Passes over the data (default 20).")
@click.option("--batch-size", type=int, default=None, help="Images per step (default 128).")
@click.option("--lr", type=float, default=None, help="Peak learning rate (default 2e-3).")
@click.option("--schedule", default=None, metavar="NAME", help="onecycle (default), cosine or constant.")
@click.option("--latent-dim", type=int, default=None, help="Width of the embedding (default 256).")
@click.option("--beta", type=float, default=None, help="Weight of the KL term (default 0.05).")
@click.option("--beta-warmup", type=float, default=None, metavar="EPOCHS",
              help="Ramp the KL weight from 0 over this many epochs (default 0).")
@click.option("--likelihood", default=None, metavar="NAME", help="bernoulli (default) or gaussian.")
@click.option("--image-size", type=int, default=None,
              help="Side of the model input (default: the data's native size, or inferred from the files).")
@click.option("--channels", type=int, default=None, help="1 or 3 (default: inferred from the data).")
@click.option("--seed", type=int, default=None, help="Random seed (default 0).")
@click.option("--device", default=None, metavar="NAME", help="auto (default), cpu, cuda or cuda:N.")
@click.option("--val-fraction", type=float, default=None,
              help="Share held out for validation (default 0.1; 0 disables validation).")
@click.option("--patience", type=int, default=None,
              help="Stop after this many epochs without a better validation loss (default: off).")
@click.option("--max-images", type=int, default=None, help="Train on a seeded random subset of this size.")
@click.option("--workers", type=int, default=None, help="Decoding processes for image files.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Where image files are decoded once for training (default RUN_DIR/cache; removed when the "
                   "run finishes).")
@click.option("--keep-cache", is_flag=True, default=None, help="Keep the image cache when the run finishes.")
@click.option("--data-dir", type=click.Path(), default=None, help="Where built-in data sets are looked for.")
@click.option("--resume", is_flag=True, help="Continue the run in RUN_DIR from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace a run already in RUN_DIR.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bars.")
@click.option("--nproc", type=click.IntRange(min=1), default=None, metavar="N",
              help="Train with N processes on this machine (DistributedDataParallel, the same as "
                   "torchrun --nproc-per-node N): gloo on CPU, NCCL on CUDA; results do not depend on N.")
@click.option("--labels", "labels", default=None, metavar="LABELS.csv|source",
              help="Semi-supervised training (Kingma's M2, model family conv-m2; the encoder mean is still the "
                   "embedding): LABELS.csv lists 'key,label' for some images of SOURCE (keys as cvae extract "
                   "writes them: relative paths, or name:split/NNNNN for a data set), the others are unlabelled; "
                   "'source' takes SOURCE's own labels (class sub-folders, with unlabelled images at the top "
                   "level; a manifest's label column, empty for unlabelled).")
@click.option("--labelled-per-batch", "labelled_per_batch", type=click.IntRange(0, 65536), default=None,
              help=f"With --labels: labelled images drawn into every batch (default {LABELLED_PER_BATCH}).")
@click.option("--augment", default=None, metavar="SPEC",
              help="Perturb the encoder's input while training, e.g. shift=2, crop=0.8, flip, noise=0.1, erase=0.25 "
                   "(joined by commas); the decoder reconstructs the clean image unless target=same is added; "
                   "'none' turns it off (default auto: shift up to 1/14 of the side, target=same; 2 px at 28 px).")
@click.option("--arch", default=None, metavar="FAMILY",
              help="Model family: conv-vae (the default), conv-vade (a mixture prior whose components are "
                   "clusters, read with cvae probe --cluster-methods prior), conv-m2 (needs --labels, which "
                   "implies it), or one a plug-in registered.")
@click.option("--clusters", "n_clusters", type=click.IntRange(min=2), default=None,
              help="conv-vade: components of the mixture prior (default 10).")
@click.option("--pretrain-steps", "pretrain_steps", type=click.IntRange(min=0), default=None,
              help="conv-vade: steps against N(0, I) before the mixture is fitted to the codes (default 200).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@library_errors
def train_command(source, run_dir, resume, overwrite, no_progress, as_json, data_dir, nproc, labels, arch,
                  **options):
    """Train a convolutional VAE on SOURCE (a folder, a .csv manifest or a data set name such as digits)."""
    if nproc is not None and nproc > 1 and "RANK" not in os.environ:
        from cvae_features.training import TrainConfig

        batch = options.get("batch_size") or TrainConfig.batch_size
        if nproc > batch:
            raise click.BadParameter(f"--nproc {nproc} is more processes than a batch of {batch} image(s) can feed "
                                     "(each needs at least one image per step)", param_hint="--nproc")
        sys.exit(_launch(nproc))
    from cvae_features.training import train

    given = {k: v for k, v in options.items() if v is not None}
    model_config = {_MODEL_OPTIONS[k]: v for k, v in given.items() if k in _MODEL_OPTIONS}
    train_config = {_TRAIN_OPTIONS[k]: v for k, v in given.items() if k in _TRAIN_OPTIONS}
    if labels is not None:
        if arch not in (None, "conv-m2"):
            raise click.BadParameter(f"--labels trains the conv-m2 family, not {arch}", param_hint="--arch")
        source, arch = _labelled_source(source, labels, data_dir), "conv-m2"
        train_config.setdefault("labelled_per_batch", LABELLED_PER_BATCH)
    elif not resume and arch != "conv-vade" and ({"n_clusters", "pretrain_steps"} & set(model_config)):
        option = "--clusters" if "n_clusters" in model_config else "--pretrain-steps"
        raise click.BadParameter("needs --arch conv-vade (it shapes the mixture prior of that family)",
                                 param_hint=option)
    elif "labelled_per_batch" in train_config:
        raise click.BadParameter("needs --labels (it draws labelled images into the batches of semi-supervised "
                                 "training)", param_hint="--labelled-per-batch")
    try:
        result = train(source, run_dir, model_config=model_config or None, train_config=train_config or None,
                       resume=resume, overwrite=overwrite, progress=not no_progress, data_dir=data_dir, arch=arch)
    except KeyboardInterrupt:
        # What to rerun depends on what the run dir holds now: --resume only works once a checkpoint exists.
        from cvae_features._train_setup import interrupted_advice

        click.echo(interrupted_advice(Path(run_dir)), err=True)
        sys.exit(130)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # one process of a data-parallel run: the main one reports
    summary = result.to_dict()
    if as_json:
        echo_json(summary)
        return
    best = summary["best_val_loss"]
    click.echo(f"trained {summary['epochs_run']} epochs on {summary['n_train']} images in "
               f"{summary['seconds']:.1f} s ({summary['images_per_s']:.0f} images/s)"
               + (" - stopped early" if summary["stopped_early"] else ""))
    if best is not None:
        click.echo(f"best validation loss {best:.4f} at epoch {summary['best_epoch']} ({summary['n_val']} images)")
    if summary["n_skipped"]:
        click.echo(f"{summary['n_skipped']} files skipped: see {result.run_dir / 'skipped.csv'}")
    click.echo(f"model: {result.run_dir / 'model.pt'}")


def _labelled_source(spec: str, labels: str, data_dir):
    """SOURCE opened, with the labels of LABELS.csv (or its own, for 'source')."""
    from cvae_features.data import open_source
    from cvae_features.data.labelfile import read_label_file, with_labels

    src = open_source(spec, data_dir=data_dir)
    if labels == "source":
        return src
    return with_labels(src, read_label_file(labels), what=f"--labels {labels}")


def _launch(nproc: int) -> int:
    """Run this same command in ``nproc`` processes through torch's launcher (what torchrun runs); the exit
    status of the first process that failed, else 0. The launcher's own log lines are silenced: a failing
    process has already said why in one line (rank 0, or a survivor that lost the others); when every
    failed process was killed by a signal, this says which one, in one line, and returns 1."""
    import logging
    import signal

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    rest, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    os.environ[LAUNCHED] = "1"  # survivors of a killed process leave the report to this launcher
    logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", "cvae_cli.main",
                                         *rest])
    try:
        run(args)
    except ChildFailedError as err:
        # (rank, ProcessFailure); exitcode < 0: killed by that signal; LOST_EXIT: a survivor that lost the
        # others and left the report to this launcher; once one process dies the launcher stops the rest
        # with SIGTERM, so those are the causes only when there is no other
        failures = sorted(err.failures.items())
        causes = [(r, f) for r, f in failures if f.exitcode not in (LOST_EXIT, -signal.SIGTERM)]
        said = [f.exitcode for _, f in causes if f.exitcode > 0]
        if said:  # a process that exited with an error has already said why
            return said[0]
        killed = [(r, f) for r, f in causes or failures if f.exitcode < 0]
        if not killed:
            return 1
        rank, first = killed[0]
        click.echo(f"Error: training process {rank} was stopped by {first.signal_name()} and the launcher stopped the "
                   "others; the run dir keeps the last finished epoch: run the same command with --resume", err=True)
        return 1
    return 0
