"""Extraction: stream a source's images through a model into a feature store.

Decoding runs in the data layer's worker processes (:func:`~cvae_features.data.iter_batches`).
On CPU each worker also encodes the batches it decoded (one thread each), so that
decoding and the encoder never compete for the cores; on a GPU this process runs the
encoder. Each batch is written whole and committed
(:class:`~cvae_features.store.StoreWriter`), so memory is bounded by the batch
and an interrupted extraction can be finished with ``resume=True``.

Three feature kinds go through the same path so that baselines meet the same probes:

- ``"vae"``: the posterior mean μ(x) of a :class:`~cvae_features.model.ConvVAE`
  (plus, by default, the per-image reconstruction NLL and negative ELBO from
  the same deterministic forward pass, z = μ);
- ``"raw"``: the preprocessed pixels, flattened, float32 in [0, 1];
- ``"pca"``: the PCA of those pixels (fitted on the source, or taken from a pca store).
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

from .data.sources import FileSource
from .errors import ConfigError, DataError, ModelError, StoreError, StoreNoSpaceError
from .model import resolve_device
from .store import DONE, FEATURE_KINDS, FeatureStore, StoreWriter, is_store, normalize_compression

#: Exact PCA (covariance + eigh) up to this many pixel values per image; IncrementalPCA beyond.
PCA_COVARIANCE_MAX_FEATURES = 4096
#: A data set of this many images gets exactly the TrainConfig defaults (the benchmarked model:
#: Fashion-MNIST's 60k training images); others get epochs scaled so that the same number of
#: images is seen in total, clamped to AUTO_EPOCHS.
AUTO_REFERENCE_IMAGES = 60_000
AUTO_EPOCHS = (5, 60)
_SKIPPED_KEPT = 100


@dataclass
class ExtractProgress:
    """Passed to ``callback`` after each committed batch."""

    batch: int  # 0-based batch number of this run
    n_done: int  # rows written by this run so far
    n_skipped: int  # files skipped by this run so far
    n_total: int  # plan entries this run set out to process

    def to_dict(self) -> dict:
        return asdict(self)


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


@dataclass
class ExtractResult:
    """What :func:`extract` returns.

    ``n_rows`` / ``n_skipped`` count the whole store; ``n_new`` / ``n_new_skipped``
    this run; ``n_changed`` / ``n_removed`` (update) the rows rewritten because their
    file changed, and the rows whose file is gone (kept). ``skipped`` lists (key, reason) of this run's skipped files (the
    first 100; the store keeps them all). ``seconds`` and ``images_per_s`` cover
    the extraction pass (not training or PCA fitting).
    """

    path: Path
    feature_kind: str
    dim: int
    n_rows: int
    n_skipped: int
    n_new: int
    n_new_skipped: int
    complete: bool
    seconds: float
    images_per_s: float
    model_fingerprint: Optional[str]
    trained: bool
    train_seconds: float = 0.0
    run_dir: Optional[Path] = None
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    n_train_images: Optional[int] = None  # images the auto-trained model was trained and validated on
    n_changed: int = 0  # update: rows rewritten because their file changed since it was extracted
    n_removed: int = 0  # update: rows whose file is no longer in the source (kept in the store)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        d["run_dir"] = str(self.run_dir) if self.run_dir else None
        d["skipped"] = [list(s) for s in self.skipped]
        return d


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
    from .train import TrainConfig

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


def extract(source, store_path, *, model=None, features: Optional[str] = None, dim: Optional[int] = None,
            train_config=None, model_config=None, batch_size: int = 256, workers: Optional[int] = None,
            resume: bool = False, update: bool = False, overwrite: bool = False, max_bad: Optional[int] = None,
            compression: Optional[str] = None, scores: bool = False, logvar: bool = False,
            carry_weights: Optional[bool] = None, device: str = "auto", data_dir=None, progress: bool = True,
            callback: Optional[Callable[[ExtractProgress], None]] = None,
            on_training: Optional[Callable[[AutoTrainPlan], None]] = None) -> ExtractResult:
    """Write the features of every image of ``source`` to the store at ``store_path``.

    Parameters
    ----------
    source : str, path or ImageSource
        A folder, a ``.csv`` manifest, a built-in name (``"digits"``...) or an open source.
    store_path : str or path
        The ``.h5`` store to write.
    model : ConvVAE, str, path or None
        vae features: a model, a run directory, a model file or a store carrying
        weights; None trains one on ``source`` first (into ``<store stem>.run/``,
        see :func:`plan_auto_training`) and carries its weights in the store.
        raw/pca features: a raw or pca store whose preprocessing (and PCA basis)
        are reused, so that test features match training features.
    features : {'vae', 'raw', 'pca'} or None
        None: the kind of the store being resumed/updated or of a raw/pca ``model``
        store, else 'vae'.
    dim : int or None
        pca: number of components (required unless the basis comes from a store).
        vae: latent width of the auto-trained model (default: ``VAEConfig().latent_dim``).
    train_config, model_config : TrainConfig/dict, VAEConfig/dict, optional
        For the auto-trained model.
    batch_size : int, default=256
        Images per batch; memory is bounded by it.
    workers : int or None
        Decoding processes (None: the data layer's default, one per core for files).
    resume : bool
        Finish an interrupted store: only pending plan entries are processed. The
        model and the source must be the ones that wrote the store. Without a store,
        starts one.
    update : bool
        Bring the store up to date with its own source (same model): add the keys
        that the store does not plan yet, rewrite the rows of files whose size or
        modification time changed since they were extracted, and count the rows
        whose file is gone (they are kept).
    overwrite : bool
        Replace an existing store. It is replaced in place when writing starts
        (after any training); an interrupted overwrite is finished with ``resume``.
    max_bad : int or None
        Abort with DataError once more than this many files of this run could not be
        decoded; rows already written are kept.
    compression : {None, 'none', 'gzip', 'lzf'}
    scores : bool, default=False
        vae: also store 'recon_error' (reconstruction NLL at z = μ) and 'neg_elbo'
        (that plus the KL term, β = 1), from the same forward pass. Off by default:
        the decoder pass costs several times the encoder.
    logvar : bool, default=False
        vae: also store the posterior log-variance (n, dim).
    carry_weights : bool or None
        Store the model weights in the store; None: only when trained here.
    device : str, default='auto'
        Where the encoder runs ('auto' = CUDA when present).
    data_dir : path, optional
        Where built-in data sets are looked for.
    progress : bool, default=True
        Progress bar on stderr.
    callback : callable(ExtractProgress), optional
        Called after each committed batch; an exception it raises stops the run
        (what was committed stays, ``resume=True`` finishes it).
    on_training : callable(AutoTrainPlan), optional
        Called before a model is trained (so a CLI can say what and how long).

    Returns
    -------
    ExtractResult

    Raises
    ------
    StoreError
        The store exists and no resume/update/overwrite was asked, or it was
        written by another model, feature kind or source; the store's folder does
        not exist; the store is damaged, in use, or its disk is full
        (:class:`~cvae_features.errors.StoreNoSpaceError`: what was committed is
        kept, and ``resume=True`` finishes it once there is space).
    ConfigError, DataError, SourceNotFoundError, ModelError
        Bad options, an unusable source, an unloadable model.
    """
    from .data import open_source

    store_path = Path(store_path)
    _check_options(features, dim, batch_size, max_bad, resume, update, overwrite)
    compression = normalize_compression(compression)
    device_ = resolve_device(device)  # before any training, fitting or writing
    exists = store_path.exists()
    if store_path.is_dir():
        raise StoreError(f"store path {store_path} is a directory: expected an .h5 file name")
    if exists and not is_store(store_path):
        raise StoreError(f"{store_path} exists and is not a cvae feature store; refusing to touch it "
                         "(choose another -o)")
    if exists and not (resume or update or overwrite):
        raise StoreError(f"{store_path} already exists: use --resume to finish it, --update to add new images, "
                         "--overwrite to replace it, or choose another -o")
    appending = exists and (resume or update)

    src = open_source(source, data_dir=data_dir)
    if len(src) == 0:
        raise DataError(f"{src.description} holds no images")

    if not store_path.parent.is_dir():
        raise StoreError(f"cannot write {store_path}: folder {store_path.parent} does not exist (create it first)")
    old = _read_existing(store_path) if appending else None
    if old is not None:
        _check_same_source(store_path, old, src)
    kind = _resolve_kind(features, model, old, store_path)
    if kind == "vae":
        feat = _resolve_vae(src, store_path, old, model=model, dim=dim, model_config=model_config,
                            train_config=train_config, resume=resume, overwrite=overwrite, progress=progress,
                            data_dir=data_dir, on_training=on_training)
    else:
        feat = _resolve_pixels(kind, src, store_path, old, model=model, dim=dim, batch_size=batch_size,
                               workers=workers, progress=progress)
    if old is not None and old["fingerprint"] != feat.fingerprint:
        raise StoreError(f"store {store_path} was written by model {old['fingerprint']}, not {feat.fingerprint}; "
                         "use --overwrite or another -o")

    extras = (["logvar"] if logvar else []) + (["recon_error", "neg_elbo"] if scores else []) if kind == "vae" else []
    if appending:
        writer = StoreWriter.append_to(store_path)
        if writer.dim != feat.out_dim:
            writer.close()
            raise StoreError(f"store {store_path} has dim {writer.dim}, the model gives {feat.out_dim}")
    else:
        weights = feat.trained if carry_weights is None else bool(carry_weights)
        writer = StoreWriter.create(store_path, feature_kind=kind, dim=feat.out_dim, preprocess=feat.pre,
                                    source=src.description, source_spec=getattr(src, "spec", "") or "",
                                    plan_keys=src.keys, label_names=src.label_names, extras=extras,
                                    compression=compression, model=feat.vae,
                                    carry_weights=weights and feat.vae is not None, pca=feat.pca,
                                    plan_identity=file_identity(src))
    try:
        encode = _BatchEncoder(kind, feat.vae, feat.pca, writer.extras, device_)
        t0 = time.perf_counter()
        work = _pending_work(writer, src, appending=appending, update=update, out_dim=feat.out_dim,
                             store_path=store_path)
        n_changed = _rewrite_changed(writer, src, feat, work, encode, batch_size=batch_size, workers=workers,
                                     progress=progress) if update else 0
        n_new, n_bad, kept_skips = _write_batches(writer, src, feat, work, encode, batch_size=batch_size,
                                                  workers=workers, max_bad=max_bad, store_path=store_path,
                                                  progress=progress, callback=callback)
        seconds = time.perf_counter() - t0
        n_rows, n_skipped = writer.n_rows, writer.n_skipped
    except StoreNoSpaceError:
        left = len(writer.pending())
        kept = (f"the {writer.n_rows:,} rows written are kept: free space, then finish with --resume"
                if writer.n_rows else "nothing was kept: free space, then run again")
        raise StoreNoSpaceError(f"no space left on the device of {store_path}: about "
                                f"{_bytes_needed(writer, left) / 1e6:,.1f} MB more are needed for the {left:,} "
                                f"images left; {kept}") from None
    finally:
        writer.close()
        if not appending and writer.n_rows == 0 and store_path.exists():
            store_path.unlink()  # a store this run created and left without a row would only block the rerun

    if n_rows == 0:
        raise DataError(f"none of the {len(src)} images of {src.description} could be decoded "
                        f"(first: {kept_skips[0][0]}: {kept_skips[0][1]})" if kept_skips else
                        f"no image of {src.description} was extracted")
    with FeatureStore(store_path) as store:
        complete = store.is_complete
    processed = n_new + n_bad
    return ExtractResult(
        path=store_path, feature_kind=kind, dim=feat.out_dim, n_rows=n_rows, n_skipped=n_skipped, n_new=n_new,
        n_new_skipped=n_bad, complete=complete, seconds=seconds,
        images_per_s=processed / seconds if seconds > 0 else float("nan"), model_fingerprint=feat.fingerprint,
        trained=feat.trained, train_seconds=feat.train_seconds, run_dir=feat.run_dir, skipped=kept_skips[:_SKIPPED_KEPT],
        n_train_images=feat.n_train_images, n_changed=n_changed, n_removed=work.n_removed)


# ----------------------------------------------------------------------------------------------
# the steps of extract()

@dataclass
class _Featurizer:
    """What turns this extraction's images into features, and where it came from."""

    kind: str
    pre: "object"  # data.Preprocess
    out_dim: int
    fingerprint: Optional[str]
    vae: Optional[object] = None  # ConvVAE
    pca: Optional[dict] = None
    trained: bool = False
    train_seconds: float = 0.0
    run_dir: Optional[Path] = None
    n_train_images: Optional[int] = None


@dataclass
class _Work:
    """The plan rows still to write, the source rows they come from, and the skips already recorded.

    ``changed`` / ``changed_rows``: (update) plan entries whose file changed since their row
    was written, and their source rows; ``n_removed``: rows whose file is gone.
    """

    pending: np.ndarray
    src_rows: np.ndarray
    label_map: np.ndarray
    n_bad: int
    kept_skips: List[Tuple[str, str]]
    changed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    changed_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    n_removed: int = 0


def _resolve_vae(src, store_path, old, *, model, dim, model_config, train_config, resume, overwrite, progress,
                 data_dir, on_training) -> _Featurizer:
    """The VAE: the one given, the one the store being finished carries, or one trained here."""
    from .data import Preprocess

    trained, train_seconds, run_dir, pre_dict, n_train_images = False, 0.0, None, None, None
    if model is not None:
        vae, pre_dict = _load_vae(model)
    elif old is not None and old["has_model"]:
        vae, pre_dict = _load_vae(store_path)
    elif old is not None:
        raise StoreError(f"{store_path} carries only the fingerprint {old['fingerprint']} of its model, not "
                         "the weights; pass the model (--model RUN_DIR or model file) to go on")
    else:
        plan = plan_auto_training(src, store_path, dim=dim, model_config=model_config,
                                  train_config=train_config, data_dir=data_dir, estimate=on_training is not None)
        if on_training is not None:
            on_training(plan)
        vae, train_seconds, n_train_images = _train_model(src, plan, resume=resume, overwrite=overwrite,
                                                          progress=progress, data_dir=data_dir)
        trained, run_dir = True, plan.run_dir
        pre_dict = plan.preprocess.to_dict()
    # the model decides size and channels; a recorded preprocess only contributes its resize policy,
    # and a store being finished keeps its own (the caller's fingerprint check guarantees the size fits)
    if old is not None:
        pre_dict = old["preprocess"]
    pre = Preprocess(vae.config.image_size, vae.config.channels, (pre_dict or {}).get("resize", "crop"))
    out_dim = vae.config.latent_dim
    if dim is not None and dim != out_dim:
        raise ConfigError(f"dim={dim} does not match the model's latent width {out_dim}; "
                          "dim only chooses the width of an auto-trained model")
    return _Featurizer("vae", pre, out_dim, vae.fingerprint(), vae=vae, trained=trained,
                       train_seconds=train_seconds, run_dir=run_dir, n_train_images=n_train_images)


def _resolve_pixels(kind, src, store_path, old, *, model, dim, batch_size, workers, progress) -> _Featurizer:
    """raw or pca: the preprocessing (and basis) of the store being finished, of a reference store, or new."""
    from .data import Preprocess, infer_preprocess

    ref = _read_reference_store(model, kind) if model is not None else None
    pca = None
    if old is not None:
        pre, pca = Preprocess.from_dict(old["preprocess"]), old["pca"]
    elif ref is not None:
        pre, pca = Preprocess.from_dict(ref["preprocess"]), ref["pca"]
    else:
        pre = infer_preprocess(src)
    if ref is not None and old is not None and ref["fingerprint"] != old["fingerprint"]:
        raise StoreError(f"store {store_path} was written by model {old['fingerprint']}, not {ref['fingerprint']}; "
                         "use --overwrite or another -o")
    n_pixels = pre.channels * pre.size * pre.size
    if kind == "raw":
        if dim is not None and dim != n_pixels:
            raise ConfigError(f"dim={dim} does not fit raw features of {pre.channels}x{pre.size}x{pre.size} "
                              f"= {n_pixels} values; leave dim unset for raw")
        return _Featurizer("raw", pre, n_pixels, None)
    from .store import pca_fingerprint

    if pca is None:
        if dim is None:
            raise ConfigError("features='pca' needs dim (the number of components), or --model with a pca store")
        pca = fit_pca(src, pre, dim, batch_size=batch_size, workers=workers, progress=progress)
    if dim is not None and dim != len(pca["components"]):
        raise ConfigError(f"dim={dim} does not match the pca basis of width {len(pca['components'])}")
    return _Featurizer("pca", pre, len(pca["components"]),
                       pca_fingerprint(pca["mean"], pca["components"], pre.to_dict()), pca=pca)


def _pending_work(writer, src, *, appending, update, out_dim, store_path) -> _Work:
    """Which plan rows to write from which source rows, and (update) which rows to rewrite.

    Pending plan entries that the source no longer lists are recorded as skipped only when the
    file is really gone from the store's own source; otherwise (a subset or another view of the
    source) nothing is written and the run is refused, so no pending image is ever lost.
    """
    kept = _record_ignored(writer, src, out_dim)
    if not appending:
        pending = writer.pending()
        return _Work(pending, pending.copy(), np.arange(len(src.label_names), dtype=np.int64), len(kept),
                     kept[:_SKIPPED_KEPT])
    row_of = {k: i for i, k in enumerate(src.keys)}
    plan_keys = writer.plan_keys
    changed = changed_rows = np.zeros(0, np.int64)
    n_removed = 0
    if update:
        sizes, mtimes = writer.identity()
        done = np.flatnonzero(writer.status == DONE)
        rows = np.fromiter((row_of.get(plan_keys[p], -1) for p in done), dtype=np.int64, count=len(done))
        n_removed = int((rows < 0).sum())
        done, rows = done[rows >= 0], rows[rows >= 0]
        now_sizes, now_mtimes = file_identity(src, rows)
        known = (sizes[done] >= 0) & (now_sizes >= 0)
        moved = known & ((sizes[done] != now_sizes) | (mtimes[done] != now_mtimes))
        changed, changed_rows = done[moved], rows[moved]
        known_keys = set(plan_keys)
        new_rows = np.asarray([i for i, k in enumerate(src.keys) if k not in known_keys], dtype=np.int64)
        writer.add_plan([src.keys[i] for i in new_rows], identity=file_identity(src, new_rows))
        plan_keys = writer.plan_keys
    label_map = writer.merge_label_names(src.label_names)
    pending = writer.pending()
    src_rows = np.fromiter((row_of.get(plan_keys[p], -1) for p in pending), dtype=np.int64, count=len(pending))
    gone = pending[src_rows < 0]
    if len(gone):
        still_there = [plan_keys[p] for p in gone if _file_exists(src, plan_keys[p])]
        if still_there or not isinstance(src, FileSource):
            example = still_there[0] if still_there else plan_keys[gone[0]]
            raise StoreError(f"{len(gone):,} images still pending in {store_path} are not in {src.description} "
                             f"(e.g. {example}): resume or update with the store's whole source; nothing was written")
        reason = "removed from the source folder before it was extracted"
        writer.write_batch(**_empty_batch(writer, out_dim), skipped_index=gone, reasons=[reason] * len(gone))
        kept += [(plan_keys[p], reason) for p in gone[:_SKIPPED_KEPT]]
    keep = src_rows >= 0
    return _Work(pending[keep], src_rows[keep], label_map, len(kept) + max(0, len(gone) - _SKIPPED_KEPT),
                 kept[:_SKIPPED_KEPT], changed, changed_rows, n_removed)


def _empty_batch(writer, out_dim):
    return {"plan_index": [], "features": np.zeros((0, out_dim), np.float32), "labels": [],
            "extras": {e: np.zeros((0, out_dim) if e == "logvar" else (0,), np.float32) for e in writer.extras}}


def _record_ignored(writer, src, out_dim) -> List[Tuple[str, str]]:
    """What the folder walk left out (links leading outside, unreadable or special folders): recorded skips."""
    known = set(writer.plan_keys)
    ignored = [(k, r) for k, r in getattr(src, "ignored", []) if k not in known]
    if ignored:
        index = writer.add_plan([k for k, _ in ignored])
        writer.write_batch(**_empty_batch(writer, out_dim), skipped_index=index, reasons=[r for _, r in ignored])
    return ignored


def _rewrite_changed(writer, src, feat: _Featurizer, work: _Work, encode, *, batch_size, workers, progress) -> int:
    """update: re-extract the files that changed since their row was written and overwrite those rows."""
    from tqdm.auto import tqdm

    from .data import iter_batches

    if not len(work.changed):
        return 0
    plan_of_row = dict(zip(work.changed_rows.tolist(), work.changed.tolist()))
    n_done = 0
    in_workers = encode.device.type == "cpu"
    with tqdm(total=len(work.changed), disable=not progress, unit="img", desc="re-extracting changed files",
              dynamic_ncols=True) as bar:
        for batch in iter_batches(src, feat.pre, batch_size=batch_size, workers=workers, indices=work.changed_rows,
                                  transform=encode if in_workers else None):
            rows = batch.indices
            feats, extra_arrays = batch.output if in_workers else encode(batch.images)
            _check_finite(feats, src.keys, rows, writer)
            plan = np.asarray([plan_of_row[r] for r in rows], dtype=np.int64)
            labels = _store_labels(src.labels[rows], work.label_map)
            writer.replace_rows(plan, feats, labels, extra_arrays, identity=file_identity(src, rows))
            n_done += len(rows)
            # a changed file that no longer decodes keeps its old row; the run's summary lists it
            work.kept_skips += [(src.keys[r], f"changed, and now: {reason}; its row keeps the old features")
                                for r, reason in batch.skipped][: max(0, _SKIPPED_KEPT - len(work.kept_skips))]
            work.n_bad += len(batch.skipped)
            bar.update(len(rows) + len(batch.skipped))
    return n_done


def _store_labels(labels: np.ndarray, label_map: np.ndarray) -> np.ndarray:
    """Source label indices -> store label indices (-1 stays -1)."""
    if not len(label_map):
        return np.full(len(labels), -1, np.int64)
    return np.where(labels >= 0, label_map[np.maximum(labels, 0)], -1)


def _check_finite(feats: np.ndarray, keys, rows, writer) -> None:
    bad = ~np.isfinite(feats).all(axis=1)
    if bad.any():
        raise ModelError(f"the model gave non-finite features (NaN or inf) for {keys[rows[int(np.argmax(bad))]]} "
                         f"and {int(bad.sum()) - 1} more of its batch: its weights are probably damaged; nothing of "
                         f"that batch was written ({writer.n_rows:,} rows kept in {writer.path})")


def _write_batches(writer, src, feat: _Featurizer, work: _Work, encode, *, batch_size, workers, max_bad,
                   store_path, progress, callback) -> Tuple[int, int, List[Tuple[str, str]]]:
    """Decode, encode and commit batch by batch; returns (rows written, images skipped, first skips)."""
    from tqdm.auto import tqdm

    from .data import iter_batches

    # on CPU the decoding workers run the encoder too (see the module notes); a GPU is fed from here
    in_workers = encode.device.type == "cpu"
    plan_of_row = np.full(len(src), -1, dtype=np.int64)
    plan_of_row[work.src_rows] = work.pending
    labels_all, keys_all, label_map = src.labels, src.keys, work.label_map
    n_new, n_bad, kept_skips = 0, work.n_bad, list(work.kept_skips)
    with tqdm(total=len(work.src_rows), disable=not progress, unit="img", desc=f"extracting {feat.kind}",
              dynamic_ncols=True) as bar:
        batches = iter_batches(src, feat.pre, batch_size=batch_size, workers=workers, indices=work.src_rows,
                               transform=encode if in_workers else None)
        for b, batch in enumerate(batches):
            rows = batch.indices
            feats, extra_arrays = batch.output if in_workers else encode(batch.images)
            _check_finite(feats, keys_all, rows, writer)
            lab = _store_labels(labels_all[rows], label_map)
            skip_rows = np.asarray([r for r, _ in batch.skipped], dtype=np.int64)
            writer.write_batch(plan_of_row[rows], feats, lab, extras=extra_arrays,
                               skipped_index=plan_of_row[skip_rows], reasons=[reason for _, reason in batch.skipped])
            n_new += len(rows)
            n_bad += len(skip_rows)
            if len(kept_skips) < _SKIPPED_KEPT:
                kept_skips += [(keys_all[r], reason) for r, reason in batch.skipped]
            bar.update(len(rows) + len(skip_rows))
            if max_bad is not None and n_bad > max_bad:
                first_key, first_reason = kept_skips[0]
                raise DataError(f"{n_bad} images could not be decoded, more than max_bad={max_bad} "
                                f"(first: {first_key}: {first_reason}); the {writer.n_rows} rows written "
                                f"are kept in {store_path}")
            if callback is not None:
                callback(ExtractProgress(b, n_new, n_bad, len(work.src_rows)))
    return n_new, n_bad, kept_skips


# ----------------------------------------------------------------------------------------------
# helpers

def _check_options(features, dim, batch_size, max_bad, resume, update, overwrite) -> None:
    if features is not None and features not in FEATURE_KINDS:
        raise ConfigError(f"invalid features={features!r}: expected one of {list(FEATURE_KINDS)}")
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1):
        raise ConfigError(f"invalid dim={dim!r}: expected an integer >= 1")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"invalid batch_size={batch_size!r}: expected an integer >= 1")
    if max_bad is not None and (isinstance(max_bad, bool) or not isinstance(max_bad, (int, np.integer))
                                or max_bad < 0):
        raise ConfigError(f"invalid max_bad={max_bad!r}: expected an integer >= 0 or None")
    chosen = [name for name, flag in (("resume", resume), ("update", update), ("overwrite", overwrite)) if flag]
    if len(chosen) > 1:
        raise ConfigError(f"{' and '.join(chosen)} exclude each other: pick one")


def _read_existing(path: Path) -> dict:
    with FeatureStore(path) as s:
        return {"kind": s.feature_kind, "fingerprint": s.model_fingerprint, "has_model": s.has_model,
                "preprocess": s.preprocess_dict, "pca": s.pca, "dim": s.dim, "source_spec": s.source_spec,
                "source": s.source}


def _check_same_source(store_path: Path, old: dict, src) -> None:
    """--resume / --update go on with the store's own source only (its recorded spec)."""
    recorded, given = old["source_spec"], getattr(src, "spec", "") or ""
    if recorded and given and recorded != given:
        raise StoreError(f"{store_path} was extracted from {recorded}, not {given}: --resume and --update "
                         "continue a store with its own source (use another -o for other images, or --overwrite)")


def file_identity(src, rows=None) -> Tuple[np.ndarray, np.ndarray]:
    """(sizes, mtimes in ns) of the files of ``src``'s rows (default all), int64; -1 where unknown.

    In-memory sources have no files: all -1. A file that cannot be stat'ed is -1 too.
    """
    rows = np.arange(len(src), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    sizes = np.full(len(rows), -1, np.int64)
    mtimes = np.full(len(rows), -1, np.int64)
    if isinstance(src, FileSource):
        for j, i in enumerate(rows.tolist()):
            try:
                st = os.stat(src.paths[i])
            except OSError:
                continue
            sizes[j], mtimes[j] = st.st_size, st.st_mtime_ns
    return sizes, mtimes


def _file_exists(src, key: str) -> bool:
    return isinstance(src, FileSource) and os.path.lexists(os.path.join(src.root, key))


def _bytes_needed(writer, n_rows: int) -> float:
    """Rough bytes that ``n_rows`` more rows take in ``writer``'s store, with 20% and 1 MiB of slack."""
    return 1.2 * writer.bytes_per_row() * n_rows + (1 << 20)


def _resolve_kind(features, model, old, store_path) -> str:
    if old is not None:
        if features is not None and features != old["kind"]:
            raise StoreError(f"store {store_path} holds {old['kind']} features, not {features}; "
                             "use --overwrite or another -o")
        return old["kind"]
    if features is not None:
        return features
    if isinstance(model, (str, Path)) and is_store(model):
        with FeatureStore(model) as s:
            return s.feature_kind
    return "vae"


def _load_vae(model):
    """(ConvVAE, preprocess dict or None) from a model, a run dir, a model file or a store."""
    from .model import ConvVAE, load_model

    if isinstance(model, ConvVAE):
        return model, None
    if not isinstance(model, (str, Path)):
        raise ModelError(f"invalid model of type {type(model).__name__}: expected a ConvVAE, a run directory, "
                         "a model file or a feature store")
    path = Path(model)
    if is_store(path):
        with FeatureStore(path) as s:
            return s.load_model(), s.preprocess_dict
    loaded = load_model(path)
    config = (path if path.is_dir() else path.parent) / "config.json"
    pre = None
    if config.is_file():
        import json

        try:
            pre = json.loads(config.read_text()).get("preprocess")
        except (ValueError, OSError):
            pre = None  # a run's config.json only refines the resize policy; the model alone suffices
    return loaded, pre


def _read_reference_store(model, kind: str) -> dict:
    if not isinstance(model, (str, Path)) or not is_store(model):
        raise ModelError(f"model={model!r}: for {kind} features, expected a {kind} feature store whose "
                         "preprocessing (and basis) to reuse")
    with FeatureStore(model) as s:
        if s.feature_kind != kind:
            raise ModelError(f"model store {model} holds {s.feature_kind} features: expected a {kind} store")
        return {"preprocess": s.preprocess_dict, "pca": s.pca, "fingerprint": s.model_fingerprint}


def _train_model(src, plan: AutoTrainPlan, *, resume, overwrite, progress, data_dir):
    from .train import train

    resume_run = resume and (plan.run_dir / "checkpoint.pt").exists()
    t0 = time.perf_counter()
    result = train(src, plan.run_dir, model_config=plan.model_config, train_config=plan.train_config,
                   preprocess=plan.preprocess, resume=resume_run, overwrite=overwrite and not resume_run,
                   progress=progress, data_dir=data_dir)
    return result.model, time.perf_counter() - t0, result.n_train + result.n_val


class _BatchEncoder:
    """What extraction applies to a batch: uint8 images (b, C, S, S) -> (float32 features (b, d), {extra: array}).

    Picklable, so that decoding workers can run it. It holds its own copy of the
    model in eval mode (the caller's model is left as it is), in channels-last
    layout on CPU, where convolutions run about 20% faster that way.

    Parameters
    ----------
    kind : {'vae', 'raw', 'pca'}
    vae : ConvVAE or None
    pca : dict or None
        'mean' (P,) and 'components' (dim, P) for kind 'pca'.
    extras : list of str
        vae: any of 'logvar', 'recon_error', 'neg_elbo'.
    device : torch.device
    """

    def __init__(self, kind, vae, pca, extras, device):
        self.kind, self.extras, self.device = kind, list(extras), torch.device(device)
        self.memory_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.vae = None
        if vae is not None:
            self.vae = copy.deepcopy(vae).to(self.device, memory_format=self.memory_format).eval()
        if kind == "pca":
            self.mean = np.asarray(pca["mean"], dtype=np.float64)
            self.components_t = np.ascontiguousarray(np.asarray(pca["components"], dtype=np.float64).T)

    def __call__(self, images: torch.Tensor):
        if self.kind == "raw":
            return _pixels(images), {}
        if self.kind == "pca":
            return ((_pixels(images) - self.mean) @ self.components_t).astype(np.float32), {}
        with torch.no_grad():
            x = images.to(self.device, memory_format=self.memory_format, non_blocking=True)
            if "recon_error" in self.extras:
                out = self.vae(x)  # eval mode: z = mu, so the scores are deterministic
                mu, lv = out.mu, out.logvar
                scores = {"recon_error": out.recon_per_sample, "neg_elbo": out.recon_per_sample + out.kl_per_sample}
            else:
                mu, lv = self.vae.encode(x)
                scores = {}
        result = {k: v.float().cpu().numpy() for k, v in scores.items()}
        if "logvar" in self.extras:
            result["logvar"] = lv.float().cpu().numpy()
        return mu.float().cpu().numpy(), result


def _pixels(images: torch.Tensor) -> np.ndarray:
    """uint8 (b, C, S, S) -> float32 (b, C*S*S) in [0, 1]."""
    return images.reshape(len(images), -1).numpy().astype(np.float32) / np.float32(255.0)


def fit_pca(source, pre, dim: int, *, batch_size: int = 256, workers=None, progress: bool = False) -> dict:
    """Fit a PCA of ``dim`` components on the preprocessed pixels of ``source``, streaming batches.

    Exact (covariance matrix + eigendecomposition, float64) when an image has at
    most :data:`PCA_COVARIANCE_MAX_FEATURES` values, otherwise scikit-learn's
    IncrementalPCA; either way memory does not grow with the number of images.
    Component signs follow scikit-learn's convention (largest |loading| positive).

    Returns
    -------
    dict with 'mean' (P,), 'components' (dim, P), 'explained_variance' (dim,), float64
    """
    from tqdm.auto import tqdm

    from .data import iter_batches

    p = pre.channels * pre.size * pre.size
    n_src = len(source)
    if dim > min(p, n_src):
        raise ConfigError(f"invalid dim={dim}: a PCA of {n_src} images of {p} values has at most "
                          f"{min(p, n_src)} components")
    exact = p <= PCA_COVARIANCE_MAX_FEATURES
    n = 0
    total = np.zeros(p)
    outer = np.zeros((p, p)) if exact else None
    ipca = held = None
    if not exact:
        from sklearn.decomposition import IncrementalPCA

        ipca = IncrementalPCA(n_components=dim)
    with tqdm(total=n_src, disable=not progress, unit="img", desc="fitting pca", leave=False) as bar:
        for batch in iter_batches(source, pre, batch_size=max(batch_size, dim), workers=workers):
            bar.update(len(batch) + len(batch.skipped))
            if not len(batch):
                continue
            x = _pixels(batch.images).astype(np.float64)
            n += len(x)
            if exact:
                total += x.sum(0)
                outer += x.T @ x
            elif held is None or len(x) < dim:
                # IncrementalPCA needs >= dim rows per call: small pieces are merged into the held batch
                held = x if held is None else np.concatenate([held, x])
            elif len(held) < dim:
                held = np.concatenate([held, x])
            else:
                ipca.partial_fit(held)
                held = x
    if n <= dim:
        raise DataError(f"only {n} images could be decoded: a PCA with dim={dim} needs more than {dim}")
    if not exact:
        ipca.partial_fit(held)
        return {"mean": ipca.mean_.copy(), "components": ipca.components_.copy(),
                "explained_variance": ipca.explained_variance_.copy()}
    mean = total / n
    cov = (outer - n * np.outer(mean, mean)) / (n - 1)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:dim]
    components = vectors[:, order].T
    signs = np.sign(components[np.arange(dim), np.abs(components).argmax(1)])
    components *= np.where(signs == 0, 1.0, signs)[:, None]
    return {"mean": mean, "components": components, "explained_variance": np.maximum(values[order], 0.0)}


__all__ = ["extract", "ExtractResult", "ExtractProgress", "AutoTrainPlan", "plan_auto_training", "auto_run_dir",
           "fit_pca"]
