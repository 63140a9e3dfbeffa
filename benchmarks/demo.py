"""Record what ``cvae demo`` prints, with command, commit, date, machine and wall time.

    python benchmarks/demo.py        # runs the demo into benchmarks/_work/demo

The demo itself (model, data, probes) is ``cvae_features.demo.run_demo``, exactly what
``cvae demo`` runs; this script only keeps its table and report as a results file
(``benchmarks/results/demo.{md,json}``) so that the README's demo numbers have a source.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as bc  # noqa: E402


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default=str(bc.WORK / "demo"), help="where the demo writes (replaced)")
    p.add_argument("--out", default=None, help="results path without suffix (default benchmarks/results/demo)")
    args = p.parse_args(argv)

    from cvae_features.demo import DEMO_MODEL, DEMO_TRAINING, run_demo

    rec = bc.record_header("demo", __file__, argv)
    t0 = time.perf_counter()
    result = run_demo(args.out_dir, progress=False)
    rec["wall_s"] = round(time.perf_counter() - t0, 1)
    rec.update(model_config=DEMO_MODEL.to_dict(), train_config=DEMO_TRAINING.to_dict(), seconds=result.seconds,
               notes=result.notes, table=result.table,
               report=json.loads((Path(result.report_dir) / "report.json").read_text()))
    lines = ["# `cvae demo` (digits)", ""] + bc.header_lines(rec) + [
        "", "What `cvae demo` printed (the same run's `report.json` is in `demo.json` under `report`):", "",
        "```", result.table.rstrip(), "```", ""]
    stem = bc.results_stem("demo", False, args.out)
    json_path, md_path = bc.write_results(stem, rec, "\n".join(lines))
    bc.say(f"wrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
