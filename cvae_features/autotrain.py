"""Training the model an extraction needs when none is given (a separate step before extraction).

:func:`plan_auto_training` chooses the model and schedule and estimates the time;
:func:`train_for_extraction` trains it into ``<store stem>.run/`` (resumable).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

#: A data set of this many images gets exactly the TrainConfig defaults (the benchmarked model:
#: Fashion-MNIST's 60k training images); others get epochs scaled so that the same number of
#: images is seen in total, clamped to AUTO_EPOCHS.
AUTO_REFERENCE_IMAGES = 60_000
AUTO_EPOCHS = (5, 60)


@dataclass
class AutoTrainPlan:
    """What ``extract`` trains when no model is given (see :func:`plan_auto_training`)."""

    run_dir: Path
    model_config: object  # VAEConfig
    train_config: object  # TrainConfig
    preprocess: object  # data.Preprocess
    n_images: int
    estimated_seconds: float

    def to_dict(self) -> dict:
        return {"run_dir": str(self.run_dir), "model_config": self.model_config.to_dict(),
                "train_config": self.train_config.to_dict(), "preprocess": self.preprocess.to_dict(),
                "n_images": self.n_images, "estimated_seconds": self.estimated_seconds}


def auto_run_dir(store_path) -> Path:
    """Where ``extract`` trains a model when none is given: ``<store stem>.run/`` next to the store."""
    store_path = Path(store_path)
    return store_path.with_name(store_path.stem + ".run")


def plan_auto_training(source, store_path, *, dim=None, model_config=None, train_config=None, data_dir=None,
                       estimate: bool = True) -> AutoTrainPlan:
    """Choose the model and schedule ``extract`` trains when no model is given, and estimate its time.

    Defaults: ``latent_dim`` = ``dim`` or the ``VAEConfig`` default; everything else from
    ``VAEConfig`` / ``TrainConfig``, except that the epochs are scaled so that as many images
    are seen in total as the defaults see on 60,000 images (``TrainConfig().epochs`` epochs
    there, the benchmarked Fashion-MNIST model), clamped to 5..60. Given configs win.
    The estimate times one optimizer step on random data.
    """
    from .data import infer_preprocess, open_source
    from .model import VAEConfig
    from .training import TrainConfig

    src = open_source(source, data_dir=data_dir)
    n = len(src)
    given = {}
    if model_config is not None:
        given = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
    size = given.get("image_size") if given.get("image_size") not in (None, VAEConfig.image_size) else None
    channels = given.get("channels") if given.get("channels") not in (None, VAEConfig.channels) else None
    pre = infer_preprocess(src, image_size=size, channels=channels)
    latent = dim if dim is not None else given.get("latent_dim", VAEConfig.latent_dim)
    mcfg = VAEConfig.from_dict({**given, "image_size": pre.size, "channels": pre.channels, "latent_dim": latent})
    if train_config is None:
        passes = AUTO_REFERENCE_IMAGES * TrainConfig.epochs
        epochs = int(np.clip(math.ceil(passes / max(n, 1)), *AUTO_EPOCHS))
        tcfg = TrainConfig(epochs=epochs)
    elif isinstance(train_config, dict):
        tcfg = TrainConfig.from_dict(train_config)
    else:
        tcfg = train_config
    seconds = _estimate_training_seconds(mcfg, tcfg, n) if estimate else float("nan")
    return AutoTrainPlan(auto_run_dir(store_path), mcfg, tcfg, pre, n, seconds)


def _estimate_training_seconds(mcfg, tcfg, n: int) -> float:
    from .model import ConvVAE

    model = ConvVAE(mcfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    b = min(tcfg.batch_size, max(n, 1))
    x = torch.randint(0, 256, (b, mcfg.channels, mcfg.image_size, mcfg.image_size), dtype=torch.uint8)
    times = []
    with torch.random.fork_rng():
        for _ in range(2):  # the first step pays one-off costs
            t0 = time.perf_counter()
            loss = model(x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
    per_image = times[-1] / b
    # training steps plus validation / checkpoints (about 15%) plus decoding the source once
    return float(per_image * n * tcfg.epochs * 1.15 + n * 2e-4)


def train_for_extraction(src, plan: AutoTrainPlan, *, resume, overwrite, progress, data_dir):
    """Train the planned model; (model, seconds, images trained and validated on). Resumes a run cut short."""
    from .training import train

    resume_run = resume and (plan.run_dir / "checkpoint.pt").exists()
    t0 = time.perf_counter()
    result = train(src, plan.run_dir, model_config=plan.model_config, train_config=plan.train_config,
                   preprocess=plan.preprocess, resume=resume_run, overwrite=overwrite and not resume_run,
                   progress=progress, data_dir=data_dir)
    return result.model, time.perf_counter() - t0, result.n_train + result.n_val



__all__ = ["AutoTrainPlan", "plan_auto_training", "auto_run_dir", "train_for_extraction", "AUTO_REFERENCE_IMAGES",
           "AUTO_EPOCHS"]
