"""Copy detection and the search engine behind ``cvae neighbors`` / ``cvae duplicates``.

    python benchmarks/copy_detection.py                 # full run (about 20 min on 2 cores)
    python benchmarks/copy_detection.py --run-dir RUN   # reuse a trained Fashion-MNIST model
    python benchmarks/copy_detection.py --quick         # a smoke run (small data, small index)

Side by side in one run, on Fashion-MNIST:

1. A VAE with the package defaults but a small budget (``--epochs``, default 3) trained without
   labels on ``fashion-mnist:train`` (or ``--run-dir``); a PCA of the same width fitted on the same
   training images; raw pixels.
2. Copy detection: every original of ``fashion-mnist:test`` gets one altered copy per alteration
   (shift, crop, JPEG, brightness, noise; parameters in ``ALTERATIONS``); recall@1 / @10 = the share
   of copies whose nearest originals (cosine distance, exact search) include their own original.
3. Duplicates at ``DEFAULT_THRESHOLD``: ``--n-dup`` test originals and their five copies, grouped by
   ``find_duplicates``; pairwise precision and recall against the true groups (an original and its
   copies). The threshold sweep that justifies the default runs on training images (calibration),
   never on the test images it is reported on.
4. The approximate index: ``--n-index`` vectors of width 256 = the training μ tiled, each copy plus
   Gaussian noise (0.25 x the per-dimension std of μ), written to a real store; the index built by
   ``cvae_features.index.build_index``; 1,000 test-image μ as queries; recall@10 against exact
   search and queries per second per nprobe, build time and index size. Also the time of an exact
   duplicate search at the exact-search cut-off (``EXACT_MAX_ROWS``).

Writes ``benchmarks/results/copy_detection.{md,json}`` (``_quick`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as bc  # noqa: E402

ALTERATIONS = {
    "shift": "translated by (dy, dx) drawn from -2..2 px each (not both 0), black fill",
    "crop": "1-3 px cut from each side (drawn per side), resized back to 28x28 (bilinear)",
    "jpeg": "re-encoded as JPEG, quality 50",
    "brightness": "pixel values x a factor drawn from [0.75, 1.25], clipped",
    "noise": "Gaussian noise of std 10 (of 255) added, clipped",
}
THRESHOLDS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
# The rule for the default threshold: the largest at which every feature kind keeps calibration precision >= this
# (the default serves stores of any kind). The first run used the VAE's precision alone; it suggested 0.02, where
# raw pixels fall to a precision of 0.53.
MIN_PRECISION = 0.99
NPROBES = (4, 8, 16, 32, 64, 128, 256)
MIN_RECALL = 0.95  # the rule for the default nprobe: the smallest with recall@10 >= this
KINDS = ("vae", "pca", "raw")


def alter(images: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One altered copy of each uint8 image (n, 1, 28, 28)."""
    from PIL import Image

    out = np.empty_like(images)
    n, _, h, w = images.shape
    for i in range(n):
        img = images[i, 0]
        if kind == "shift":
            dy, dx = 0, 0
            while dy == 0 and dx == 0:
                dy, dx = rng.integers(-2, 3, 2)
            moved = np.zeros_like(img)
            moved[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
                img[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
            out[i, 0] = moved
        elif kind == "crop":
            t, b, left, r = rng.integers(1, 4, 4)
            part = Image.fromarray(img[t:h - b, left:w - r])
            out[i, 0] = np.asarray(part.resize((w, h), Image.BILINEAR))
        elif kind == "jpeg":
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=50)
            out[i, 0] = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))
        elif kind == "brightness":
            out[i, 0] = np.clip(img * rng.uniform(0.75, 1.25), 0, 255).round()
        elif kind == "noise":
            out[i, 0] = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).round()
        else:
            raise ValueError(kind)
    return out


def featurize(feat, images: np.ndarray, batch: int = 2048) -> np.ndarray:
    import torch

    fn = feat.batch_fn((), "cpu")
    return np.concatenate([np.asarray(fn(torch.from_numpy(np.array(images[i:i + batch])))[0], dtype=np.float32)
                           for i in range(0, len(images), batch)])


def copy_recall(orig: np.ndarray, copies: np.ndarray) -> dict:
    """recall@1 and @10: copy i's nearest originals include original i."""
    from cvae_features.neighbors import nearest_neighbors

    table = nearest_neighbors(orig, copies, k=10)
    rows = table["row"].to_numpy().reshape(len(copies), 10)
    hit = rows == np.arange(len(copies))[:, None]
    return {"recall@1": float(hit[:, 0].mean()), "recall@10": float(hit.any(1).mean())}


def duplicate_scores(X: np.ndarray, truth: np.ndarray, threshold: float, kinds_of_rows: np.ndarray) -> dict:
    """Pairwise precision / recall of find_duplicates' groups against the true groups ``truth``."""
    from cvae_features.neighbors import find_duplicates

    t0 = time.perf_counter()
    table = find_duplicates(X, threshold=threshold)
    seconds = time.perf_counter() - t0
    pred = np.full(len(X), -1, dtype=np.int64)
    pred[table["row"].to_numpy()] = table["group"].to_numpy()

    def pairs(counts):
        counts = np.asarray(counts, dtype=np.int64)
        return int((counts * (counts - 1) // 2).sum())

    grouped = pred >= 0
    predicted = pairs(np.bincount(pred[grouped])) if grouped.any() else 0
    true_pairs = pairs(np.bincount(truth))
    both = np.unique(np.stack([pred[grouped], truth[grouped]]), axis=1, return_counts=True)[1] if grouped.any() \
        else np.zeros(0)
    correct = pairs(both)
    # a copy counts as found when it shares a predicted group with its original (row truth[i] of the originals)
    copy_found = {}
    for kind in ALTERATIONS:
        rows = np.flatnonzero(kinds_of_rows == kind)
        originals = truth[rows]
        copy_found[kind] = float(((pred[rows] >= 0) & (pred[rows] == pred[originals])).mean())
    return {"threshold": threshold, "precision": correct / predicted if predicted else None,
            "recall": correct / true_pairs, "predicted_pairs": predicted, "correct_pairs": correct,
            "true_pairs": true_pairs, "n_groups": int(table["group"].nunique()), "copies_found": copy_found,
            "seconds": round(seconds, 2)}


def duplicate_set(features: dict, images: np.ndarray, n: int, rng) -> tuple:
    """(features by kind, truth, alteration of each row) of ``n`` originals followed by their copies."""
    feats = {kind: [feat(images[:n])] for kind, feat in features.items()}
    labels = [np.array(["original"] * n)]
    for kind in ALTERATIONS:
        copies = alter(images[:n], kind, rng)
        for name, feat in features.items():
            feats[name].append(feat(copies))
        labels.append(np.array([kind] * n))
    truth = np.tile(np.arange(n), len(ALTERATIONS) + 1)
    return {k: np.concatenate(v) for k, v in feats.items()}, truth, np.concatenate(labels)


def index_benchmark(train_mu: np.ndarray, queries: np.ndarray, n_index: int, work: Path, seed: int) -> dict:
    from cvae_features.index import build_index, index_paths, n_lists
    from cvae_features.neighbors import nearest_neighbors
    from cvae_features.store import FeatureStore, StoreWriter

    rng = np.random.default_rng(seed)
    reps = -(-n_index // len(train_mu))
    noise = 0.25 * train_mu.std(0)
    path = work / f"tiled_{n_index}.h5"
    t0 = time.perf_counter()
    with StoreWriter.create(path, feature_kind="raw", dim=train_mu.shape[1],
                            preprocess={"size": 16, "channels": 1, "resize": "crop"}, source="tiled μ",
                            plan_keys=[f"v{i:07d}" for i in range(n_index)], compression=None) as w:
        for start in range(0, n_index, 65536):
            stop = min(start + 65536, n_index)
            base = train_mu[np.arange(start, stop) % len(train_mu)]
            w.write_batch(np.arange(start, stop), (base + rng.normal(size=base.shape) * noise).astype(np.float32),
                          np.full(stop - start, -1))
    write_s = time.perf_counter() - t0
    with FeatureStore(path) as store:
        t0 = time.perf_counter()
        index = build_index(store)
        build_s = time.perf_counter() - t0
        X = store.features
    index_path, sidecar = index_paths(path)
    t0 = time.perf_counter()
    exact = nearest_neighbors(X, queries, k=10)["row"].to_numpy().reshape(len(queries), 10)
    exact_s = time.perf_counter() - t0
    from cvae_features.index import normalize_rows

    Qn = normalize_rows(queries)
    rows = []
    for nprobe in NPROBES:
        t0 = time.perf_counter()
        _, found = index.search(Qn, 10, nprobe)
        seconds = time.perf_counter() - t0
        recall = np.mean([len(set(found[i]) & set(exact[i])) / 10 for i in range(len(queries))])
        rows.append({"nprobe": nprobe, "recall@10": float(recall), "queries_per_s": len(queries) / seconds})
        bc.say(f"nprobe {nprobe}: recall@10 {recall:.3f}, {len(queries) / seconds:,.0f} queries/s")
    out = {"n_vectors": n_index, "dim": int(X.shape[1]), "tiles": reps, "noise": "0.25 x per-dimension std of μ",
           "n_queries": len(queries), "n_lists": n_lists(n_index), "build_s": round(build_s, 1),
           "store_write_s": round(write_s, 1), "index_bytes": index_path.stat().st_size,
           "store_bytes": path.stat().st_size, "exact_queries_per_s": len(queries) / exact_s, "nprobe": rows}
    for p in (path, index_path, sidecar):
        p.unlink()
    return out


def run(args, argv) -> dict:
    from cvae_features import load_model, open_source
    from cvae_features.data import Preprocess
    from cvae_features.featurizers import PCAFeaturizer, RawFeaturizer, VAEFeaturizer, fit_pca
    from cvae_features.index import DEFAULT_NPROBE
    from cvae_features.neighbors import DEFAULT_THRESHOLD, EXACT_MAX_ROWS, find_duplicates

    rec = bc.record_header("copy_detection" + ("_quick" if args.quick else ""), __file__, argv)
    stages = bc.Stages()
    work = Path(args.out_dir)
    work.mkdir(parents=True, exist_ok=True)
    train_src = open_source("fashion-mnist:train", data_dir=args.data_dir)
    test_src = open_source("fashion-mnist:test", data_dir=args.data_dir)
    if args.quick:
        train_src = bc.subset(train_src, 3000, 0)
    with stages("train VAE"):
        if args.run_dir:
            run_dir, trained = Path(args.run_dir), False
        else:
            run_dir, trained = work / f"run_e{args.epochs}{'_quick' if args.quick else ''}", True
            bc.train_run(train_src, run_dir, {}, {"epochs": args.epochs}, reuse=True, progress=args.progress)
        model = load_model(run_dir)
        history = json.loads((run_dir / "history.json").read_text()) if (run_dir / "history.json").exists() else []
        training = {"epochs": len(history), "seconds": round(sum(row.get("seconds", 0) for row in history), 1)}
    pre = Preprocess(28, 1, "crop")
    with stages("fit PCA"):
        pca = PCAFeaturizer(pre, **fit_pca(train_src, pre, model.config.latent_dim))
    feats = {"vae": VAEFeaturizer(model, pre), "pca": pca, "raw": RawFeaturizer(pre)}
    features = {name: (lambda images, f=f: featurize(f, images)) for name, f in feats.items()}

    n_orig = min(args.n_originals, len(test_src))
    originals = test_src.images[np.sort(np.random.default_rng(args.seed).choice(len(test_src), n_orig,
                                                                                replace=False))]
    rng = np.random.default_rng(args.seed + 1)
    recall = {kind: {} for kind in KINDS}
    with stages("copy detection"):
        orig_feats = {name: features[name](originals) for name in KINDS}
        for alteration in ALTERATIONS:
            copies = alter(originals, alteration, rng)
            for name in KINDS:
                recall[name][alteration] = copy_recall(orig_feats[name], features[name](copies))
                bc.say(f"{alteration} {name}: {recall[name][alteration]}")
        for name in KINDS:
            recall[name]["all"] = {m: float(np.mean([recall[name][a][m] for a in ALTERATIONS]))
                                   for m in ("recall@1", "recall@10")}
    with stages("duplicates: calibration sweep (training images)"):
        calib_images = train_src.images[np.random.default_rng(args.seed + 2).choice(len(train_src), args.n_dup,
                                                                                    replace=False)]
        calib, truth, kinds_of_rows = duplicate_set(features, calib_images, args.n_dup, rng)
        sweep = {name: [duplicate_scores(calib[name], truth, t, kinds_of_rows) for t in THRESHOLDS]
                 for name in KINDS}
        ok = [t for i, t in enumerate(THRESHOLDS)
              if min((sweep[name][i]["precision"] or 0) for name in KINDS) >= MIN_PRECISION]
        suggested = max(ok) if ok else None
    with stages("duplicates at the default threshold (test images)"):
        test_set, truth, kinds_of_rows = duplicate_set(features, originals, min(args.n_dup, n_orig), rng)
        at_default = {name: duplicate_scores(test_set[name], truth, DEFAULT_THRESHOLD, kinds_of_rows)
                      for name in KINDS}
    with stages("exact duplicates at the cut-off"):
        n_cut = min(EXACT_MAX_ROWS, len(train_src)) if not args.quick else 5000
        train_mu = featurize(feats["vae"], train_src.images)
        t0 = time.perf_counter()
        find_duplicates(train_mu[:n_cut], threshold=DEFAULT_THRESHOLD)
        exact_cut = {"n_rows": n_cut, "seconds": round(time.perf_counter() - t0, 1)}
    with stages("approximate index"):
        queries = orig_feats["vae"][:1000]
        index = index_benchmark(train_mu, queries, args.n_index, work, args.seed)
        enough = [r["nprobe"] for r in index["nprobe"] if r["recall@10"] >= MIN_RECALL]
        index["suggested_nprobe"] = min(enough) if enough else None
    rec.update(
        arguments={"quick": args.quick, "epochs": args.epochs, "run_dir": str(run_dir), "trained_here": trained,
                   "n_originals": n_orig, "n_dup": args.n_dup, "n_index": args.n_index, "seed": args.seed},
        model_config=model.config.to_dict(), model_fingerprint=model.fingerprint(), training=training,
        alterations=ALTERATIONS, recall=recall, default_threshold=DEFAULT_THRESHOLD, min_precision=MIN_PRECISION,
        suggested_threshold=suggested, calibration_sweep=sweep, duplicates_at_default=at_default,
        exact_duplicates_at_cutoff=exact_cut, exact_max_rows=EXACT_MAX_ROWS, default_nprobe=DEFAULT_NPROBE,
        index=index, stage_seconds=stages.seconds)
    return rec


def _f(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(rec: dict) -> str:
    a, dim = rec["arguments"], rec["model_config"]["latent_dim"]
    tr = rec["training"]
    trained = (f"trained for {tr['epochs']} epochs on the 60,000 training images without labels in "
               f"{tr['seconds'] / 60:.0f} min " + ("by this run" if a["trained_here"] else
                                                   f"(reused from `{a['run_dir']}`, trained by an earlier run)"))
    lines = [f"# Copy detection and near-duplicate search{' (quick)' if a['quick'] else ''}", ""]
    lines += bc.header_lines(rec) + [""]
    lines += [f"VAE: package defaults (latent {dim}, β {rec['model_config']['beta']}), {trained}; PCA ({dim}) fitted "
              "on the same training images; raw pixels (784). Distance: cosine (`1 - cos`), exact search.", "",
              "## Copy detection", "",
              f"{a['n_originals']:,} originals of `fashion-mnist:test`, one altered copy of each per alteration; "
              "recall@k = share of copies whose k nearest originals include their own.", ""]
    lines += [f"- {k}: {v}" for k, v in rec["alterations"].items()] + [""]
    header = ["alteration"] + [f"{name} @1 / @10" for name in (f"VAE μ ({dim})", f"PCA ({dim})", "raw pixels")]
    rows = [[alt] + [f"{bc.pct(rec['recall'][k][alt]['recall@1'])} / {bc.pct(rec['recall'][k][alt]['recall@10'])}"
                     for k in KINDS] for alt in list(rec["alterations"]) + ["all"]]
    lines += bc.md_table(header, rows) + [""]
    d = rec["duplicates_at_default"]
    lines += ["## `cvae duplicates` at its default threshold", "",
              f"{a['n_dup']:,} test originals and their five copies ({a['n_dup'] * 6:,} rows) grouped by "
              f"`find_duplicates` at cosine distance ≤ {rec['default_threshold']}; pairwise precision / recall "
              "against the true groups (an original and its copies), and the share of each alteration's copies "
              "that land in their original's group.", ""]
    header = ["features", "precision", "recall", "groups"] + list(rec["alterations"])
    lines += bc.md_table(header, [[k, _f(d[k]["precision"]), _f(d[k]["recall"]), d[k]["n_groups"]]
                                  + [bc.pct(d[k]["copies_found"][alt]) for alt in rec["alterations"]] for k in KINDS])
    lines += ["", f"How the default was chosen: the same construction on {a['n_dup']:,} *training* images "
              f"(calibration); rule: the largest threshold at which the pairwise precision of every feature kind is "
              f"≥ {rec['min_precision']} (the default serves stores of any kind). "
              f"Suggested by this run: {rec['suggested_threshold']}; the library's default: "
              f"{rec['default_threshold']}.", ""]
    header = ["threshold"] + [f"{k} precision / recall" for k in KINDS]
    rows = [[s["threshold"]] + [f"{_f(rec['calibration_sweep'][k][i]['precision'])} / "
                                f"{_f(rec['calibration_sweep'][k][i]['recall'])}" for k in KINDS]
            for i, s in enumerate(rec["calibration_sweep"]["vae"])]
    lines += bc.md_table(header, rows) + [""]
    ix = rec["index"]
    cut = rec["exact_duplicates_at_cutoff"]
    lines += ["## The approximate index", "",
              f"{ix['n_vectors']:,} vectors of width {ix['dim']}: the training μ tiled {ix['tiles']} times, each "
              f"copy plus Gaussian noise ({ix['noise']}), written to a store; `build_index` (faiss IndexIVFFlat, "
              f"{ix['n_lists']:,} lists, inner product of L2-normalised rows) took {ix['build_s']:.0f} s; the "
              f"index file is {ix['index_bytes'] / 2**20:,.0f} MiB (store {ix['store_bytes'] / 2**20:,.0f} MiB). "
              f"{ix['n_queries']:,} queries (test-image μ, not in the index), one batch; recall@10 against exact "
              f"search, which ran at {ix['exact_queries_per_s']:,.0f} queries/s over the same vectors. Rule for the "
              f"default nprobe: the smallest with recall@10 ≥ {MIN_RECALL}; suggested by this run: "
              f"{ix['suggested_nprobe']}; the library's default: {rec['default_nprobe']}.", ""]
    lines += bc.md_table(["nprobe", "recall@10", "queries/s"],
                         [[r["nprobe"], _f(r["recall@10"]), f"{r['queries_per_s']:,.0f}"] for r in ix["nprobe"]])
    lines += ["", f"Exact `find_duplicates` on {cut['n_rows']:,} μ rows (the exact-search cut-off "
              f"`EXACT_MAX_ROWS` = {rec['exact_max_rows']:,}) took {cut['seconds']:.0f} s; its cost grows with "
              "the square of the rows, which is why larger stores use the index.", ""]
    lines += ["Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in rec["stage_seconds"].items()), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3, help="VAE training epochs (when no --run-dir)")
    p.add_argument("--run-dir", default=None, help="a trained Fashion-MNIST run to reuse")
    p.add_argument("--n-originals", type=int, default=10000)
    p.add_argument("--n-dup", type=int, default=2000, help="originals in the duplicate sets (x6 rows)")
    p.add_argument("--n-index", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out-dir", default=str(bc.WORK / "copy_detection"))
    p.add_argument("--out", default=None, help="results stem (default benchmarks/results/copy_detection)")
    p.add_argument("--quick", action="store_true", help="3,000 training images, 1 epoch, 1,000 originals, "
                   "50,000 index vectors")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.n_originals, args.n_dup, args.n_index = 1, 1000, 300, 50_000
    t0 = time.perf_counter()
    rec = run(args, argv)
    rec["wall_s"] = time.perf_counter() - t0
    json_path, md_path = bc.write_results(bc.results_stem("copy_detection", args.quick, args.out), rec,
                                          markdown(rec))
    bc.say(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
