"""Choosing the default model for Fashion-MNIST without touching the test split.

One call trains one candidate setting on the 60k ``fashion-mnist:train`` images (no labels),
embeds them (μ), and scores the embedding on a VALIDATION split of the training rows:
the probes are fitted on 50k training rows and scored on the other 10k (seeded), and the
clustering probe clusters those 10k rows. The test split is never read, so the setting chosen
from this table can be reported on the test split afterwards (``benchmarks/fashion_mnist.py``).

    python benchmarks/fashion_mnist_tuning.py --name z128_b0.1 --latent-dim 128 --beta 0.1 --epochs 10
    python benchmarks/fashion_mnist_tuning.py --summarize      # table of every recorded setting

Each call writes ``benchmarks/results/fashion_mnist_tuning/<name>.json``; ``--summarize``
writes ``benchmarks/results/fashion_mnist_tuning.md`` from all of them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as bc  # noqa: E402

TUNING = bc.RESULTS / "fashion_mnist_tuning"
# The rows the package default was chosen from (2026-11-22, before the final test-split runs of
# fashion_mnist.py and one_class.py). Rows recorded later are checks, reported beside them.
CANDIDATES = ("z256_b0.05_e8", "z128_b0.1_e8", "z128_b0.1_deep_bn_e8", "z128_b0.1_deep_e8")
VAL_ROWS = 10_000
# The validation numbers the summary compares rows on, as getters of a record's "validation" dict.
METRICS = {"linear": lambda v: v["linear"]["accuracy"], "k-NN": lambda v: v["knn"]["accuracy"],
           "k-means ACC": lambda v: v["cluster"]["l2"]["acc"],
           "label spreading @10": lambda v: v["fewshot10"]["label_spreading"]["mean"]}
CLUSTER_PREPS = ("l2", "standardize", "none")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--name", help="name of this setting (file name of its record)")
    p.add_argument("--note", default="", help="one line on what this setting tries")
    p.add_argument("--source", default="fashion-mnist:train", help="training images (labels only score)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--results-dir", default=None, help=f"where records go (default {TUNING})")
    p.add_argument("--max-train-images", type=int, default=None, help="seeded subset (for smoke runs)")
    p.add_argument("--summarize", action="store_true", help="only write the table of all recorded settings")
    p.add_argument("--out-dir", default=None, help="run dirs (default benchmarks/_work/tuning/<name>)")
    p.add_argument("--no-progress", action="store_true")
    bc.add_config_options(p)
    args = p.parse_args(argv)
    if not args.summarize and not args.name:
        p.error("--name is required unless --summarize is given")
    return args


def embed_all(model, images: np.ndarray, batch: int = 1024) -> np.ndarray:
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            out.append(model.embed(torch.from_numpy(images[i:i + batch])).numpy())
    return np.concatenate(out).astype(np.float32)


def validation_scores(Z: np.ndarray, y: np.ndarray, seed: int = 0) -> dict:
    """Probe scores with 50k training rows as 'train' and the other 10k as 'validation'."""
    from cvae_features.probes import cluster_probe, fewshot_curve, knn_probe, linear_probe

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_val = min(VAL_ROWS, len(y) // 5)
    fit, val = np.sort(order[n_val:]), np.sort(order[:n_val])
    out, secs = {}, {}
    t = time.perf_counter()
    lin = linear_probe(Z[fit], y[fit], Z[val], y[val], seed=seed)
    out["linear"] = {"accuracy": lin.accuracy, "preprocessing": lin.preprocessing, "C": lin.C}
    secs["linear"] = time.perf_counter() - t
    t = time.perf_counter()
    knn = knn_probe(Z[fit], y[fit], Z[val], y[val], seed=seed)
    out["knn"] = {"accuracy": knn.accuracy, "k": knn.k, "metric": knn.metric, "weights": knn.weights}
    secs["knn"] = time.perf_counter() - t
    t = time.perf_counter()
    out["cluster"] = {}
    for prep in CLUSTER_PREPS:
        cl = cluster_probe(Z[val], y[val], methods=("kmeans",), preprocessing=prep, seed=seed)
        out["cluster"][prep] = {k: cl.methods["kmeans"][k] for k in ("acc", "nmi", "ari")}
    secs["cluster"] = time.perf_counter() - t
    t = time.perf_counter()
    few = fewshot_curve(Z[fit], y[fit], Z[val], y[val], labels_per_class=(10,), seeds=(0, 1, 2),
                        methods=("logistic", "label_spreading"))
    out["fewshot10"] = {m: few.curves[m]["10"] for m in ("logistic", "label_spreading")}
    secs["fewshot"] = time.perf_counter() - t
    out["seconds"] = secs
    return out


def run(args, argv) -> dict:
    from cvae_features import open_source

    rec = bc.record_header("fashion_mnist_tuning", __file__, argv)
    t0 = time.perf_counter()
    src = bc.subset(open_source(args.source, data_dir=args.data_dir), args.max_train_images, seed=0)
    model_over, train_over = bc.config_overrides(args)
    work = Path(args.out_dir) if args.out_dir else bc.WORK / "tuning" / args.name
    t = time.perf_counter()
    result, _ = bc.train_run(src, work / "run", model_over, train_over, False,
                             not args.no_progress and sys.stderr.isatty())
    train_s = time.perf_counter() - t
    run_config = json.loads((work / "run" / "config.json").read_text())
    Z = embed_all(result.model, src.images)
    rec.update(name=args.name, note=args.note, source=args.source, n_train=len(src), overrides={"model": model_over, "train": train_over},
               model_config=run_config["model_config"], train_config=run_config["train_config"],
               train_s=round(train_s, 1), images_per_s=result.images_per_s, best_val_loss=result.best_val_loss,
               epochs_run=result.epochs_run, validation=validation_scores(Z, src.labels))
    rec["wall_s"] = round(time.perf_counter() - t0, 1)
    return rec


def choose(recs: list):
    """(candidate rows, chosen row): the rule for the package default, applied to CANDIDATES (all rows if none
    of them are recorded); the chosen row is None when there are no rows."""
    cands = [r for r in recs if r["name"] in CANDIDATES] or list(recs)
    best = max(cands, key=lambda r: (r["validation"]["linear"]["accuracy"], -r["train_s"])) if cands else None
    return cands, best


def load_records(folder: Path = TUNING) -> list:
    """Every recorded setting in ``folder``, oldest first."""
    return sorted((json.loads(p.read_text()) for p in folder.glob("*.json")), key=lambda r: r["date"])


def summarize(folder: Path) -> Path:
    recs = load_records(folder)
    rows = []
    for r in recs:
        v, mc, tc = r["validation"], r["model_config"], r["train_config"]
        km = v["cluster"]["l2"]
        rows.append([
            f"`{r['name']}`", mc["latent_dim"], mc["beta"], ",".join(map(str, mc["widths"] or ["default"])),
            mc["convs_per_level"], "yes" if mc["batch_norm"] else "no", tc.get("augment") or "none", tc["epochs"],
            f"{r['train_s'] / 60:.0f}", bc.pct(v["linear"]["accuracy"]), bc.pct(v["knn"]["accuracy"]),
            f"{bc.pct(km['acc'])} / {bc.pct(km['nmi'])}",
            " · ".join(f"{p} {bc.pct(v['cluster'][p]['acc'])}" for p in CLUSTER_PREPS if p != "l2"),
            bc.pct(v["fewshot10"]["logistic"]["mean"]), bc.pct(v["fewshot10"]["label_spreading"]["mean"]),
            r.get("note", ""),
        ])
    lines = [
        "# Fashion-MNIST: settings tried for the default model (validation split of train)",
        "",
        "Every row: one VAE trained without labels on the 60k `fashion-mnist:train` images, then probes",
        "fitted on 50k of those rows and scored on the other 10k (seeded); k-means clusters those 10k rows.",
        "The test split was not read to make these choices. Values in %; k-means columns: ACC / NMI with the",
        "probe's default preprocessing (centre + L2), then ACC with the other two preprocessings.",
        "Few labels: 10 per class, 3 seeds, drawn from the 50k rows. Each row's JSON (command, commit, date,",
        "machine, every number) is in `benchmarks/results/fashion_mnist_tuning/`. \"train min\": wall minutes;",
        "the runs here went two at a time, one thread each, on the 2 shared cores.",
        "",
    ]
    lines += bc.md_table(["setting", "latent", "β", "widths", "convs/level", "BN", "augment", "epochs", "train min",
                          "linear", "k-NN", "k-means ACC / NMI", "k-means ACC, other prep",
                          "logistic @10", "label spreading @10", "what it tries"], rows)
    if recs:
        cands, best = choose(recs)
        names = ", ".join(f"`{r['name']}`" for r in cands)
        lines += ["", f"Rule for the package default: the best validation linear accuracy (the target furthest from "
                      f"reach in the earlier test-split run), ties to the faster setting, among the rows it was "
                      f"chosen from ({names}). Here: `{best['name']}` (latent {best['model_config']['latent_dim']}, "
                      f"β {best['model_config']['beta']}). " + _package_default_line(best)]
        epochs = sorted({r["train_config"]["epochs"] for r in cands})
        lines += ["", f"Those rows trained {' or '.join(map(str, epochs))} epochs; the package default trains "
                      f"{_default_epochs()}, measured on the test split by `fashion_mnist.md`."]
        km = {r["name"]: r["validation"]["cluster"]["l2"]["acc"] for r in cands}
        if km[best["name"]] < max(km.values()):
            lines[-1] += (f" The rule trades clustering for the linear probe: the chosen row's k-means ACC "
                          f"({bc.pct(km[best['name']])}) is below the best of those rows ({bc.pct(max(km.values()))}).")
        lines += _later_rows(recs, cands, best)
        lines += _augment_lines(recs, best)
        spread = _seed_spread(recs)
        if spread:
            lines += ["", "The same setting trained with another seed (the noise floor of this table):", ""] + spread
    dirty = [f"`{r['name']}` (commit `{(r.get('commit') or '?')[:7]}`)" for r in recs if r.get("working_tree_modified")]
    if dirty:
        lines += ["", "Run from a working tree with uncommitted changes (the tuning script itself was not yet "
                      "committed, or was being edited, when these started): " + ", ".join(dirty) + "."]
    lines += ["", "Earlier runs on the test split, before this table existed (not used for the choice): "
                  "`fashion_mnist_tuning_z128_b0.1_e20.md` (latent 128, β 0.1, 20 epochs: linear 85.9, k-NN 89.6, "
                  "k-means 58.6 / 58.7) and `one_class_fashion_mnist_e10.md` (the then default latent 64, β 1, "
                  "10 epochs per class). They showed which targets were missed and suggested the candidates; "
                  "the choice among the rows above used the validation split only."]
    path = folder.with_name(folder.name + ".md")
    path.write_text("\n".join(lines) + "\n")
    return path


def _later_rows(recs, cands, best) -> list:
    """Rows recorded after the choice: what the default gives at its own epoch count, and what else was tried."""
    later = [r for r in recs if r not in cands]
    if not later:
        return []
    out = ["", "Rows recorded after the choice (checks, not candidates): "
               + ", ".join(f"`{r['name']}`" for r in later) + ".", ""]
    same_arch = [r for r in later if r["model_config"] == best["model_config"]
                 and r["train_config"]["epochs"] == _default_epochs()]
    gap, target = None, 0.88
    test_path = bc.RESULTS / "fashion_mnist.json"
    if same_arch and test_path.exists():
        test = json.loads(test_path.read_text())
        rows = [r for r in same_arch if test["model_config"] == r["model_config"]
                and test["train_config"]["epochs"] == r["train_config"]["epochs"]
                and test["train_config"].get("augment") == r["train_config"].get("augment")]
        if rows:
            linear_row = next((t for t in test.get("table", []) if t.get("probe") == "linear"), {})
            target = (linear_row.get("target") or 100 * target) / 100
            test_lin = test["probes"]["vae"]["linear"]["accuracy"]
            val_lin = float(np.mean([r["validation"]["linear"]["accuracy"] for r in rows]))
            gap = val_lin - test_lin
            names = " and ".join(f"`{r['name']}`" for r in rows)
            out.append(f"- {names}: the package default itself. Validation linear {bc.pct(val_lin)} against "
                       f"{bc.pct(test_lin)} on the test split (`fashion_mnist.md`, the same setting): the test split "
                       f"scores {abs(100 * gap):.1f} points {'lower' if gap >= 0 else 'higher'}, so reaching "
                       f"{100 * target:g} on test needs about {100 * (target + gap):.1f} here.")
    def mean_of(rows, get):
        return float(np.mean([get(r["validation"]) for r in rows]))

    base = [r for r in recs if _setting(r) == _setting(best)]
    predictions = []
    for rows in _by_setting([r for r in later if r not in same_arch and _setting(r) != _setting(best)]):
        d_lin = mean_of(rows, METRICS["linear"]) - mean_of(base, METRICS["linear"])
        if d_lin <= 0:
            continue
        names = " and ".join(f"`{r['name']}`" for r in rows)
        seeds = f"means over {len(rows)} and {len(base)} training seeds" if len(rows) > 1 or len(base) > 1 \
            else "one seed each"
        parts = [f"{k} {100 * (mean_of(rows, get) - mean_of(base, get)):+.1f}" for k, get in METRICS.items()]
        text = f"- {names} against the chosen setting ({seeds}): " + ", ".join(parts) + " points"
        if gap is not None:
            pred = mean_of(rows, METRICS["linear"]) - gap
            predictions.append(pred)
            text += (f"; with the gap above its linear probe would be about {bc.pct(pred)} on test, "
                     f"{'still below' if pred < target else 'at or above'} the {100 * target:g} target")
        out.append(text + ".")
    if predictions and max(predictions) < target and _default_matches(best):
        text = ("The package default was kept: no setting checked afterwards is predicted to reach the linear "
                "target on test, and each gain above is weighed against the k-NN and k-means changes beside it")
        km = [_spread(rows, METRICS["k-means ACC"]) for rows in _seed_groups(recs)]
        if km:
            text += f" (k-means ACC moves by up to {max(km):.1f} points between training seeds alone; see below)"
        out += ["", text + "."]
    return out


def _augment_lines(recs, best) -> list:
    """The chosen setting trained with each input augmentation, against none (means over training seeds)."""
    def without_augment(r):
        keys = ("epochs", "batch_size", "lr", "schedule", "beta_warmup_epochs", "val_fraction", "max_images")
        return json.dumps([r["model_config"], [r["train_config"].get(k) for k in keys]], sort_keys=True)

    same = [r for r in recs if without_augment(r) == without_augment(best)]
    groups: dict = {}
    for r in same:
        groups.setdefault(r["train_config"].get("augment"), []).append(r)
    if len(groups) < 2 or None not in groups:
        return []
    metrics = dict(METRICS, **{"logistic @10": lambda v: v["fewshot10"]["logistic"]["mean"]})
    base = groups.pop(None)
    out = ["", f"Input augmentation (`--augment`), the chosen setting otherwise unchanged, against none "
               f"({len(base)} seed(s)); differences in points, means over the training seeds of each:", ""]
    rows, best_spec = [], None
    for spec, rs in groups.items():
        diffs = {k: 100 * (np.mean([g(r["validation"]) for r in rs]) - np.mean([g(r["validation"]) for r in base]))
                 for k, g in metrics.items()}
        rows.append([f"`{spec}`", len(rs)] + [f"{d:+.1f}" for d in diffs.values()])
        if best_spec is None or diffs["linear"] > best_spec[1]:
            best_spec = (spec, diffs["linear"])
    out += bc.md_table(["augment", "seeds"] + list(metrics), rows)
    from cvae_features.augment import resolve_augment
    from cvae_features.training import TrainConfig

    default = resolve_augment(TrainConfig().augment, best["model_config"]["image_size"]).spec()
    out += ["", f"Rule: the best mean validation linear accuracy, if above none: `{best_spec[0]}` "
                f"({best_spec[1]:+.1f}). The package default (`{TrainConfig().augment}`) gives `{default}` at "
                f"{best['model_config']['image_size']} px: {'the same' if default == best_spec[0] else 'NOT the same'}."]
    return out


def _setting(r) -> str:
    """Everything that defines a row's model except the training seed."""
    train = {k: v for k, v in r["train_config"].items() if k != "seed"}
    return json.dumps([r["model_config"], train], sort_keys=True)


def _by_setting(recs) -> list:
    """Rows grouped by setting (first appearance order), each group sorted by training seed."""
    groups: dict = {}
    for r in recs:
        groups.setdefault(_setting(r), []).append(r)
    return [sorted(rows, key=lambda r: r["train_config"]["seed"]) for rows in groups.values()]


def _seed_groups(recs) -> list:
    """The settings trained with more than one seed."""
    return [rows for rows in _by_setting(recs) if len(rows) > 1]


def _spread(rows, get) -> float:
    vals = [get(r["validation"]) for r in rows]
    return 100 * (max(vals) - min(vals))


def _seed_spread(recs) -> list:
    """For settings trained with more than one seed: how far apart the seeds land (the noise floor of this table)."""
    out = []
    for rows in _seed_groups(recs):
        names = ", ".join(f"`{r['name']}` (seed {r['train_config']['seed']})" for r in rows)
        (first, v0), *rest = [(k, _spread(rows, get)) for k, get in METRICS.items()]
        out.append(f"- {names}, the same validation split: {first} differs by {v0:.1f}, "
                   + ", ".join(f"{k} by {v:.1f}" for k, v in rest) + " points.")
    return out


def _default_epochs() -> int:
    from cvae_features import TrainConfig

    return TrainConfig().epochs


def _default_matches(best: dict) -> bool:
    """Whether the package's VAEConfig has the architecture of the row ``best``."""
    from cvae_features import VAEConfig

    keys = ("latent_dim", "beta", "widths", "convs_per_level", "batch_norm", "likelihood")
    return all(best["model_config"][k] == (list(v) if isinstance(v := getattr(VAEConfig(), k), tuple) else v)
               for k in keys)


def _package_default_line(best: dict) -> str:
    from cvae_features import TrainConfig, VAEConfig

    same = _default_matches(best)
    default = VAEConfig()
    return (f"The package default now (VAEConfig / TrainConfig): latent {default.latent_dim}, β {default.beta}, "
            f"{TrainConfig().epochs} epochs; its architecture {'matches' if same else 'DIFFERS FROM'} this row "
            f"(trained for {best['train_config']['epochs']} epochs here).")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    folder = Path(args.results_dir) if args.results_dir else TUNING
    if not args.summarize:
        rec = run(args, argv)
        folder.mkdir(parents=True, exist_ok=True)
        from cvae_features._json import to_builtin

        path = folder / f"{args.name}.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(to_builtin(rec), indent=2) + "\n")
        tmp.replace(path)
        bc.say(f"wrote {path}")
    bc.say(f"wrote {summarize(folder)}")


if __name__ == "__main__":
    main()
