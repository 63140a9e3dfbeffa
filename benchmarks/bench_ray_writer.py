"""Ray engine: is one store writer enough? The writer's own rate against the Ray pipeline's.

The ray engine (``--engine ray``) brings every row back to the driver, where the one
``StoreWriter`` commits it; the other design would have actors write shards joined at the end.
One writer is the simpler design (one file, one plan, ``--resume`` as it is) and is right as long
as the writer is faster than the pipeline feeding it. Measured on the same PNG files and model,
in one run:

- **writer**: the time spent inside ``StoreWriter.write_batch`` during the extractions below
  (wrapped with a timer), per row; and the writer alone on synthetic rows of the same width, at
  batch sizes 256 and 1024, over ``--writer-rows`` rows;
- **one actor's work, per core**: what each actor does to a chunk (the data layer's decoding,
  then the encoder, one thread), in one process: the rate one core adds to the pool;
- **Ray pipeline alone**: ``RayEngine.iter_batches`` (decode + encode in the actor pool, rows back
  to the driver) consumed without writing: the time to the first batch (actor start-up) and the
  rate after it;
- **end to end**: ``extract(..., engine="ray")`` and ``extract(..., engine="local")``.

Ray is started once (its start-up is reported separately); each extraction starts its own actor
pool. The files are the first ``--n`` Fashion-MNIST test images as 28x28 gray PNG files; the
model is the package default for 28x28x1 (latent 256) with random weights (speed only).

    python benchmarks/bench_ray_writer.py            # 5,000 files, 3 repetitions, about a minute on 2 cores

Results go to benchmarks/results/ray_writer.{md,json}; work files to benchmarks/_work/ (git-ignored).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _common import header_lines, record_header, md_table, write_results  # benchmarks/ is on sys.path
from cvae_features.data import open_source
from cvae_features.extraction import ExtractOptions, extract
from cvae_features.featurizers import VAEFeaturizer
from cvae_features.model import ConvVAE, VAEConfig
from cvae_features.store import StoreWriter

HERE = Path(__file__).resolve().parent


class WriterTimer:
    """Sums the wall time spent inside ``StoreWriter.write_batch`` and the rows it committed."""

    def __init__(self):
        self.seconds, self.rows = 0.0, 0
        self._original = StoreWriter.write_batch

    def __enter__(self):
        timer, original = self, self._original

        def timed(writer, plan_index, *args, **kwargs):
            start = time.perf_counter()
            try:
                return original(writer, plan_index, *args, **kwargs)
            finally:
                timer.seconds += time.perf_counter() - start
                timer.rows += len(plan_index)

        StoreWriter.write_batch = timed
        return self

    def __exit__(self, *exc):
        StoreWriter.write_batch = self._original


def write_pngs(root: Path, n: int) -> Path:
    src = open_source("fashion-mnist:test")
    root.mkdir(parents=True, exist_ok=True)
    for i in range(min(n, len(src))):
        Image.fromarray(src.images[i, 0]).save(root / f"{i:05d}.png")
    return root


def run_extract(folder, model_path, store, engine, batch_size) -> dict:
    stamps = []
    with WriterTimer() as timer:
        res = extract(folder, store, model=model_path, batch_size=batch_size, engine=engine, overwrite=True,
                      progress=False, workers=None, callback=lambda p: stamps.append((time.perf_counter(), p.n_done)))
    return {"seconds": res.seconds, "images_per_s": res.images_per_s, "rows": res.n_rows,
            "writer_seconds": timer.seconds, "writer_rows": timer.rows,
            "writer_rows_per_s": timer.rows / timer.seconds, "writer_share_of_wall": timer.seconds / res.seconds,
            "after_first_batch_per_s": _rate_after_first(stamps)}


def _rate_after_first(stamps) -> float:
    (t0, n0), (t1, n1) = stamps[0], stamps[-1]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else float("nan")


def run_pipeline(folder, model_path, batch_size) -> dict:
    from cvae_features.ray_engine import RayEngine

    src = open_source(str(folder))
    feat = VAEFeaturizer.from_reference(model_path, src, ExtractOptions())
    encode = feat.batch_fn([], "cpu")
    start = time.perf_counter()
    stamps = []
    n = 0
    with RayEngine() as engine:
        for batch in engine.iter_batches(src, feat.preprocess, encode, indices=np.arange(len(src)),
                                         batch_size=batch_size):
            n += len(batch)
            stamps.append((time.perf_counter(), n))
    total = time.perf_counter() - start
    return {"seconds": total, "images_per_s": n / total, "first_batch_s": stamps[0][0] - start,
            "after_first_batch_per_s": _rate_after_first(stamps)}


def run_per_core(folder, model_path, batch_size) -> dict:
    """The work of one actor (decode with the data layer, encode with one thread), timed in this process."""
    import torch

    from cvae_features.data import iter_batches

    src = open_source(str(folder))
    feat = VAEFeaturizer.from_reference(model_path, src, ExtractOptions())
    encode = feat.batch_fn([], "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        n = sum(len(b) for b in iter_batches(src, feat.preprocess, batch_size=batch_size, workers=0,
                                             transform=encode))
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    return {"seconds": seconds, "images_per_s": n / seconds}


def run_writer_alone(path, n_rows, batch_size, dim=256) -> dict:
    """``StoreWriter.write_batch`` alone: ``n_rows`` synthetic rows of width ``dim``, labelled, in batches."""
    keys = [f"class_{i % 10}/{i:07d}.png" for i in range(n_rows)]
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((batch_size, dim)).astype(np.float32)
    writer = StoreWriter.create(path, feature_kind="vae", dim=dim, preprocess={"size": 28, "channels": 1},
                                source="synthetic", plan_keys=keys, label_names=[str(k) for k in range(10)])
    try:
        start = time.perf_counter()
        for lo in range(0, n_rows, batch_size):
            index = np.arange(lo, min(lo + batch_size, n_rows))
            writer.write_batch(index, feats[:len(index)], index % 10)
        seconds = time.perf_counter() - start
    finally:
        writer.close()
    return {"seconds": seconds, "rows_per_s": n_rows / seconds}


def main(argv=None) -> dict:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5_000, help="PNG files (default 5,000)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each variant (medians reported)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--writer-rows", type=int, default=100_000, help="rows of the writer-alone runs")
    parser.add_argument("--work", type=Path, default=HERE / "_work", help="work folder (default benchmarks/_work)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ray_writer", help="results stem")
    args = parser.parse_args(argv)
    record = record_header("ray_writer", __file__, argv)
    t_start = time.perf_counter()
    work = args.work / "ray_writer"
    shutil.rmtree(work, ignore_errors=True)
    folder = write_pngs(work / "png", args.n)
    model_path = ConvVAE(VAEConfig(image_size=28, channels=1)).save(work / "model.pt")

    start = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="error")
    ray_init_s = time.perf_counter() - start
    variants = {
        "local": lambda: run_extract(folder, model_path, work / "local.h5", "local", args.batch_size),
        "ray": lambda: run_extract(folder, model_path, work / "ray.h5", "ray", args.batch_size),
        "pipeline": lambda: run_pipeline(folder, model_path, args.batch_size),
        "per_core": lambda: run_per_core(folder, model_path, args.batch_size),
        "writer_256": lambda: run_writer_alone(work / "w.h5", args.writer_rows, 256),
        "writer_1024": lambda: run_writer_alone(work / "w.h5", args.writer_rows, 1024),
    }
    runs = {name: [] for name in variants}
    for rep in range(args.reps):
        for name in (list(variants) if rep % 2 == 0 else list(variants)[::-1]):
            runs[name].append(variants[name]())
            print(f"rep {rep + 1}: {name:11s} {runs[name][-1]}", file=sys.stderr, flush=True)
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)

    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    record.update(n_files=args.n, batch_size=args.batch_size, reps=args.reps, writer_rows=args.writer_rows,
                  ray_version=ray.__version__,
                  ray_init_s=ray_init_s, runs=runs, medians=med, wall_s=time.perf_counter() - t_start)
    write_results(args.out, record, markdown(record))
    return record


def markdown(rec: dict) -> str:
    med = rec["medians"]
    core = med["per_core"]["images_per_s"]
    rows = [
        ["writer alone, batch 256 (synthetic rows)", f"{med['writer_256']['rows_per_s']:,.0f}"],
        ["writer alone, batch 1024 (synthetic rows)", f"{med['writer_1024']['rows_per_s']:,.0f}"],
        ["writer inside the ray engine's run (time in `write_batch`)", f"{med['ray']['writer_rows_per_s']:,.0f}"],
        ["writer inside the local engine's run (time in `write_batch`)", f"{med['local']['writer_rows_per_s']:,.0f}"],
        ["one actor's work on one core (decode + encode, 1 thread)", f"{core:,.0f}"],
        ["Ray pipeline alone, 2 actors, after the first batch", f"{med['pipeline']['after_first_batch_per_s']:,.0f}"],
        ["Ray pipeline alone, 2 actors, whole pass (with the actors' start-up)",
         f"{med['pipeline']['images_per_s']:,.0f}"],
        ["end to end, ray engine, whole pass", f"{med['ray']['images_per_s']:,.0f}"],
        ["end to end, local engine, whole pass", f"{med['local']['images_per_s']:,.0f}"],
    ]
    cores = {b: med[f"writer_{b}"]["rows_per_s"] / core for b in (256, 1024)}
    lines = ["# Ray engine: one writer against the Ray pipeline", ""] + header_lines(rec) + [
        "",
        f"{rec['n_files']:,} Fashion-MNIST test images as 28x28 gray PNG files, default 28x28x1 model (latent 256), "
        f"batch {rec['batch_size']}; the writer alone wrote {rec['writer_rows']:,} rows of 256 floats. Ray "
        f"{rec['ray_version']} started once ({rec['ray_init_s']:.1f} s); an actor pool starts with each pass (first "
        f"batch after {med['pipeline']['first_batch_s']:.1f} s). Medians of {rec['reps']} alternating repetitions.",
        "", *md_table(["what", "rows (images)/s"], rows), "",
        f"The writer took {med['ray']['writer_share_of_wall']:.1%} of the ray engine's wall time here. One writer "
        f"commits as many rows as about {cores[256]:,.0f} actor cores produce at batch 256, {cores[1024]:,.0f} at "
        "batch 1024 (writer alone / one actor's work on one core), for these smallest inputs (28x28 gray PNG, "
        "the default encoder); larger images cost the actors more per row and the writer the same.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
