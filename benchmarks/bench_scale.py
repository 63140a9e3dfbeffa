"""Extraction at scale: the local engine, the Ray engine, and shards joined, side by side in one run.

    python benchmarks/bench_scale.py [--n 50000] [--small 10000] [--rounds 3] [--parts 64]

Writes PNG folders of 32x32 grayscale images (Fashion-MNIST test images, enlarged, repeated with a
one-pixel shift per copy so no two files are equal) and measures, each extraction in its own process
on the same 2 cores, alternated over ``--rounds`` rounds (medians reported):

1. images/s of ``extract(folder, store, model=RUN)`` with the local engine (decoding workers = cores);
2. the same with ``engine="ray"`` on a local Ray started in the process (``ray.init(num_cpus=cores)``):
   Ray's start-up time is measured and reported apart, the rate is over the extraction itself;
   both engines also on ``--small`` files, so that the rate once started ((n - small) / (T(n) - T(small)))
   and the fixed start-up (the actor pool, the decoding workers) are reported apart;
3. two shards (``--shard 0/2`` and ``1/2``, one core each (``--workers 0``), run at the same time as a job
   array would)
   then ``join_stores`` of the two: images/s = files / (wall time of the slower shard + the join);
4. reading: the local run's rows written as one store and as ``--parts`` shard stores (the shard rule)
   joined (virtual datasets), open + read every feature row (all at once, and in batches of 8192), medians; also with the rows repeated
   ``--read-repeat`` times (1,000,000 rows: shards of a realistic size, where opening 64 files is a
   small part of a read);
5. the driver's peak resident memory (``VmHWM`` of the process that calls ``extract``; decoding
   workers and Ray actors are other processes) on ``--small`` versus ``--n`` files, both engines (the runs
   of 1 and 2).

The model is the package default for 32x32x1 images (latent 256) with seeded random weights: the
encoder's cost does not depend on what its weights learned. Targets (issue #13): Ray >= 0.85 x local,
shards + join >= 0.95 x local, reading 64 joined shards >= 0.9 x one file, driver memory within 10 %.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import header_lines, md_table, record_header, say, write_fmnist_folder, write_results  # noqa: E402,E501

HERE = Path(__file__).resolve().parent
SIZE = 32
CORES = 2


def write_folder(root: Path, n: int) -> Path:
    return write_fmnist_folder(root, n, SIZE)


_CHILD = r"""
import json, os, sys, time
from cvae_features.extraction import extract
mode, folder, store, run = sys.argv[1:5]
opts = json.loads(sys.argv[5])
startup = 0.0
if mode == "ray":
    import ray
    t = time.perf_counter()
    ray.init(num_cpus=int(opts.pop("cores")), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    startup = time.perf_counter() - t
    opts["engine"] = "ray"
    if opts.get("max_task_batches"):  # --ray-max-task-batches: the engine's cap on batches per Ray task
        import cvae_features.ray_engine
        cvae_features.ray_engine.MAX_BATCHES_PER_TASK = int(opts["max_task_batches"])
    opts.pop("max_task_batches", None)
else:
    opts.pop("cores", None)
ticks = []  # the time of each committed batch: when the first one came
t, start = time.perf_counter(), time.time()
res = extract(folder, store, model=run, progress=False, overwrite=True,
              callback=lambda p: ticks.append(time.perf_counter()), **opts)
seconds, end = time.perf_counter() - t, time.time()
# VmHWM, this process's own peak resident memory: ru_maxrss would carry over the peak of the parent it was forked from
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024
print(json.dumps({"seconds": seconds, "start": start, "end": end, "startup_s": startup,
                  "first_batch_s": ticks[0] - t if ticks else float("nan"), "n_rows": res.n_rows, "n_skipped": res.n_skipped,
                  "peak_rss_mb": hwm}))
"""


def child(mode: str, folder: Path, store: Path, run: Path, **opts) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", _CHILD, mode, str(folder), str(store), str(run), json.dumps(opts)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"extraction failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def run_local(folder, work, run, name="local") -> dict:
    return result(child("local", folder, work / f"{name}.h5", run, workers=CORES, cores=CORES))


RAY_MAX_TASK_BATCHES = None  # --ray-max-task-batches (None: the engine's own MAX_BATCHES_PER_TASK)
SHARD_WORKERS = 0  # --shard-workers: decoding workers of each one-core shard process


def run_ray(folder, work, run, name="ray") -> dict:
    return result(child("ray", folder, work / f"{name}.h5", run, cores=CORES, max_task_batches=RAY_MAX_TASK_BATCHES))


def run_shards(folder, work, run) -> dict:
    from cvae_features.join import join_stores

    # one core per shard, as a job array gives each task: by default decoding in the shard's own process
    # (--workers 0), which was faster than one decoding worker beside it (--shard-workers 1; docs/scaling.md)
    procs = [child("local", folder, work / f"shard-{i}.h5", run, workers=SHARD_WORKERS, shard=f"{i}/2", cores=1)
             for i in range(2)]
    shards = [result(p) for p in procs]
    # from the first shard's start to the last one's end (each process's start-up, like the other
    # variants', is not counted; they overlap with each other's extraction only when one starts late)
    extracted = max(s["end"] for s in shards) - min(s["start"] for s in shards)
    t = time.perf_counter()
    joined = join_stores(work / "joined.h5", [work / "shard-0.h5", work / "shard-1.h5"], overwrite=True)
    join_s = time.perf_counter() - t
    return {"seconds": extracted + join_s, "extract_s": extracted, "join_s": join_s, "n_rows": joined.n_rows,
            "shard_seconds": [s["seconds"] for s in shards]}


def one_and_parts(store: Path, work: Path, parts: int, repeat: int = 1) -> tuple:
    """The rows of ``store`` (repeated ``repeat`` times, keys made distinct) written as one store and as
    ``parts`` shard stores (the shard rule on each key) joined virtually: (one file, joined store)."""
    from cvae_features.data.sources import shard_of_key
    from cvae_features.join import join_stores
    from cvae_features.store import FeatureStore, StoreWriter

    folder = work / f"parts-{parts}x{repeat}"
    folder.mkdir(exist_ok=True)
    with FeatureStore(store) as s:
        keys = [f"{r}/{k}" for r in range(repeat) for k in s.keys]
        feats, labels = np.tile(s.features, (repeat, 1)), np.tile(s.labels, repeat)
        fields = dict(feature_kind=s.feature_kind, dim=s.dim, preprocess=s.preprocess_dict, source=s.source,
                      source_spec=s.source_spec, label_names=s.label_names, fingerprint=s.model_fingerprint or "",
                      model_config=s.model_config, model_arch=s.model_arch or "")
    one = work / f"one-x{repeat}.h5"
    with StoreWriter.create(one, plan_keys=keys, **fields) as w:
        for start in range(0, len(keys), 65536):
            rows = np.arange(start, min(start + 65536, len(keys)))
            w.write_batch(rows, feats[rows], labels[rows])
    shard = np.asarray([shard_of_key(k, parts) for k in keys])
    for i in range(parts):
        rows = np.flatnonzero(shard == i)
        with StoreWriter.create(folder / f"part-{i:02d}.h5", plan_keys=[keys[r] for r in rows], shard=(i, parts),
                                **fields) as w:
            w.write_batch(np.arange(len(rows)), feats[rows], labels[rows])
    return one, join_stores(work / f"joined-{parts}x{repeat}.h5", [folder], overwrite=True).path


def open_seconds(path: Path) -> float:
    """Opening the store (a joined one checks its parts) and its features dataset's first row."""
    from cvae_features.store import FeatureStore

    t = time.perf_counter()
    with FeatureStore(path) as s:
        s.read_rows(0, 1)
    return time.perf_counter() - t


def time_read(path: Path, batch: int = 0) -> float:
    """Open the store and read every feature row: all at once (``FeatureStore.features``, what the probes,
    ``cvae show`` and a joined store's model read) when ``batch`` is 0, else ``iter_rows(batch)``."""
    from cvae_features.store import FeatureStore

    t = time.perf_counter()
    with FeatureStore(path) as s:
        if batch:
            total = 0.0
            for _, rows in s.iter_rows(batch):
                total += float(rows[:, 0].sum())
        else:
            total = float(s.features[:, 0].sum())
    return time.perf_counter() - t


READ_BATCH = 8192


def jpeg_decode_rate(work: Path, n: int = 1000, side: int = 256, size: int = 64) -> dict:
    """Images/s of one core decoding ``side``x``side`` RGB JPEG files (quality 90) into ``size``x``size``
    model inputs with the data layer's ``decode_image``: the per-core cost of typical photos, which
    dominates extraction at scale (the 32x32 PNGs above are cheap to decode)."""
    from PIL import Image

    from cvae_features.data import Preprocess
    from cvae_features.data.preprocess import decode_image

    folder = work / f"jpeg-{side}"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    for i in range(n):  # smooth pictures with noise, like photos compress (not flat, not pure noise)
        im = Image.fromarray(np.roll(base, i, axis=0)).resize((side, side), Image.BICUBIC)
        noisy = np.clip(np.asarray(im, np.int16) + rng.integers(-12, 13, (side, side, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"{i:05d}.jpg", quality=90)
    pre = Preprocess(size=size, channels=3)
    paths = sorted(folder.glob("*.jpg"))
    decode_image(paths[0], pre)
    t = time.perf_counter()
    for path in paths:
        decode_image(path, pre)
    seconds = time.perf_counter() - t
    return {"n": n, "side": side, "size": size, "bytes_mean": float(np.mean([q.stat().st_size for q in paths])),
            "images_per_s": n / seconds}


def encoder_cost(size: int = 64, channels: int = 3) -> dict:
    """Multiply-accumulates of the default encoder (to the posterior mean) for one image, counted on its
    convolution and linear layers, beside ResNet-50's published 4.1 GMACs at 224x224."""
    import torch

    from cvae_features.model import ConvVAE

    model = ConvVAE(image_size=size, channels=channels)
    macs = []

    def count(mod, inp, out):
        if isinstance(mod, torch.nn.Conv2d):
            macs.append(out.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1])
        elif isinstance(mod, torch.nn.Linear):
            macs.append(out.numel() * mod.in_features)

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (torch.nn.Conv2d,
                                                                                         torch.nn.Linear))]
    with torch.no_grad():
        model.encode(torch.zeros(1, channels, size, size))
    for h in hooks:
        h.remove()
    # the encoder alone on one core (one thread), batch 256, median of 5 batches
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    batch = torch.rand(256, channels, size, size)
    times = []
    with torch.no_grad():
        for _ in range(6):
            t = time.perf_counter()
            model.encode(batch)
            times.append(time.perf_counter() - t)
    torch.set_num_threads(threads)
    return {"size": size, "channels": channels, "gmacs": sum(macs) / 1e9,
            "cpu_images_per_s_per_core": 256 / float(np.median(times[1:]))}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--small", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--parts", type=int, default=64)
    p.add_argument("--read-rounds", type=int, default=7)
    p.add_argument("--read-repeat", type=int, default=20, help="the larger read test: the rows repeated this often")
    p.add_argument("--work", type=Path, default=None, help="where the image folders go (default: a temp dir)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "scale")
    p.add_argument("--render", type=Path, default=None, help="only rewrite the Markdown of a results JSON")
    p.add_argument("--ray-max-task-batches", type=int, default=None,
                   help="cap on batches per Ray task (default: the engine's, 8; 1 is the engine before it)")
    p.add_argument("--shard-workers", type=int, default=0, help="decoding workers of each shard process (default 0)")
    args = p.parse_args(argv)
    global RAY_MAX_TASK_BATCHES, SHARD_WORKERS
    RAY_MAX_TASK_BATCHES, SHARD_WORKERS = args.ray_max_task_batches, args.shard_workers
    if args.render:
        rec = json.loads(args.render.read_text())
        write_results(args.out, rec, render(rec))
        return

    from cvae_features.model import ConvVAE

    t_start = time.perf_counter()
    rec = record_header("scale", "benchmarks/bench_scale.py", argv if argv is not None else sys.argv[1:])
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    say(f"writing {args.n:,} and {args.small:,} PNG files under {work}")
    big = write_folder(work / f"images-{args.n}", args.n)
    small = write_folder(work / f"images-{args.small}", args.small)
    import torch

    torch.manual_seed(0)
    run = work / "model"
    ConvVAE(image_size=SIZE, channels=1).save(run)

    rounds = []
    for r in range(args.rounds):
        row = {}
        for name, fn in (("local", run_local), ("ray", run_ray), ("shards", run_shards)):
            row[name] = fn(big, work, run)
            say(f"round {r}: {name} {args.n / row[name]['seconds']:,.0f} images/s ({row[name]['seconds']:.1f} s)")
        for name, fn in (("local", run_local), ("ray", run_ray)):  # the small folder: fixed costs and memory
            row[f"{name}_small"] = fn(small, work, run, f"{name}-small")  # local.h5 stays the large store
            say(f"round {r}: {name}, {args.small:,} files, {row[f'{name}_small']['seconds']:.1f} s")
        rounds.append(row)
    say("reading: one file vs the same rows in joined shards")
    reads = {}
    for repeat in (1, args.read_repeat):
        one, joined = one_and_parts(work / "local.h5", work, args.parts, repeat)
        got = reads[str(repeat)] = {"rows": args.n * repeat, "one": [], "joined": [], "one_batched": [],
                                    "joined_batched": [], "open_one": [],
                                    "open_joined": []}
        for _ in range(args.read_rounds):  # alternated
            got["one"].append(time_read(one))
            got["joined"].append(time_read(joined))
            got["one_batched"].append(time_read(one, READ_BATCH))
            got["joined_batched"].append(time_read(joined, READ_BATCH))
            got["open_one"].append(open_seconds(one))
            got["open_joined"].append(open_seconds(joined))

    say("per-core JPEG decoding and the encoder's cost (for the estimate in docs/scaling.md)")
    jpeg = jpeg_decode_rate(work)
    cost = encoder_cost()
    store_bytes = (work / "local.h5").stat().st_size
    rec.update(jpeg=jpeg, encoder=cost, store_bytes_per_row=store_bytes / args.n, read_batch=READ_BATCH, ray_max_task_batches=RAY_MAX_TASK_BATCHES,
               shard_workers=SHARD_WORKERS, n=args.n, small=args.small, parts=args.parts, cores=CORES, rounds=rounds, reads=reads,
               model={"image_size": SIZE, "channels": 1, "latent_dim": 256, "weights": "seeded random"},
               wall_s=time.perf_counter() - t_start)
    write_results(args.out, rec, "(rendering failed: python benchmarks/bench_scale.py --render THIS.json)\n")
    write_results(args.out, rec, render(rec))


def after_startup(rec: dict, engine: str) -> tuple:
    """(images/s, fixed seconds) of ``engine`` once started: the rate between the small and the large folder
    (median times), i.e. ``(n - small) / (T(n) - T(small))``, and what remains of T(small) at that rate (the
    engine's fixed start-up: decoding workers, Ray's actor pool and their first batch)."""
    n, small = rec["n"], rec["small"]
    t_big = float(np.median([r[engine]["seconds"] for r in rec["rounds"]]))
    t_small = float(np.median([r[f"{engine}_small"]["seconds"] for r in rec["rounds"]]))
    rate = (n - small) / (t_big - t_small)
    return rate, t_small - small / rate


def render(rec: dict) -> str:
    n, small = rec["n"], rec["small"]
    med = {name: float(np.median([n / r[name]["seconds"] for r in rec["rounds"]])) for name in ("local", "ray",
                                                                                               "shards")}
    running = {name: after_startup(rec, name) for name in ("local", "ray")}
    first = {name: float(np.median([r[name]["first_batch_s"] for r in rec["rounds"]])) for name in ("local", "ray")}
    startup = float(np.median([r["ray"]["startup_s"] for r in rec["rounds"]]))
    join_s = float(np.median([r["shards"]["join_s"] for r in rec["rounds"]]))
    x_ray = running["ray"][0] / running["local"][0]
    lines = ["# Extraction at scale: local engine, Ray engine, shards + join", ""] + header_lines(rec) + [
        "",
        f"{n:,} PNG files (32x32 gray, Fashion-MNIST test images shifted per copy), model 32x32x1 -> latent 256 "
        f"(default conv stack, seeded random weights), {rec['cores']} cores; each extraction in its own process, "
        f"the variants alternated over {len(rec['rounds'])} rounds (medians).",
        ""]
    lines += md_table(["variant", "first batch after", "images/s, whole run", "x local",
                       "fixed start-up", "images/s once started", "x local"], [
        ["local engine (2 decoding workers, encoder in the workers)", f"{first['local']:.1f} s",
         f"{med['local']:,.0f}", "1.00", f"{running['local'][1]:.1f} s", f"{running['local'][0]:,.0f}", "1.00"],
        [f"Ray engine, local Ray with {rec['cores']} CPUs (`ray.init` {startup:.1f} s before, not counted)"
         + (f", at most {rec['ray_max_task_batches']} batch(es) per task" if rec.get("ray_max_task_batches") else ""),
         f"{first['ray']:.1f} s", f"{med['ray']:,.0f}", f"{med['ray'] / med['local']:.2f}",
         f"{running['ray'][1]:.1f} s", f"{running['ray'][0]:,.0f}", f"{x_ray:.2f}"],
        [f"2 shards at once (`--workers {rec.get('shard_workers', 0)}`, one core each) + join ({join_s:.2f} s, counted)", "", f"{med['shards']:,.0f}",
         f"{med['shards'] / med['local']:.2f}", "", "", ""],
    ])
    lines += ["", f"\"Once started\": the rate between {small:,} and {n:,} files, `({n:,} - {small:,}) / (T({n:,}) - "
              f"T({small:,}))` (median times), so every fixed cost of the engine drops out; \"fixed start-up\": what "
              f"remains of T({small:,}) at that rate (starting the decoding workers or Ray's actor pool, importing "
              "torch there, building the featurizer). \"First batch after\": when the first batch was committed; "
              "the Ray engine hands its actors several batches per task (fewer, larger Ray tasks), so its first "
              "commit comes later."]
    lines += ["", "Per round (seconds): " + "; ".join(
        ", ".join(f"{k} {r[k]['seconds']:.2f}" for k in ("local", "ray", "shards", "local_small", "ray_small"))
        for r in rec["rounds"]), ""]
    mem = {engine: {str(size): float(np.median([r[key]["peak_rss_mb"] for r in rec["rounds"]]))
                    for size, key in ((small, f"{engine}_small"), (n, engine))} for engine in ("local", "ray")}
    big, small = str(n), str(small)
    reads = rec["reads"]
    lines += [f"Reading every feature row after `FeatureStore(...)` (which checks a joined store's parts), all at "
              f"once (`.features`, what the probes, `cvae show` and `--model` read) and in batches "
              f"(`iter_rows({rec.get('read_batch', READ_BATCH)})`), the same rows as one file and as {rec['parts']} "
              f"joined shards, medians of {len(next(iter(reads.values()))['one'])} alternated reads:", ""]
    ratio = {}
    read_rows = []
    for rows, got in reads.items():
        o1, oj = float(np.median(got["open_one"])), float(np.median(got["open_joined"]))
        for how, suffix in (("all at once", ""), ("in batches", "_batched")):
            if f"one{suffix}" not in got:
                continue  # results of an older run
            one, joined = float(np.median(got[f"one{suffix}"])), float(np.median(got[f"joined{suffix}"]))
            ratio[(rows, how)] = one / joined
            read_rows.append([f"{got['rows']:,}", how, f"{one * 1000:,.0f} ms", f"{joined * 1000:,.0f} ms",
                              f"{one / joined:.2f}", f"{o1 * 1000:.1f} ms", f"{oj * 1000:.1f} ms"])
    lines += md_table(["rows", "read", "one file", f"{rec['parts']} joined shards", "one / joined",
                       "opening one file", "opening the joined store"], read_rows) + [""]
    largest = max(reads, key=int)
    lines += md_table(["target", "measured", "met"], [
        ["Ray >= 0.85 x local (once started)", f"{x_ray:.2f}", "yes" if x_ray >= 0.85 else "no"],
        ["shards + join >= 0.95 x local", f"{med['shards'] / med['local']:.2f}",
         "yes" if med["shards"] >= 0.95 * med["local"] else "no"],
    ] + [[f"reading {rec['parts']} joined shards >= 0.9 x one file ({reads[largest]['rows']:,} rows, {how})",
          f"{ratio[(rows, how)]:.2f}", "yes" if ratio[(rows, how)] >= 0.9 else "no"]
         for rows, how in ratio if rows == largest
    ] + [[f"driver peak memory, {engine}: {int(big):,} vs {int(small):,} files within 10 %",
          f"{mem[engine][big]:,.0f} vs {mem[engine][small]:,.0f} MB (x{mem[engine][big] / mem[engine][small]:.3f})",
          "yes" if mem[engine][big] <= 1.1 * mem[engine][small] else "no"] for engine in ("local", "ray")])
    lines += [""] + estimate_lines(rec)
    return "\n".join(lines) + "\n"


# Published: ResNet-50 v1.5 inference, PyTorch, mixed precision, batch 256, one V100 16GB: 3,382 images/s
# (NVIDIA DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5/README.md, "Inference
# performance: NVIDIA DGX-1 (1x V100 16GB)"); ResNet-50 costs about 4.1 GMACs per 224x224 image.
RESNET50_V100_AMP = 3382
RESNET50_GMACS = 4.1


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h" if seconds >= 3600 else f"{seconds / 60:,.0f} min"


def estimate_lines(rec: dict, images: float = 100e6, cores: int = 32, nodes=(1, 4, 16)) -> list:
    """A worked estimate for ``images`` photos (256x256 JPEG -> 64x64 RGB, latent 256) on nodes of ``cores``
    cores, from the per-core rates measured in this run and a published GPU rate."""
    jpeg, enc = rec["jpeg"], rec["encoder"]
    cpu_core = 1 / (1 / jpeg["images_per_s"] + 1 / enc["cpu_images_per_s_per_core"])
    gpu_bound = RESNET50_V100_AMP * RESNET50_GMACS / enc["gmacs"]
    cpu_node, gpu_node = cores * cpu_core, min(cores * jpeg["images_per_s"], gpu_bound)
    gb = rec["store_bytes_per_row"] * images / 1e9
    rows = [[f"{n} x {cores} cores", _hours(images / (n * cpu_node)), _hours(images / (n * gpu_node))]
            for n in nodes]
    return [
        f"## Estimate for {images / 1e6:,.0f} million images", "",
        f"Per core, measured here: decoding a {jpeg['side']}x{jpeg['side']} RGB JPEG (quality 90, "
        f"{jpeg['bytes_mean'] / 1e3:.0f} kB) into a {jpeg['size']}x{jpeg['size']} input "
        f"{jpeg['images_per_s']:,.0f} images/s; the default encoder at {enc['size']}x{enc['size']}x{enc['channels']} "
        f"(latent 256, {enc['gmacs'] * 1e3:.1f} MMACs per image) {enc['cpu_images_per_s_per_core']:,.0f} images/s "
        f"on one thread; both on one core: {cpu_core:,.0f} images/s. Published GPU rate for a comparable encoder: "
        f"ResNet-50 v1.5 inference on one V100 (mixed precision, batch 256) {RESNET50_V100_AMP:,} images/s at "
        f"{RESNET50_GMACS} GMACs per image (NVIDIA DeepLearningExamples); our encoder costs "
        f"{RESNET50_GMACS / enc['gmacs']:,.0f}x less, so one such GPU is not the limit of a node: the cores "
        "decoding JPEGs are.", "",
    ] + md_table(["nodes", "CPU only (decode + encode on the cores)", "one GPU per node (the cores decode)"],
                 rows) + [
        "", f"Store: {rec['store_bytes_per_row']:,.0f} bytes per row here (latent 256 float32, key, label, plan; no "
        f"compression), so {gb:,.0f} GB for {images / 1e6:,.0f} million rows, e.g. 64 shards of "
        f"{gb / 64:,.1f} GB joined by `cvae join` without copying. Reading from a shared file system and writing "
        "the shards there are not included; they add to these hours when the file system is the bottleneck."]


if __name__ == "__main__":
    main()
