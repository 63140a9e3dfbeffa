"""Choose the demo's VAE on digits without looking at digits:test.

Each candidate config is trained on ``digits:train`` (its own validation split
for the model file), its μ features are extracted for ``digits:train``, and the
probes run on a seeded stratified split of those training rows (the same split
for every candidate and for raw pixels). The score used to choose is the mean
of linear accuracy, k-NN accuracy, label spreading at 10 labels per class and
k-means NMI. Results: benchmarks/results/digits_demo.md / .json.

    python benchmarks/digits_demo.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import _common as bc

CANDIDATES = [
    {"latent_dim": 16, "beta": 1.0},
    {"latent_dim": 16, "beta": 0.5},
    {"latent_dim": 32, "beta": 1.0},
    {"latent_dim": 32, "beta": 0.5},
    {"latent_dim": 32, "beta": 0.25},
    {"latent_dim": 16, "beta": 1.0, "batch_norm": True},
]
TRAINING = {"epochs": 60, "batch_size": 64, "lr": 3e-3, "val_fraction": 0.1, "seed": 0}
SCORE = (("linear", "accuracy"), ("knn", "accuracy"), ("fewshot", "label_spreading@10"),
         ("cluster", "kmeans_nmi"))


def _metrics(records) -> dict:
    from cvae_features.report import summary_rows

    return {(r["probe"], r["metric"]): r["value"] for r in summary_rows(records)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="results stem (default benchmarks/results/digits_demo)")
    args = parser.parse_args(argv)

    from cvae_features import extract, train
    from cvae_features.demo import DEMO_MODEL, DEMO_TRAINING
    from cvae_features.probes import probe_stores

    rec = bc.record_header("digits_demo", "benchmarks/digits_demo.py", argv if argv is not None else sys.argv[1:])
    t0 = time.perf_counter()
    tasks = ("linear", "knn", "cluster", "fewshot")
    options = {"labels_per_class": (1, 10), "seeds": 3}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        extract("digits:train", tmp / "raw.h5", features="raw", progress=False)
        raw = _metrics(probe_stores([("raw", tmp / "raw.h5", None)], tasks, **options).results)
        for i, cand in enumerate(CANDIDATES):
            bc.say(f"candidate {i}: {cand}")
            start = time.perf_counter()
            result = train("digits:train", tmp / f"run{i}", model_config={"image_size": 8, "channels": 1, **cand},
                           train_config=TRAINING, progress=False)
            extract("digits:train", tmp / f"vae{i}.h5", model=tmp / f"run{i}", progress=False)
            metrics = _metrics(probe_stores([("vae", tmp / f"vae{i}.h5", None)], tasks, **options).results)
            score = sum(metrics[k] for k in SCORE) / len(SCORE)
            rows.append({"config": cand, "best_val_loss": result.best_val_loss, "score": score,
                         "metrics": {f"{p} {m}": v for (p, m), v in metrics.items()},
                         "seconds": time.perf_counter() - start})
    best = max(rows, key=lambda r: r["score"])
    shipped = {"latent_dim": DEMO_MODEL.latent_dim, "beta": DEMO_MODEL.beta,
               **({"batch_norm": True} if DEMO_MODEL.batch_norm else {})}
    rec.update({"wall_s": time.perf_counter() - t0, "training": TRAINING, "probe_options": options,
                "selection_score": [f"{p} {m}" for p, m in SCORE], "candidates": rows,
                "raw": {f"{p} {m}": v for (p, m), v in raw.items()}, "best": best["config"],
                "shipped_demo_config": shipped, "shipped_training": DEMO_TRAINING.to_dict()})

    shown = [("linear", "accuracy"), ("knn", "accuracy"), ("fewshot", "logistic@10"),
             ("fewshot", "label_spreading@10"), ("cluster", "kmeans_acc"), ("cluster", "kmeans_nmi")]
    table = [[", ".join(f"{k}={v}" for k, v in r["config"].items()), f"{r['best_val_loss']:.2f}",
              *(bc.pct(r["metrics"][f"{p} {m}"]) for p, m in shown), bc.pct(r["score"])] for r in rows]
    table.append(["raw pixels", "-", *(bc.pct(raw[k]) for k in shown), bc.pct(sum(raw[k] for k in SCORE) / 4)])
    md = ["# Choosing the demo VAE on digits (no test data)", "", *bc.header_lines(rec), "",
          "Every candidate is trained on `digits:train` (" + ", ".join(f"{k} {v}" for k, v in TRAINING.items())
          + "); the probes run on a seeded stratified 80/20 split of `digits:train` features, the same for every "
          "candidate and for raw pixels; `digits:test` is never read. Few-label numbers: mean over 3 seeds. "
          "Selection score = mean of " + ", ".join(f"{p} {m}" for p, m in SCORE) + ". Values in %.", "",
          *bc.md_table(["config", "val loss", *(f"{p} {m}" for p, m in shown), "score"], table), "",
          f"Best by the score: `{best['config']}`. Shipped in `cvae_features/demo.py`: `{shipped}`.", ""]
    bc.write_results(bc.results_stem("digits_demo", False, args.out), rec, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
