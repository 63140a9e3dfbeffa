"""Training speed: the toolkit's ``train()`` against a minimal hand-written PyTorch loop.

Both train the same ConvVAE (same config, batch size, Adam + one-cycle
schedule) on the same uint8 images already in memory. The toolkit call is
timed end to end (model set-up, shuffling, loss bookkeeping, NaN guard,
a checkpoint and model file every epoch, history files and the
reconstruction plot); the minimal loop does nothing but the steps. The two
alternate a few times and the median ratio of their images/s is reported,
with the final training loss of each.

    python benchmarks/bench_train.py            # 4,000 Fashion-MNIST images, ~1-2 min on 2 cores
    python benchmarks/bench_train.py --quick    # smoke run, ~20 s

Results go to benchmarks/results/train_speed.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import git_commit  # benchmarks/ is on sys.path when a script runs
from cvae_features import __version__
from cvae_features._json import dumps
from cvae_features.data import load_images, open_source, infer_preprocess
from cvae_features.model import ConvVAE, VAEConfig
from cvae_features.training import TrainConfig, train

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 0.95


def load_data(spec: str, n: int, data_dir=None) -> torch.Tensor:
    """The first n images of the source as a uint8 tensor (n, C, S, S)."""
    source = open_source(spec, data_dir=data_dir)
    n = min(n, len(source))
    images, _, _ = load_images(source.subset(np.arange(n)), infer_preprocess(source))
    return images


def run_toolkit(images, model_config: VAEConfig, tcfg: TrainConfig) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = train(images, Path(tmp) / "run", model_config=model_config, train_config=tcfg, progress=False)
        wall = time.perf_counter() - t0
    n_seen = result.n_train * result.epochs_run
    return {"wall_s": wall, "images_per_s": n_seen / wall, "final_loss": result.history[-1]["train_loss"],
            "hot_loop_images_per_s": result.images_per_s}


def run_minimal(images, model_config: VAEConfig, tcfg: TrainConfig) -> dict:
    """The least a PyTorch user would write: shuffle, forward, backward, step."""
    t0 = time.perf_counter()
    torch.manual_seed(tcfg.seed)
    model = ConvVAE(model_config)
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr)
    n, bs = len(images), tcfg.batch_size
    steps = (n + bs - 1) // bs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tcfg.lr, total_steps=tcfg.epochs * steps)
    model.train()
    for _ in range(tcfg.epochs):
        perm = torch.randperm(n)
        losses = []
        for b in range(steps):
            out = model(images[perm[b * bs:(b + 1) * bs]])
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            sched.step()
            losses.append(out.loss.detach())
    final = float(torch.stack(losses).mean())
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "images_per_s": n * tcfg.epochs / wall, "final_loss": final}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--source", default="fashion-mnist:train")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--images", type=int, default=None, help="training images (default 4000; quick 1500)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default 2; quick 1)")
    parser.add_argument("--rounds", type=int, default=None, help="alternations (default 5; quick 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default=str(RESULTS / "train_speed"), help="results path without suffix")
    args = parser.parse_args(argv)
    n = args.images or (1500 if args.quick else 4000)
    epochs = args.epochs or (1 if args.quick else 2)
    rounds = args.rounds or (2 if args.quick else 5)
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    images = load_data(args.source, n, args.data_dir)
    model_config = VAEConfig(image_size=images.shape[-1], channels=images.shape[1])
    # No validation split: both loops see the same images for the same number of steps.
    tcfg = TrainConfig(epochs=epochs, batch_size=args.batch_size, val_fraction=0.0, device="cpu", seed=0)

    run_minimal(images[:256], model_config, TrainConfig(epochs=1, batch_size=args.batch_size))  # warm-up
    rows = []
    for r in range(rounds):
        # Alternate which goes first so that a drift in machine load hits both alike.
        order = [("toolkit", run_toolkit), ("minimal", run_minimal)]
        if r % 2:
            order.reverse()
        row = {"round": r + 1}
        for name, fn in order:
            row[name] = fn(images, model_config, tcfg)
            print(f"round {r + 1} {name}: {row[name]['images_per_s']:.0f} images/s, "
                  f"final loss {row[name]['final_loss']:.2f}", file=sys.stderr)
        row["ratio"] = row["toolkit"]["images_per_s"] / row["minimal"]["images_per_s"]
        rows.append(row)
    wall = time.perf_counter() - started

    ratio = statistics.median(r["ratio"] for r in rows)
    loss_t = statistics.median(r["toolkit"]["final_loss"] for r in rows)
    loss_m = statistics.median(r["minimal"]["final_loss"] for r in rows)
    record = {
        "benchmark": "train_speed",
        "command": "python " + " ".join([os.path.relpath(__file__, Path.cwd())] + (argv or sys.argv[1:])),
        **git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "device": "cpu", "load_average_1min_before_after": [load_before, os.getloadavg()[0]]},
        "tool_version": __version__,
        "wall_s": wall,
        "setup": {"source": args.source, "n_images": len(images), "image_shape": list(images.shape[1:]),
                  "epochs": epochs, "batch_size": args.batch_size, "rounds": rounds,
                  "model_config": model_config.to_dict(), "train_config": tcfg.to_dict()},
        "rounds": rows,
        "median_ratio": ratio,
        "median_final_loss": {"toolkit": loss_t, "minimal": loss_m},
        "final_loss_relative_difference": abs(loss_t - loss_m) / loss_m,
        "target_ratio": TARGET,
        "target_met": ratio >= TARGET,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(dumps(record, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(record))
    print(markdown(record))
    return 0


def markdown(rec: dict) -> str:
    s, m = rec["setup"], rec["machine"]
    lines = [
        "# Training speed: `train()` vs a minimal PyTorch loop",
        "",
        f"Command: `{rec['command']}`  ",
        f"Commit: `{rec['commit']}`" + (" (working tree modified)" if rec["working_tree_modified"] else "") + "  ",
        f"Date: {rec['date']}; wall time {rec['wall_s']:.0f} s  ",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']} ({m['torch_threads']} threads), "
        f"{m['device']}; 1-min load average before/after: "
        f"{m['load_average_1min_before_after'][0]:.1f}/{m['load_average_1min_before_after'][1]:.1f} "
        "(the machine is shared; the alternation is there to cancel that out)",
        "",
        f"Data: {s['n_images']} images {tuple(s['image_shape'])} from `{s['source']}`, in memory as uint8; "
        f"{s['epochs']} epoch(s) per run, batch {s['batch_size']}, default ConvVAE (latent "
        f"{s['model_config']['latent_dim']}), Adam + one-cycle, no validation split. The toolkit is timed end to end "
        "(set-up, checkpoint + model file every epoch, history, plot); the minimal loop only steps.",
        "",
        "| round | toolkit images/s | minimal images/s | ratio | toolkit final loss | minimal final loss |",
        "|---|---|---|---|---|---|",
    ]
    for r in rec["rounds"]:
        lines.append(f"| {r['round']} | {r['toolkit']['images_per_s']:.0f} | {r['minimal']['images_per_s']:.0f} | "
                     f"{r['ratio']:.3f} | {r['toolkit']['final_loss']:.2f} | {r['minimal']['final_loss']:.2f} |")
    met = "met" if rec["target_met"] else "NOT met"
    lines += [
        "",
        f"**Median ratio: {rec['median_ratio']:.3f}** (target >= {rec['target_ratio']}: {met}).  ",
        f"Median final training loss: toolkit {rec['median_final_loss']['toolkit']:.2f}, minimal "
        f"{rec['median_final_loss']['minimal']:.2f} (relative difference "
        f"{100 * rec['final_loss_relative_difference']:.1f} %; different seeds for init and shuffle).",
        "",
    ]
    outliers = [r["round"] for r in rec["rounds"] if abs(r["ratio"] / rec["median_ratio"] - 1) > 0.2]
    if outliers:
        lines += [f"Round(s) {', '.join(map(str, outliers))} differ from the median by more than 20 %: one side of "
                  "the pair ran during a load spike from other work on this shared machine, which is why the "
                  "median is reported.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
