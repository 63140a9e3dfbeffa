"""VaDE (the ``conv-vade`` family) on Fashion-MNIST: the mixture prior's own clusters beside k-means on μ.

For each seed:

1. ``train`` a ``conv-vade`` model on the ``fashion-mnist:train`` images without labels (what
   ``cvae train fashion-mnist:train --arch conv-vade`` runs);
2. ``extract`` train and test stores of its μ, carrying the model;
3. ``probe_stores`` on the pair (what ``cvae probe TRAIN.h5 --test TEST.h5 --task cluster
   --cluster-methods kmeans,gmm,prior`` runs): the test rows clustered by k-means and the diagonal
   GMM on μ, and by the model's prior (argmax_c p(c | z = μ)); the same on the training rows.

Settings are fixed before the run, none chosen by a label: 10 clusters (the number of classes, as
in every clustering benchmark), latent width 10 and β = 1 (VaDE's, Jiang et al. 2017), the
mixture fitted after ``--pretrain-epochs`` epochs of plain-VAE training; every other setting is
the package default. Labels only score the clusters. Over the seeds the table gives mean ± std,
and the "selected" row the seed whose validation loss (held-out training images, no label) is
lowest: the one a user without labels would keep.

    python benchmarks/fashion_mnist_vade.py             # 60k images, 20 epochs, 3 seeds: about 1.5 h on 2 cores
    python benchmarks/fashion_mnist_vade.py --quick     # 10k images, 3 epochs, 1 seed: a few minutes

Results: ``benchmarks/results/fashion_mnist_vade[_quick].{md,json}``; work files in
``benchmarks/_work/fashion_mnist_vade[_quick]``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as bc  # noqa: E402

ANCHORS = "VaDE (Jiang et al. 2017): MNIST ACC 94.5; Fashion-MNIST AE+k-means ACC 61, DEC 62 (BENCHMARKS.md)"
METHODS = ("kmeans", "gmm", "prior")
NAMES = {"kmeans": "k-means on μ", "gmm": "GMM (diag) on μ", "prior": "VaDE prior, argmax p(c\\|μ)"}
PRESET_MODEL = {"latent_dim": 10, "beta": 1.0, "n_clusters": 10}
METRICS = ("acc", "nmi", "ari")
FULL = {"epochs": 20, "seeds": 3, "pretrain_epochs": 2.0}
QUICK = {"max_train_images": 10_000, "epochs": 3, "seeds": 1, "pretrain_epochs": 1.0}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--quick", action="store_true", help="10k training images, 3 epochs, 1 seed")
    p.add_argument("--train-source", default="fashion-mnist:train")
    p.add_argument("--test-source", default="fashion-mnist:test")
    p.add_argument("--data-dir", default=None, help="where the Fashion-MNIST files are looked for first")
    p.add_argument("--max-train-images", type=int, default=None, help="seeded random subset (quick: 10000)")
    p.add_argument("--seeds", type=int, default=None, help="training seeds 0..N-1 (default 3; quick 1)")
    p.add_argument("--pretrain-epochs", type=float, default=None,
                   help="epochs of plain-VAE training before the mixture is fitted (default 2; quick 1)")
    p.add_argument("--clusters", type=int, default=None, help="mixture components (default 10)")
    p.add_argument("--out-dir", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--no-progress", action="store_true")
    bc.add_config_options(p)
    args = p.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():  # what the command line leaves unset
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.out_dir = Path(args.out_dir or bc.WORK / ("fashion_mnist_vade" + ("_quick" if args.quick else "")))
    return args


def pretrain_steps(n_images: int, train_config: dict, epochs: float) -> int:
    """Training steps in ``epochs`` epochs of ``n_images`` images (less the validation share)."""
    from cvae_features.training import TrainConfig

    tcfg = TrainConfig(**train_config)
    n_val = int(round(n_images * tcfg.val_fraction))
    return int(round(epochs * math.ceil((n_images - n_val) / tcfg.batch_size)))


def run_seed(args, seed: int, train_src, test_src, model_over: dict, train_over: dict, stages) -> dict:
    from cvae_features import train
    from cvae_features.probes import cluster_probe, probe_stores
    from cvae_features.probes.suite import read_store_rows

    work = args.out_dir / f"seed{seed}"
    with stages(f"seed {seed}: train"):
        result = train(train_src, work / "run", arch="conv-vade", model_config=model_over,
                       train_config={**train_over, "seed": seed}, overwrite=True, progress=not args.no_progress)
    model = result.model
    stores = {}
    for side, src in (("train", train_src), ("test", test_src)):
        with stages(f"seed {seed}: extract {side}"):
            stores[side] = bc.extract_store(src, work / f"{side}.h5", reuse=False, progress=not args.no_progress,
                                            kind="vae", model=work / "run", carry_weights=True)
    with stages(f"seed {seed}: cluster"):
        run = probe_stores([("vade", work / "train.h5", work / "test.h5")], "cluster", cluster_methods=METHODS,
                           n_clusters=model.config.n_clusters, seed=seed)
        test = run.results["vade"][0]
        rows = read_store_rows(work / "train.h5", "TRAIN")
        train = cluster_probe(rows["X"], rows["y"], n_clusters=model.config.n_clusters, methods=METHODS,
                              prior=model.prior, seed=seed)
    pick = lambda rec: {m: {k: rec.methods[m][k] for k in (*METRICS, "cluster_sizes")} for m in METHODS}  # noqa: E731
    return {"seed": seed, "training": result.to_dict(), "best_val_loss": result.best_val_loss,
            "model_config": model.config.to_dict(), "stores": stores, "test": pick(test), "train": pick(train),
            "notes": run.notes}


def summarise(seeds: list) -> dict:
    """Per side, method and metric: mean, std over seeds, and the value of the selected seed."""
    finite = [s for s in seeds if s["best_val_loss"] is not None]
    selected = min(finite, key=lambda s: s["best_val_loss"])["seed"] if finite else seeds[0]["seed"]
    out = {"selected_seed": selected, "selected_by": "lowest validation loss (held-out training images, no labels)"}
    for side in ("test", "train"):
        out[side] = {}
        for m in METHODS:
            vals = {k: [s[side][m][k] for s in seeds] for k in METRICS}
            chosen = next(s for s in seeds if s["seed"] == selected)[side][m]
            out[side][m] = {k: {"mean": statistics.fmean(v), "std": statistics.pstdev(v) if len(v) > 1 else 0.0,
                                "selected": chosen[k]} for k, v in vals.items()}
    return out


def run(args, argv) -> dict:
    from cvae_features import open_source

    rec = bc.record_header("fashion_mnist_vade" + ("_quick" if args.quick else ""), __file__, argv)
    t0 = time.perf_counter()
    stages = bc.Stages()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    train_src = bc.subset(open_source(args.train_source, data_dir=args.data_dir), args.max_train_images, seed=0)
    test_src = open_source(args.test_source, data_dir=args.data_dir)
    model_over, train_over = bc.config_overrides(args, PRESET_MODEL, {"epochs": args.epochs})
    if args.clusters is not None:
        model_over["n_clusters"] = args.clusters
    model_over["pretrain_steps"] = pretrain_steps(len(train_src), train_over, args.pretrain_epochs)
    bc.say(f"conv-vade on {len(train_src)} images, {args.seeds} seed(s), model {model_over}, training {train_over}")
    seeds = [run_seed(args, s, train_src, test_src, model_over, train_over, stages) for s in range(args.seeds)]
    rec.update({"train_source": args.train_source, "test_source": args.test_source, "n_train": len(train_src),
                "n_test": len(test_src), "model_overrides": model_over, "train_overrides": train_over,
                "pretrain_epochs": args.pretrain_epochs, "seeds": seeds, "summary": summarise(seeds),
                "stage_seconds": stages.seconds})
    rec["wall_s"] = round(time.perf_counter() - t0, 1)
    return rec


def markdown(rec: dict) -> str:
    s, first = rec["summary"], rec["seeds"][0]
    m, t = first["model_config"], first["training"]
    n = len(rec["seeds"])
    title = "# VaDE (conv-vade) on Fashion-MNIST: the mixture prior's clusters beside k-means on μ"
    lines = [title + (" (QUICK run: reduced)" if "quick" in rec["benchmark"] else ""), ""]
    lines += bc.header_lines(rec) + [""]
    lines += [f"{rec['n_train']:,} training images (no labels), {rec['n_test']:,} test images; conv-vade, latent "
              f"{m['latent_dim']}, β {m['beta']}, {m['n_clusters']} components, mixture fitted after "
              f"{m['pretrain_steps']} steps ({rec['pretrain_epochs']} epoch(s)) of plain-VAE training; "
              f"{t['epochs_run']} epochs; {n} seed(s). Settings fixed in advance; labels only score. "
              f"Selected seed: {s['selected_seed']} ({s['selected_by']}).", "",
              f"Anchors: {ANCHORS}.", ""]
    how = f"mean ± std over {n} seeds; selected seed" if n > 1 else "one seed"
    cell = ((lambda v: f"{bc.pct_std(v['mean'], v['std'])}; {bc.pct(v['selected'])}") if n > 1
            else (lambda v: bc.pct(v["selected"])))
    for side, what in (("test", f"test rows ({rec['n_test']:,})"), ("train", f"training rows ({rec['n_train']:,})")):
        lines += [f"Clusters of the {what}, in % ({how}):", ""]
        rows = [[NAMES[meth]] + [cell(v[k]) for k in METRICS] for meth, v in s[side].items()]
        lines += bc.md_table(["method", "ACC", "NMI", "ARI"], rows) + [""]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    rec = run(args, argv)
    bc.write_run("fashion_mnist_vade", args, rec, markdown(rec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
