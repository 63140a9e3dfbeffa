"""Shared helpers of the benchmark scripts: the run record (command, commit, date, machine),
wall time per stage, configuration overrides from the command line, and writing a result
as Markdown + JSON.

Benchmark scripts import this as ``_common`` (the scripts' folder is first on ``sys.path``
when they run as ``python benchmarks/<name>.py``). It never touches the library's behaviour.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cvae_features._json import dumps

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "benchmarks" / "_work"

# Command-line option -> field of VAEConfig / TrainConfig. Options left unset are not passed on,
# so the package defaults stay the single source of truth (as in `cvae train`).
MODEL_OPTIONS = {"latent_dim": "latent_dim", "beta": "beta", "likelihood": "likelihood",
                 "convs_per_level": "convs_per_level", "batch_norm": "batch_norm", "widths": "widths"}
TRAIN_OPTIONS = {"epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "schedule": "schedule",
                 "beta_warmup_epochs": "beta_warmup_epochs", "val_fraction": "val_fraction",
                 "patience": "patience", "train_seed": "seed", "device": "device", "augment": "augment"}


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """Options that override the package's VAEConfig / TrainConfig defaults (unset = default)."""
    g = parser.add_argument_group("model and training (default: the package defaults, VAEConfig/TrainConfig)")
    g.add_argument("--latent-dim", type=int, default=None)
    g.add_argument("--beta", type=float, default=None)
    g.add_argument("--likelihood", choices=("bernoulli", "gaussian"), default=None)
    g.add_argument("--convs-per-level", type=int, default=None)
    g.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--widths", type=_int_tuple, default=None, help="channels per level, e.g. 64,128,256")
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--schedule", choices=("onecycle", "cosine", "constant"), default=None)
    g.add_argument("--beta-warmup-epochs", type=float, default=None)
    g.add_argument("--val-fraction", type=float, default=None)
    g.add_argument("--patience", type=int, default=None)
    g.add_argument("--train-seed", type=int, default=None, help="TrainConfig.seed")
    g.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    g.add_argument("--augment", default=None, metavar="SPEC", help="TrainConfig.augment, e.g. shift=2,noise=0.1")


def _int_tuple(text: str) -> tuple:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None


def config_overrides(args: argparse.Namespace, preset_model=None, preset_train=None) -> tuple[dict, dict]:
    """(model_overrides, train_overrides): a script's presets, then the options given on the command line."""
    model = dict(preset_model or {})
    train = dict(preset_train or {})
    for opt, name in MODEL_OPTIONS.items():
        if getattr(args, opt, None) is not None:
            model[name] = getattr(args, opt)
    for opt, name in TRAIN_OPTIONS.items():
        if getattr(args, opt, None) is not None:
            train[name] = getattr(args, opt)
    return model, train


def git_commit() -> dict:
    """The checkout's HEAD and whether tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip() != ""
    except OSError:
        head, dirty = "", None
    return {"commit": head or None, "working_tree_modified": dirty}


def machine() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "load_average_1min": os.getloadavg()[0]}


def command_line(script: str, argv) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", os.path.relpath(script, Path.cwd())] + args)


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Stages:
    """Wall time per named stage: ``with stages("train"): ...``; ``stages.seconds`` maps name -> s."""

    def __init__(self, log=True):
        self.seconds: dict = {}
        self.log = log
        self._t0 = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.log:
            say(f"[{self.elapsed():7.0f} s] {name} ...")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 2)
            if self.log:
                say(f"[{self.elapsed():7.0f} s] {name} done in {self.seconds[name]:.1f} s")

    def elapsed(self) -> float:
        return time.perf_counter() - self._t0


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def record_header(benchmark: str, script: str, argv) -> dict:
    """The fields every result JSON starts with."""
    from cvae_features import __version__

    return {"benchmark": benchmark, "command": command_line(script, argv), **git_commit(), "date": utc_now(),
            "machine": machine(), "tool_version": __version__}


def header_lines(rec: dict) -> list:
    """Markdown lines for command, commit, date, wall time and machine."""
    m = rec["machine"]
    dirty = " (working tree modified)" if rec.get("working_tree_modified") else ""
    where = f"GPU {m['gpu']}" if m.get("gpu") else "CPU"
    return [
        f"Command: `{rec['command']}`  ",
        f"Commit: `{rec['commit']}`{dirty}; cvae-features {rec['tool_version']}  ",
        f"Date: {rec['date']}; wall time {rec.get('wall_s', float('nan')):.0f} s  ",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']} ({m['torch_threads']} threads), "
        f"{where}; 1-min load average at start {m['load_average_1min']:.1f} (shared machine)",
    ]


def pct(value, digits: int = 1) -> str:
    """A fraction in [0, 1] as a percentage string ('-' for None/NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.{digits}f}"


def pct_std(mean, std, digits: int = 1) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.{digits}f} ± {100 * std:.{digits}f}"


def md_table(header: list, rows: list) -> list:
    """Markdown table lines from a header and rows of cells."""
    out = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return out


def config_lines(title: str, d: dict) -> list:
    """A JSON block under a heading, for configs in the Markdown."""
    return [f"{title}:", "", "```json", dumps(d, indent=1, sort_keys=True), "```", ""]


def write_results(stem, record: dict, markdown: str) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` (each via a temporary file, then renamed)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix, text in ((".json", dumps(record, indent=2) + "\n"), (".md", markdown)):
        path = stem.with_name(stem.name + suffix)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        paths.append(path)
    return paths[0], paths[1]


def write_run(name: str, args: argparse.Namespace, record: dict, markdown: str) -> tuple[Path, Path]:
    """Record the parsed ``args`` in ``record`` (``arguments``), write it where :func:`results_stem` says
    (``args.quick``, ``args.out``) and say where."""
    record["arguments"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    paths = write_results(results_stem(name, getattr(args, "quick", False), getattr(args, "out", None)), record,
                          markdown)
    say(f"wrote {paths[0]} and {paths[1]}")
    return paths


def results_stem(name: str, quick: bool, out=None) -> Path:
    """Where results go: ``--out`` when given, else ``benchmarks/results/<name>[_quick]``."""
    if out:
        return Path(out)
    return RESULTS / (name + ("_quick" if quick else ""))


# --------------------------------------------------------------------------- data and stores

def subset(source, n, seed):
    """A seeded random subset of ``n`` rows (in source order), or the source itself."""
    if n is None or n >= len(source):
        return source
    rows = np.sort(np.random.default_rng(seed).choice(len(source), n, replace=False))
    return source.subset(rows)


def store_matches(path: Path, src, kind: str, fingerprint=None, dim=None) -> bool:
    """Whether ``path`` is a complete store of ``kind`` over exactly ``src``'s keys (and model/width)."""
    from cvae_features import FeatureStore

    if not path.exists():
        return False
    try:
        with FeatureStore(path) as st:
            return (st.is_complete and st.feature_kind == kind and st.n_skipped == 0
                    and (fingerprint is None or st.model_fingerprint == fingerprint)
                    and (dim is None or st.dim == dim) and list(st.keys) == list(src.keys))
    except Exception:  # noqa: BLE001 - an unreadable store is simply rebuilt
        return False


def extract_store(src, path: Path, reuse: bool, progress: bool, *, kind: str, fingerprint=None, dim=None, **kw):
    """``extract`` into ``path`` (replacing it) unless ``reuse`` finds a matching complete store there.

    Returns a JSON-ready dict: the ExtractResult fields plus ``reused``.
    """
    from cvae_features import FeatureStore, extract

    if reuse and store_matches(path, src, kind, fingerprint, dim):
        with FeatureStore(path) as st:
            return {"path": str(path), "reused": True, "n_rows": st.n_rows, "dim": st.dim,
                    "model_fingerprint": st.model_fingerprint}
    res = extract(src, path, features=kind, dim=dim if kind == "pca" and "model" not in kw else None,
                  overwrite=True, progress=progress, **kw)
    return dict(res.to_dict(), reused=False)


def train_run(source, run_dir: Path, model_over: dict, train_over: dict, reuse: bool, progress: bool):
    """``train`` into ``run_dir``; with ``reuse`` an existing run is resumed (a finished one returns at once).

    Resuming checks that the overrides and the data agree with the recorded run.
    Returns (TrainResult, resumed: bool).
    """
    from cvae_features import train

    resume = reuse and (Path(run_dir) / "checkpoint.pt").exists()
    result = train(source, run_dir, model_config=model_over or None, train_config=train_over or None,
                   resume=resume, overwrite=not resume, progress=progress)
    return result, resume


def write_fmnist_folder(root: Path, n: int, size: int) -> Path:
    """``n`` distinct ``size``x``size`` gray PNGs under ``root`` (one folder per class): the Fashion-MNIST
    test images, enlarged, repeated with a one-pixel shift per copy so that no two files are equal.
    Reused when a previous call finished writing them."""
    from PIL import Image

    from cvae_features.data import open_source

    done = root / f".complete-{n}"
    if done.exists():
        return root
    src = open_source("fashion-mnist:test")
    base = src.images[:, 0]  # uint8 (10000, 28, 28)
    big = np.asarray([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in base])
    labels = np.asarray(src.labels)
    for c in range(10):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        k, copy = i % len(big), i // len(big)
        Image.fromarray(np.roll(big[k], copy, axis=1)).save(root / str(labels[k]) / f"{i:06d}.png",
                                                            optimize=False, compress_level=1)
    done.touch()
    return root
