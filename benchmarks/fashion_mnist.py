"""Fashion-MNIST representation protocol (BENCHMARKS.md), end to end through the toolkit.

1. ``train`` a ConvVAE on the 60k ``fashion-mnist:train`` images, without labels
   (VAEConfig / TrainConfig defaults unless overridden on the command line);
2. ``extract`` train and test stores of the VAE's μ, of raw pixels and of a PCA of the
   same width as the latent (fitted on train, applied to test through the train store);
3. ``probe_stores`` (what ``cvae probe TRAIN.h5 --test TEST.h5`` runs) on each pair:
   linear, k-NN, clustering (k-means / GMM, k=10, on the test features) and the
   few-label curve (1, 5, 10, 100 labels per class, 5 seeds, the fewshot probe's methods);
4. the cluster probe again on every test store with k-means, the diagonal GMM and UMAP + a full GMM
   (the N2D recipe), over ``--cluster-seeds`` seeds (mean and std).

    python benchmarks/fashion_mnist.py                     # full protocol, tens of minutes on 2 cores
    python benchmarks/fashion_mnist.py --quick             # reduced smoke run, a few minutes
    python benchmarks/fashion_mnist.py --latent-dim 128 --beta 0.1 --out benchmarks/results/fashion_mnist_z128

Results: ``benchmarks/results/fashion_mnist.{md,json}`` (``fashion_mnist_quick.*`` with ``--quick``).
Work files (run dir, stores) go to ``--out-dir`` (default ``benchmarks/_work/fashion_mnist[_quick]``);
``--reuse`` keeps a finished (or finishes an interrupted) training run and complete stores found there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as bc  # noqa: E402

# Anchors and targets of BENCHMARKS.md, in percent: (anchor text, target or None).
ANCHORS = {
    ("linear", "accuracy"): ("84.2 (raw LogReg, Xiao et al. 2017)", 88.0),
    ("knn", "accuracy"): ("85.4 (raw KNN; RBF-SVC 89.7)", 89.0),
    ("kmeans", "acc"): ("47 raw; AE+k-means 61; DEC 62", 62.0),
    ("kmeans", "nmi"): ("51 raw; AE+k-means 64; DEC 65", 65.0),
    ("umap-gmm", "acc"): ("N2D 67.2 (AE codes + UMAP + GMM)", 68.0),
    ("umap-gmm", "nmi"): ("N2D 68.4", 69.0),
}
CLUSTER_METHODS = ("kmeans", "gmm", "umap-gmm")  # also run over --cluster-seeds seeds on every test store
CLUSTER_NAMES = {"kmeans": "k-means", "gmm": "GMM (diag)", "umap-gmm": "UMAP + GMM (full), N2D recipe"}
FEWSHOT_MARGIN = 8.0  # target: VAE >= raw-pixel logistic + 8 points at 10 labels per class
FEATURES = (("vae", "VAE μ"), ("pca", "PCA"), ("raw", "raw pixels"))
TASKS = ("linear", "knn", "cluster", "fewshot")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--quick", action="store_true",
                   help="reduced run: 10k train images, 3 epochs, 2k test images, 2 seeds, labels 1,10")
    p.add_argument("--train-source", default="fashion-mnist:train")
    p.add_argument("--test-source", default="fashion-mnist:test")
    p.add_argument("--data-dir", default=None, help="where the Fashion-MNIST files are looked for first")
    p.add_argument("--max-train-images", type=int, default=None, help="seeded random subset (quick: 10000)")
    p.add_argument("--max-test-images", type=int, default=None, help="seeded random subset (quick: 2000)")
    p.add_argument("--labels-per-class", default=None, help="few-label sizes (default 1,5,10,100; quick 1,10)")
    p.add_argument("--seeds", type=int, default=None, help="few-label seeds 0..N-1 (default 5; quick 2)")
    p.add_argument("--probe-seed", type=int, default=0, help="seeds selection splits and clustering")
    p.add_argument("--cluster-seeds", type=int, default=3, help="seeds 0..N-1 of the clustering over seeds")
    p.add_argument("--out-dir", default=None, help="work files (default benchmarks/_work/fashion_mnist[_quick])")
    p.add_argument("--reuse", action="store_true", help="reuse the run dir and complete stores in --out-dir")
    p.add_argument("--out", default=None, help="results path without suffix "
                                               "(default benchmarks/results/fashion_mnist[_quick])")
    p.add_argument("--no-progress", action="store_true")
    bc.add_config_options(p)
    args = p.parse_args(argv)
    if args.quick:
        args.max_train_images = args.max_train_images or 10_000
        args.max_test_images = args.max_test_images or 2_000
        args.seeds = args.seeds or 2
        args.labels_per_class = args.labels_per_class or "1,10"
        if args.epochs is None:
            args.epochs = 3
    args.seeds = args.seeds or 5
    args.labels_per_class = tuple(int(v) for v in (args.labels_per_class or "1,5,10,100").split(",") if v.strip())
    args.out_dir = Path(args.out_dir or bc.WORK / ("fashion_mnist" + ("_quick" if args.quick else "")))
    return args


def run(args, argv) -> dict:
    from cvae_features import open_source
    from cvae_features.probes import probe_stores

    progress = not args.no_progress and sys.stderr.isatty()
    rec = bc.record_header("fashion_mnist" + ("_quick" if args.quick else ""), __file__, argv)
    stages = bc.Stages()
    t_start = time.perf_counter()
    work = args.out_dir
    work.mkdir(parents=True, exist_ok=True)
    model_over, train_over = bc.config_overrides(args)

    with stages("load data"):
        train_full = open_source(args.train_source, data_dir=args.data_dir)
        test_full = open_source(args.test_source, data_dir=args.data_dir)
        train_src = bc.subset(train_full, args.max_train_images, seed=0)
        test_src = bc.subset(test_full, args.max_test_images, seed=1)
    rec["data"] = {"train": train_full.description, "test": test_full.description,
                   "n_train": len(train_src), "n_test": len(test_src),
                   "train_subset": None if train_src is train_full else "seeded random rows (numpy seed 0)",
                   "test_subset": None if test_src is test_full else "seeded random rows (numpy seed 1)"}

    with stages("train VAE"):
        result, reused = bc.train_run(train_src, work / "run", model_over, train_over, args.reuse, progress)
    model = result.model
    run_config = json.loads((work / "run" / "config.json").read_text())
    rec["overrides"] = {"model": model_over, "train": train_over}
    rec["model_config"] = run_config["model_config"]
    rec["train_config"] = run_config["train_config"]
    rates = [h["images_per_s"] for h in result.history if h["images_per_s"]]
    rec["training"] = dict(result.to_dict(), reused_run=reused, history=result.history,
                           images_per_s_median_epoch=statistics.median(rates) if rates else None)
    bc.say(f"trained: {result.epochs_run} epochs, best epoch {result.best_epoch}, val loss "
           f"{result.best_val_loss}, {result.images_per_s:.0f} images/s")
    dim = model.config.latent_dim
    fp = model.fingerprint()

    paths = {k: (work / f"{k}_train.h5", work / f"{k}_test.h5") for k, _ in FEATURES}
    ex = {}
    with stages("extract VAE"):
        ex["vae_train"] = bc.extract_store(train_src, paths["vae"][0], args.reuse, progress, kind="vae",
                                        fingerprint=fp, model=model)
        ex["vae_test"] = bc.extract_store(test_src, paths["vae"][1], args.reuse, progress, kind="vae",
                                       fingerprint=fp, model=model)
    with stages("extract raw"):
        ex["raw_train"] = bc.extract_store(train_src, paths["raw"][0], args.reuse, progress, kind="raw")
        ex["raw_test"] = bc.extract_store(test_src, paths["raw"][1], args.reuse, progress, kind="raw",
                                       model=paths["raw"][0])
    with stages("extract PCA (fit on train)"):
        ex["pca_train"] = bc.extract_store(train_src, paths["pca"][0], args.reuse, progress, kind="pca", dim=dim)
        from cvae_features import FeatureStore

        with FeatureStore(paths["pca"][0]) as st:
            pca_fp = st.model_fingerprint
        ex["pca_test"] = bc.extract_store(test_src, paths["pca"][1], args.reuse, progress, kind="pca",
                                       fingerprint=pca_fp, dim=dim, model=paths["pca"][0])
    rec["extraction"] = ex

    records, notes, task_seconds = {}, [], {}
    for key, _ in FEATURES:
        marks = []

        def on_task(label, task, marks=marks):
            marks.append((task, time.perf_counter()))
            bc.say(f"    {label}: {task}")

        with stages(f"probe {key}"):
            run_ = probe_stores([(key, *map(str, paths[key]))], TASKS, labels_per_class=args.labels_per_class,
                                seeds=args.seeds, seed=args.probe_seed, on_task=on_task)
            marks.append(("end", time.perf_counter()))
        task_seconds[key] = {t: round(marks[i + 1][1] - s, 2) for i, (t, s) in enumerate(marks[:-1])}
        records[key] = {r.probe: r for r in run_.results[key]}
        notes += [f"{key}: {n}" for n in run_.notes]
    with stages("cluster over seeds"):
        rec["cluster_seeds"] = cluster_over_seeds(paths, args.cluster_seeds)
    rec["probe_settings"] = {"tasks": list(TASKS), "labels_per_class": list(args.labels_per_class),
                             "seeds": list(range(args.seeds)), "seed": args.probe_seed,
                             "called_as": "cvae_features.probes.probe_stores (= cvae probe TRAIN --test TEST)"}
    rec["probes"] = {k: {p: r.to_dict() for p, r in recs.items()} for k, recs in records.items()}
    rec["notes"] = notes
    rec["stage_seconds"] = stages.seconds
    rec["probe_task_seconds"] = task_seconds
    rec["table"] = headline(records, args.labels_per_class, rec["cluster_seeds"])
    rec["wall_s"] = round(time.perf_counter() - t_start, 1)
    return rec


def cluster_over_seeds(paths: dict, n_seeds: int) -> dict:
    """``{features: {method: {"acc"|"nmi"|"ari"|"seconds": [one per seed]}}}``: the cluster probe (k = 10, its
    default preprocessing) on each test store (``paths``: features -> (train store, test store)), each method
    alone, seeds 0..n_seeds-1."""
    from cvae_features import FeatureStore
    from cvae_features.probes import cluster_probe

    out = {}
    for key in paths:
        with FeatureStore(paths[key][1]) as store:
            X, y = store.features, store.labels
        per = out[key] = {m: {"acc": [], "nmi": [], "ari": [], "seconds": []} for m in CLUSTER_METHODS}
        for seed in range(n_seeds):
            for method in CLUSTER_METHODS:
                t = time.perf_counter()
                got = cluster_probe(X, y, methods=(method,), seed=seed).methods[method]
                per[method]["seconds"].append(round(time.perf_counter() - t, 2))
                for metric in ("acc", "nmi", "ari"):
                    per[method][metric].append(got[metric])
            bc.say(f"    {key}: clustering, seed {seed}: " + ", ".join(
                f"{m} ACC {100 * per[m]['acc'][-1]:.1f}" for m in CLUSTER_METHODS))
    return out


def headline(records: dict, ks, seeds: dict) -> list:
    """Rows of the result table: probe, metric, value per feature kind (fractions), anchor, target."""
    rows = []

    def add(probe, metric, getter, anchor="", target=None, std_getter=None):
        row = {"probe": probe, "metric": metric, "anchor": anchor, "target": target}
        for key, _ in FEATURES:
            try:
                row[key] = getter(records[key])
                row[key + "_std"] = std_getter(records[key]) if std_getter else None
            except (KeyError, TypeError):
                row[key], row[key + "_std"] = None, None
        rows.append(row)

    add("linear", "test accuracy", lambda r: r["linear"].accuracy, *ANCHORS[("linear", "accuracy")])
    add("k-NN", "test accuracy", lambda r: r["knn"].accuracy, *ANCHORS[("knn", "accuracy")])
    for method in ("kmeans", "gmm"):
        for metric in ("acc", "nmi", "ari"):
            anchor, target = ANCHORS.get((method, metric), ("", None))
            add(f"{CLUSTER_NAMES[method]} k=10", metric.upper(),
                lambda r, m=method, x=metric: r["cluster"].methods[m][x], anchor, target)
    for method in CLUSTER_METHODS:
        for metric in ("acc", "nmi", "ari"):
            anchor, target = ANCHORS.get((method, metric), ("", None)) if method == "umap-gmm" else ("", None)
            row = {"probe": f"{CLUSTER_NAMES[method]} k=10, {len(seeds['vae'][method][metric])} seeds",
                   "metric": metric.upper(), "anchor": anchor, "target": target}
            for key, _ in FEATURES:
                values = seeds[key][method][metric]
                row[key], row[key + "_std"] = statistics.mean(values), statistics.pstdev(values)
            rows.append(row)
    few = records["raw"].get("fewshot")
    for k in ks:
        raw_log = few.curves["logistic"][str(k)]["mean"] if few is not None else None
        for method in records["vae"]["fewshot"].methods:
            target = anchor = None
            if k == 10 and raw_log is not None:
                target = 100 * raw_log + FEWSHOT_MARGIN
                anchor = f"raw logistic, same draws: {100 * raw_log:.1f}"
            add("few labels", f"{method} @ {k}/class",
                lambda r, m=method, kk=k: r["fewshot"].curves[m][str(kk)]["mean"], anchor or "", target,
                std_getter=lambda r, m=method, kk=k: r["fewshot"].curves[m][str(kk)]["std"])
    return rows


def markdown(rec: dict, args) -> str:
    quick = args.quick
    title = "# Fashion-MNIST representation protocol" + (" (QUICK run: reduced, not comparable with the targets)"
                                                          if quick else "")
    d, t, m = rec["data"], rec["training"], rec["model_config"]
    lines = [title, ""] + bc.header_lines(rec) + [""]
    lines += [f"Data: VAE trained without labels on {d['n_train']:,} images of `{args.train_source}`"
              + (f" ({d['train_subset']})" if d["train_subset"] else "")
              + f"; probes on {d['n_train']:,} train / {d['n_test']:,} test rows"
              + (f" (test: {d['test_subset']})" if d["test_subset"] else "") + ".  ",
              f"Model: latent {m['latent_dim']}, β {m['beta']}, {m['likelihood']}, widths "
              f"{m['widths'] or 'default'}, convs/level {m['convs_per_level']}, batch norm {m['batch_norm']}; "
              f"{t['epochs_run']} epochs (best {t['best_epoch']}), {t['images_per_s']:.0f} training images/s "
              f"over the run ({t['images_per_s_median_epoch'] or float('nan'):.0f} in the median epoch)"
              + (" (reused run)" if t["reused_run"] else "") + ".  ",
              f"Features: VAE μ ({m['latent_dim']}), PCA ({m['latent_dim']} components fitted on the train "
              f"rows, applied to test via the train store), raw pixels ({rec['extraction']['raw_train']['dim']}, "
              "values in [0, 1]). Every number below comes "
              "from `probe_stores` (what `cvae probe TRAIN.h5 --test TEST.h5` runs); hyper-parameters and "
              "preprocessing are chosen on training rows only. Values in %.", ""]
    header = ["probe", "metric", "VAE μ", "PCA", "raw pixels", "anchor (BENCHMARKS.md)", "target (VAE μ)",
              "VAE μ meets it"]
    body = []
    for row in rec["table"]:
        cells = [bc.pct_std(row[k], row[k + "_std"]) if row[k + "_std"] is not None else bc.pct(row[k])
                 for k, _ in FEATURES]
        tgt = row["target"]
        met = "" if tgt is None or row["vae"] is None else (
            "n/a (quick)" if quick else "yes" if 100 * row["vae"] >= tgt - 1e-9 else "no")
        body.append([row["probe"], row["metric"], *cells, row["anchor"] or "",
                     f"≥ {tgt:.1f}" if tgt is not None else "", met])
    lines += bc.md_table(header, body) + [""]
    lines += ["Few-label rows: mean ± std over seeds " + ", ".join(map(str, rec["probe_settings"]["seeds"]))
              + "; the target at 10 labels per class is the raw-pixel logistic regression on the same draws "
                f"plus {FEWSHOT_MARGIN:.0f} points.", ""]

    choice_rows = []
    for key, name in FEATURES:
        p = rec["probes"][key]
        lin, knn = p.get("linear", {}), p.get("knn", {})
        choice_rows.append([name, lin.get("preprocessing"), lin.get("C"), knn.get("k"), knn.get("metric"),
                            knn.get("weights")])
    lines += ["Choices made on a validation split of the training rows:", ""]
    lines += bc.md_table(["features", "linear preprocessing", "linear C", "k-NN k", "k-NN metric", "k-NN weights"],
                         choice_rows) + [""]
    lines += ["Wall time per stage (s):", ""]
    lines += bc.md_table(list(rec["stage_seconds"]), [[f"{v:.0f}" for v in rec["stage_seconds"].values()]]) + [""]
    if rec["notes"]:
        lines += ["Notes:", ""] + [f"- {n}" for n in rec["notes"]] + [""]
    lines += bc.config_lines("Resolved model config", rec["model_config"])
    lines += bc.config_lines("Resolved train config", rec["train_config"])
    lines += bc.config_lines("Overrides given (everything else is a package default)", rec["overrides"])
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    rec = run(args, argv)
    text = markdown(rec, args)
    print(text)
    bc.write_run("fashion_mnist", args, rec, text)  # the arguments recorded, the files written where --quick/--out say
    return 0


if __name__ == "__main__":
    sys.exit(main())
