"""The whole pipeline on the embedded ``digits`` data set: what ``cvae demo`` runs.

Train a VAE on ``digits:train``, extract VAE stores for train and test, the same
for raw pixels, run every probe on both and write a report that puts them side
by side. Everything it writes goes under one folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .model import VAEConfig
from .training import TrainConfig

# Chosen on digits:train only (probes on a split of the training rows; digits:test is never read):
# benchmarks/digits_demo.py, results in benchmarks/results/digits_demo.md.
DEMO_MODEL = VAEConfig(image_size=8, channels=1, latent_dim=32, beta=0.25, likelihood="bernoulli")
# No input augmentation (the demo's settings were chosen without it; "auto" would shift nothing at 8 px anyway).
DEMO_TRAINING = TrainConfig(epochs=60, batch_size=64, lr=3e-3, val_fraction=0.1, seed=0, augment=None)
DEMO_LABELS_PER_CLASS = (1, 5, 10, 100)


@dataclass
class DemoResult:
    """Paths written by :func:`run_demo`, the probe run and the table shown to the user."""

    out_dir: Path
    run_dir: Path
    stores: dict
    report_dir: Path
    show_dir: Path
    table: str
    notes: list
    seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"out_dir": str(self.out_dir), "run_dir": str(self.run_dir),
                "stores": {k: str(v) for k, v in self.stores.items()}, "report_dir": str(self.report_dir),
                "show_dir": str(self.show_dir), "notes": list(self.notes), "seconds": dict(self.seconds)}


def run_demo(out_dir="cvae-demo", *, model_config: VAEConfig = DEMO_MODEL,
             train_config: TrainConfig = DEMO_TRAINING, seeds: int = 5, progress: bool = True,
             on_step: Optional[Callable[[str], None]] = None) -> DemoResult:
    """Run the demo pipeline into ``out_dir`` (replacing what an earlier demo wrote there).

    Parameters
    ----------
    out_dir : path
        Folder for the run directory, the four stores, the report and the model views.
    model_config, train_config : VAEConfig, TrainConfig
        The VAE and how it is trained (defaults: :data:`DEMO_MODEL`, :data:`DEMO_TRAINING`).
    seeds : int
        Few-label draws per labels-per-class value.
    progress : bool
        Progress bars on stderr.
    on_step : callable(str), optional
        Called with a one-line description before each step.
    """
    from . import report
    from .extraction import extract
    from .probes import probe_stores
    from .show import show
    from .training import train

    say = on_step or (lambda message: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_dir = out / "run"
    stores = {name: out / f"{name}.h5" for name in ("vae_train", "vae_test", "raw_train", "raw_test")}
    seconds = {}

    def timed(name, fn):
        start = time.perf_counter()
        value = fn()
        seconds[name] = round(time.perf_counter() - start, 2)
        return value

    say(f"training a VAE on digits:train ({train_config.epochs} epochs, latent {model_config.latent_dim}) "
        f"-> {run_dir}")
    timed("train", lambda: train("digits:train", run_dir, model_config=model_config, train_config=train_config,
                                 overwrite=True, progress=progress))
    say("extracting VAE features (μ) and raw pixels for digits:train and digits:test")

    def extract_all():
        extract("digits:train", stores["vae_train"], model=run_dir, overwrite=True, progress=progress)
        extract("digits:test", stores["vae_test"], model=run_dir, overwrite=True, progress=progress)
        extract("digits:train", stores["raw_train"], features="raw", overwrite=True, progress=progress)
        extract("digits:test", stores["raw_test"], model=stores["raw_train"], overwrite=True, progress=progress)

    timed("extract", extract_all)
    say("probing both: linear, k-NN, clustering, few labels, one-class anomaly")
    run = timed("probe", lambda: probe_stores(
        [("vae", stores["vae_train"], stores["vae_test"]), ("raw", stores["raw_train"], stores["raw_test"])],
        labels_per_class=DEMO_LABELS_PER_CLASS, seeds=seeds))
    report_dir = out / "report"
    timed("report", lambda: report.write_report(run.results, report_dir, meta=run.meta, **run.report_inputs()))
    show_dir = out / "show"
    timed("show", lambda: show(run_dir, show_dir, source="digits:test"))
    table = report.format_table(run.results, title="digits: VAE μ vs raw pixels (test split)")
    return DemoResult(out, run_dir, stores, report_dir, show_dir, table, run.notes, seconds)
