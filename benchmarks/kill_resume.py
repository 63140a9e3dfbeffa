"""Kill safety of extraction: many ``kill -9`` at random moments, each followed by ONE ``--resume``.

    python benchmarks/kill_resume.py                # 100 kills (about 15 min on 2 cores)
    python benchmarks/kill_resume.py --kills 5 --out /tmp/kr   # a quick look

A folder of real PNG files (the 1,797 scikit-learn digits as 8x8 grayscale images in one
sub-folder per class, plus a few undecodable files, so skips are recorded too) is extracted
with ``cvae extract`` (decoding workers, per-image scores, small batches so a run commits many
batches) once without interruption: the reference store. Then, ``--kills`` times: a fresh
extraction into a new store is started in its own process group and the whole group (the CLI
and its decoding workers) is sent SIGKILL at a moment drawn uniformly from the reference run's
wall time, so kills land before the store exists, while batches are written, and after the end.
Then ``cvae extract ... --resume`` runs once. Recorded for each kill: how many rows the killed
store had committed, whether the first resume exited 0, and whether the finished store equals
the reference (keys, labels, skipped files and reasons, features and scores bit for bit).

Target (issue "Hardening"): 100 of 100 first resumes succeed, and every final store equals the
uninterrupted one. Writes ``benchmarks/results/kill_resume.{md,json}``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as bc  # noqa: E402


def make_folder(root: Path, n_bad: int) -> int:
    """The digits as PNG files in class folders, plus ``n_bad`` undecodable ones; returns the file count."""
    from PIL import Image

    from cvae_features.data.builtin import load_digits_split

    images, labels, _ = load_digits_split("all")
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(image).reshape(8, 8).astype(np.uint8), "L").save(folder / f"{i:05d}.png")
    for b in range(n_bad):
        (root / str(b % 10) / f"bad{b}.png").write_bytes(b"not a png" * (b + 1))
    return len(labels) + n_bad


def cli(*args) -> list:
    return [sys.executable, "-m", "cvae_cli.main", *map(str, args)]


def extract_args(folder, store, model, batch_size, workers) -> list:
    return ["extract", folder, "-o", store, "--model", model, "--scores", "--batch-size", batch_size,
            "--workers", workers, "--no-progress"]


def wait_for_group(pgid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)


def committed_rows(path: Path):
    """(rows the killed store had committed, why unreadable): None = no store yet, -1 = not readable."""
    from cvae_features.store import FeatureStore

    if not path.exists():
        return None, ""
    try:
        with FeatureStore(path) as s:
            return s.n_rows, ""
    except Exception as err:  # noqa: BLE001 - recorded as unreadable, the resume decides the outcome
        return -1, str(err)


def same_store(path: Path, ref: Path) -> tuple:
    """(equal, max |feature difference|) of a finished store against the reference."""
    from cvae_features.store import FeatureStore

    with FeatureStore(path) as a, FeatureStore(ref) as b:
        if not (a.is_complete and a.keys == b.keys and a.n_rows == b.n_rows):
            return False, float("nan")
        diff = float(np.abs(a.features - b.features).max()) if a.n_rows else 0.0
        equal = (np.array_equal(a.features, b.features) and np.array_equal(a.labels, b.labels)
                 and a.label_names == b.label_names and a.skipped.equals(b.skipped)
                 and all(np.array_equal(a.extra(e), b.extra(e)) for e in b.extras))
        return bool(equal), diff


def run(args, argv) -> dict:
    import torch

    from cvae_features.model import ConvVAE

    rec = bc.record_header("kill_resume", __file__, argv)
    t_start = time.perf_counter()
    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    folder = work / "images"
    n_files = make_folder(folder, args.bad)
    torch.manual_seed(0)
    model = ConvVAE(image_size=8, channels=1, latent_dim=32, widths=(32,))
    model_path = model.save(work / "model.pt")

    ref = work / "reference.h5"
    t0 = time.perf_counter()
    proc = subprocess.Popen(cli(*extract_args(folder, ref, model_path, args.batch_size, args.workers)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not ref.exists() and proc.poll() is None:
        time.sleep(0.005)
    created_s = time.perf_counter() - t0
    if proc.wait() != 0:
        raise SystemExit("the reference extraction failed")
    ref_seconds = time.perf_counter() - t0
    bc.say(f"reference extraction of {n_files} files: {ref_seconds:.1f} s (store created after {created_s:.1f} s)")

    rng = random.Random(args.seed)
    trials = []
    # most kills land while batches are written; some before the store exists and a few after the end
    lo, hi = max(0.0, created_s - 0.1 * (ref_seconds - created_s)), ref_seconds * 1.02
    for i in range(args.kills):
        store = work / f"killed_{i:03d}.h5"
        delay = rng.uniform(lo, hi)
        proc = subprocess.Popen(cli(*extract_args(folder, store, model_path, args.batch_size, args.workers)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(delay)
        finished_first = proc.poll() is not None
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        wait_for_group(proc.pid)  # decoding workers share the store's open file (and its lock) until they die
        rows_at_kill, unreadable = committed_rows(store)
        res = subprocess.run(cli(*extract_args(folder, store, model_path, args.batch_size, args.workers),
                                 "--resume"), capture_output=True, text=True)
        ok = res.returncode == 0
        equal, diff = same_store(store, ref) if ok else (False, float("nan"))
        trial = {"kill": i, "delay_s": round(delay, 3), "finished_before_kill": finished_first,
                 "rows_at_kill": rows_at_kill, "unreadable": unreadable, "first_resume_ok": ok, "equal": equal, "max_abs_diff": diff,
                 "resume_error": "" if ok else (res.stderr.strip().splitlines() or ["?"])[-1]}
        trials.append(trial)
        bc.say(f"kill {i + 1}/{args.kills} after {delay:.2f} s: rows committed {rows_at_kill} {unreadable}, first resume "
               f"{'ok' if ok else 'FAILED: ' + trial['resume_error']}, equal {equal}")
        if ok and equal:
            store.unlink()

    n = len(trials)
    rows = [t["rows_at_kill"] for t in trials]
    rec.update({
        "n_files": n_files, "n_bad_files": args.bad, "batch_size": args.batch_size, "workers": args.workers,
        "reference_seconds": round(ref_seconds, 2), "store_created_after_s": round(created_s, 2),
        "kill_window_s": [round(lo, 2), round(hi, 2)], "kills": n,
        "first_resumes_ok": sum(t["first_resume_ok"] for t in trials),
        "equal_to_uninterrupted": sum(t["equal"] for t in trials),
        "killed_before_store_existed": sum(r is None for r in rows),
        "killed_with_rows_committed": sum(r is not None and r > 0 for r in rows),
        "killed_store_unreadable": sum(r == -1 for r in rows),
        "finished_before_kill": sum(t["finished_before_kill"] for t in trials),
        "trials": trials, "wall_s": time.perf_counter() - t_start,
    })
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return rec


def markdown(rec: dict) -> str:
    lines = ["# Kill safety: kill -9 at random moments, then one --resume", ""] + bc.header_lines(rec) + [""]
    target_met = rec["first_resumes_ok"] == rec["kills"] and rec["equal_to_uninterrupted"] == rec["kills"]
    lines += [
        f"{rec['n_files']:,} real files ({rec['n_bad_files']} undecodable) extracted by `cvae extract` with "
        f"`--scores`, batches of {rec['batch_size']}, {rec['workers']} decoding workers; the uninterrupted run "
        f"took {rec['reference_seconds']:.1f} s and created its store after {rec['store_created_after_s']:.1f} s "
        "(start-up, listing). Each kill sends SIGKILL to the whole process group (CLI and workers) at a moment "
        f"drawn uniformly from {rec['kill_window_s'][0]:.2f} to {rec['kill_window_s'][1]:.2f} s after the start, "
        "mostly while batches are written; then `--resume` runs once.", "",
        *bc.md_table(["", "count"], [
            ["kills", rec["kills"]],
            ["first resume succeeded", rec["first_resumes_ok"]],
            ["final store equal to the uninterrupted one (bit for bit)", rec["equal_to_uninterrupted"]],
            ["killed before the store existed", rec["killed_before_store_existed"]],
            ["killed with committed rows in the store", rec["killed_with_rows_committed"]],
            ["killed store unreadable before the resume", rec["killed_store_unreadable"]],
            ["run had already finished when the kill came", rec["finished_before_kill"]],
        ]), "",
        f"Target: every first resume succeeds and every final store equals the uninterrupted one: "
        f"**{'met' if target_met else 'missed'}**.", "",
    ]
    failed = [t for t in rec["trials"] if not (t["first_resume_ok"] and t["equal"])]
    if failed:
        lines += ["Failures:", ""] + [f"- kill {t['kill']} after {t['delay_s']} s (rows {t['rows_at_kill']}): "
                                      f"{t['resume_error'] or 'not equal, max diff ' + str(t['max_abs_diff'])}"
                                      for t in failed] + [""]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--bad", type=int, default=5, help="undecodable files added to the folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    p.add_argument("--work", default=str(bc.WORK / "kill_resume"))
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--out", default=None, help="results stem (default benchmarks/results/kill_resume)")
    args = p.parse_args(argv)
    rec = run(args, argv)
    json_path, md_path = bc.write_results(args.out or bc.RESULTS / "kill_resume", rec, markdown(rec))
    bc.say(f"wrote {md_path} and {json_path}")


if __name__ == "__main__":
    main()
