"""Extraction: stream a source's images through a featurizer into a feature store.

``extract()`` is three steps: resolve the featurizer (the one the store being finished
recorded, the reference given as ``model``, or a new one fitted on the source, which for
``vae`` means training a model first: :mod:`cvae_features.autotrain`), plan the rows (the
source's keys, or what a store being resumed or updated still needs), and write them batch by
batch.

Decoding runs in the data layer's worker processes (:func:`~cvae_features.data.iter_batches`).
On CPU each worker also runs the featurizer's batch call on the batches it decoded (one thread
each), so that decoding and the encoder never compete for the cores; on a GPU this process runs
the encoder. With ``engine='ray'`` the same work runs in a Ray Data actor pool instead
(:mod:`cvae_features.ray_engine`), and this process still writes. Each batch is written whole
and committed (:class:`~cvae_features.store.StoreWriter`), so memory is bounded by the batch and
an interrupted extraction can be finished with ``resume=True``.

Feature kinds come from the featurizer registry (:mod:`cvae_features.featurizers`): ``vae``
(the posterior mean μ(x), optionally with log-variance and anomaly scores from the same
deterministic pass), ``raw`` (the preprocessed pixels) and ``pca`` (their PCA), so that
baselines meet the same probes.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np

from .autotrain import AutoTrainPlan, auto_run_dir, plan_auto_training
from .data.sources import FileSource, file_identity, shard_of_key, shard_rows
from .errors import ConfigError, DataError, ModelError, StoreError, StoreNoSpaceError
from .featurizers import fit_pca, get_featurizer
from .join import join_stores, joined_parts
from .model import resolve_device
from .store import DONE, FeatureStore, StoreWriter, is_store, normalize_compression

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
class ExtractOptions:
    """How :func:`extract` runs; every field can also be passed to ``extract`` as a keyword.

    Attributes
    ----------
    features : str or None
        A registered feature kind ('vae', 'raw', 'pca'...); None: the kind of the store being
        resumed/updated or of a raw/pca ``model`` store, else 'vae'.
    dim : int or None
        pca: number of components (required unless the basis comes from a store).
        vae: latent width of the auto-trained model (default: ``VAEConfig().latent_dim``).
    train_config, model_config : TrainConfig/dict, VAEConfig/dict, optional
        For the auto-trained model.
    batch_size : int, default=256
        Images per batch; memory is bounded by it.
    workers : int or None
        Decoding processes (None: the data layer's default, one per core for files); with
        ``engine='ray'``, the actors of the pool (None: one per CPU of the cluster).
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
    shard : "I/N", (I, N) or None
        Extract only the keys of shard I (0-based) of N: a key's shard is a hash of the key
        (:func:`~cvae_features.data.sources.shard_of_key`), so shards are disjoint, cover the source
        and are stable when the folder is listed again. Needs ``model`` (every shard must use the
        same model); a shard store resumes and updates as its own shard.
    engine : {'local', 'ray'}, default='local'
        Who decodes and encodes: 'local', this machine's worker processes; 'ray', a Ray Data actor
        pool (:mod:`cvae_features.ray_engine`; ``pip install "cvae-features[ray]"``), ``workers``
        actors of one CPU each (None: one per CPU of the cluster). Either way this process writes
        the store, and the store is the same. The ray engine runs the featurizer on CPU
        (``device`` 'auto' or 'cpu').
    ray_address : str or None
        engine='ray': the Ray cluster, as ``ray.init(address=...)`` takes it (HOST:PORT of the
        head, or 'auto'); None: the one this process or ``RAY_ADDRESS`` uses, else a local Ray
        started for the run. An address where no Ray answers is refused within seconds.
    """

    features: Optional[str] = None
    dim: Optional[int] = None
    train_config: object = None
    model_config: object = None
    batch_size: int = 256
    workers: Optional[int] = None
    resume: bool = False
    update: bool = False
    overwrite: bool = False
    max_bad: Optional[int] = None
    compression: Optional[str] = None
    scores: bool = False
    logvar: bool = False
    carry_weights: Optional[bool] = None
    device: str = "auto"
    data_dir: object = None
    progress: bool = True
    callback: Optional[Callable[[ExtractProgress], None]] = None
    on_training: Optional[Callable[[AutoTrainPlan], None]] = None
    shard: object = None
    engine: str = "local"
    ray_address: Optional[str] = None

    def __post_init__(self):
        if self.features is not None:
            get_featurizer(self.features)  # ConfigError naming the registered kinds
        dim, batch_size, max_bad = self.dim, self.batch_size, self.max_bad
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1):
            raise ConfigError(f"invalid dim={dim!r}: expected an integer >= 1")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ConfigError(f"invalid batch_size={batch_size!r}: expected an integer >= 1")
        if max_bad is not None and (isinstance(max_bad, bool) or not isinstance(max_bad, (int, np.integer))
                                    or max_bad < 0):
            raise ConfigError(f"invalid max_bad={max_bad!r}: expected an integer >= 0 or None")
        chosen = [name for name in ("resume", "update", "overwrite") if getattr(self, name)]
        if len(chosen) > 1:
            raise ConfigError(f"{' and '.join(chosen)} exclude each other: pick one")
        self.compression = normalize_compression(self.compression)
        self.shard = _parse_shard(self.shard)
        _check_engine(self)

    @property
    def extras(self) -> List[str]:
        """The optional per-row outputs asked for (store names)."""
        return (["logvar"] if self.logvar else []) + (["recon_error", "neg_elbo"] if self.scores else [])


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


def extract(source, store_path, *, model=None, options: Optional[ExtractOptions] = None,
            **overrides) -> ExtractResult:
    """Write the features of every image of ``source`` to the store at ``store_path``.

    Parameters
    ----------
    source : str, path or ImageSource
        A folder, a ``.csv`` manifest, a built-in name (``"digits"``...) or an open source.
    store_path : str or path
        The ``.h5`` store to write.
    model : model, Featurizer, str, path or None
        vae features: a model (of any registered family), a run directory, a model file or a
        store carrying weights; None trains one on ``source`` first (into ``<store stem>.run/``,
        see :func:`~cvae_features.autotrain.plan_auto_training`) and carries its weights in the
        store. raw/pca features: a raw or pca store whose preprocessing (and PCA basis) are
        reused, so that test features match training features. A ready
        :class:`~cvae_features.featurizers.Featurizer` is used as it is.
    options : ExtractOptions, optional
        How to run (see :class:`ExtractOptions`).
    **overrides
        Fields of :class:`ExtractOptions` (``features=``, ``dim=``, ``resume=``, ``scores=``...),
        applied over ``options``.

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

    opts = _options(options, overrides)
    if model is not None and (opts.train_config is not None or opts.model_config is not None):
        raise ConfigError("train_config/model_config (--epochs) shape the model trained when no model is given; "
                          "with a model they would be ignored: leave them out")
    store_path = Path(store_path)
    device = resolve_device(opts.device)  # before any training, fitting or writing
    ray = _ray_engine(opts)  # Ray installed, the cluster answering: one-line errors before anything is done
    appending = _check_target(store_path, opts)
    src = open_source(source, data_dir=opts.data_dir)
    if len(src) == 0:
        raise DataError(f"{src.description} holds no images")
    if not store_path.parent.is_dir():
        raise StoreError(f"cannot write {store_path}: folder {store_path.parent} does not exist (create it first)")
    old = _read_existing(store_path) if appending else None
    if old is not None:
        _check_same_source(store_path, old, src)
        if old["joined"] == "virtual":
            return _extract_joined(src, store_path, model, opts)
        opts = _same_shard(store_path, old, opts)
    if opts.shard is not None:
        if model is None and old is None:
            raise ConfigError(f"--shard {opts.shard[0]}/{opts.shard[1]} needs --model: every shard must use the same "
                              "model (train one first: cvae train SOURCE -o RUN_DIR, then --model RUN_DIR)")
        rows = shard_rows(src.keys, *opts.shard)
        if len(rows) == 0:
            raise DataError(f"shard {opts.shard[0]}/{opts.shard[1]} of {src.description} holds no images")
        ignored = [(k, r) for k, r in getattr(src, "ignored", []) if shard_of_key(k, opts.shard[1]) == opts.shard[0]]
        src = src.subset(rows)
        src.ignored = ignored  # what the walk left out is recorded by the shard its key falls in, once

    # 1. the featurizer (may train a model: a separate step, before anything is written)
    feat = resolve_featurizer(src, store_path, old, model=model, options=opts)
    # 2. the store and its plan
    writer = _open_writer(store_path, src, feat, old, opts)
    try:
        in_workers = device.type == "cpu" or opts.engine == "ray"  # workers run the featurizer (module notes)
        encode = feat.batch_fn(writer.extras, device if opts.engine == "local" else "cpu")
        t0 = time.perf_counter()
        work = _pending_work(writer, src, appending=appending, update=opts.update, out_dim=feat.dim,
                             store_path=store_path)
        # 3. the rows
        run = dict(in_workers=in_workers, batch_size=opts.batch_size, workers=opts.workers, progress=opts.progress,
                   ray=ray)
        n_changed = _rewrite_changed(writer, src, feat, work, encode, **run) if opts.update else 0
        n_new, n_bad, kept_skips = _write_batches(writer, src, feat, work, encode, max_bad=opts.max_bad,
                                                  store_path=store_path, callback=opts.callback, **run)
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
        if ray is not None:
            ray.close()  # stops the local Ray it started, if it did
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
        path=store_path, feature_kind=feat.kind, dim=feat.dim, n_rows=n_rows, n_skipped=n_skipped, n_new=n_new,
        n_new_skipped=n_bad, complete=complete, seconds=seconds,
        images_per_s=processed / seconds if seconds > 0 else float("nan"), model_fingerprint=feat.fingerprint,
        trained=feat.trained, train_seconds=feat.train_seconds, run_dir=feat.run_dir,
        skipped=kept_skips[:_SKIPPED_KEPT], n_train_images=feat.n_train_images, n_changed=n_changed,
        n_removed=work.n_removed)


def resolve_featurizer(src, store_path: Path, old: Optional[dict], *, model=None, options: ExtractOptions):
    """The featurizer an extraction uses: a ready one, the reference ``model`` stands for, the one the store
    being finished recorded, or one fitted on ``src`` (for vae: a model trained first)."""
    from .featurizers import Featurizer

    if isinstance(model, Featurizer):
        feat = model
        if options.features is not None and options.features != feat.kind:
            raise ConfigError(f"features={options.features!r} but the featurizer given makes {feat.kind} features")
    else:
        cls = get_featurizer(_resolve_kind(options.features, model, old, store_path))
        if model is not None:
            feat = cls.from_reference(model, src, options)
        elif old is not None:
            with FeatureStore(store_path) as store:
                feat = cls.from_store(store)
        else:
            feat = cls.fit(src, options, store_path=store_path, on_training=options.on_training)
    if old is not None:
        if old["kind"] != feat.kind:
            raise StoreError(f"store {store_path} holds {old['kind']} features, not {feat.kind}; "
                             "use --overwrite or another -o")
        if old["fingerprint"] != feat.fingerprint:
            raise StoreError(f"store {store_path} was written by model {old['fingerprint']}, not "
                             f"{feat.fingerprint}; use --overwrite or another -o")
        feat.keep_resize(old["preprocess"])  # a store being finished keeps its own preprocessing
    unknown = [e for e in options.extras if e not in feat.extras]
    if unknown and old is None:
        raise ConfigError(f"{feat.kind} features have no {', '.join(unknown)} "
                          f"({'available: ' + ', '.join(feat.extras) if feat.extras else 'no extras'})")
    return feat


# ----------------------------------------------------------------------------------------------
# the steps of extract()

def _options(options: Optional[ExtractOptions], overrides: dict) -> ExtractOptions:
    names = {f.name for f in dataclasses.fields(ExtractOptions)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"extract() got unexpected keyword argument(s) {unknown}; options are {sorted(names)}")
    if options is None:
        return ExtractOptions(**overrides)
    if not isinstance(options, ExtractOptions):
        raise ConfigError(f"invalid options of type {type(options).__name__}: expected ExtractOptions")
    return dataclasses.replace(options, **overrides) if overrides else options


def _check_target(store_path: Path, opts: ExtractOptions) -> bool:
    """Whether the run appends to an existing store; StoreError when the target cannot be written."""
    exists = store_path.exists()
    if store_path.is_dir():
        raise StoreError(f"store path {store_path} is a directory: expected an .h5 file name")
    if exists and not is_store(store_path):
        raise StoreError(f"{store_path} exists and is not a cvae feature store; refusing to touch it "
                         "(choose another -o)")
    if exists and not (opts.resume or opts.update or opts.overwrite):
        raise StoreError(f"{store_path} already exists: use --resume to finish it, --update to add new images, "
                         "--overwrite to replace it, or choose another -o")
    return exists and (opts.resume or opts.update)


def _open_writer(store_path: Path, src, feat, old: Optional[dict], opts: ExtractOptions) -> StoreWriter:
    if old is not None:
        writer = StoreWriter.append_to(store_path)
        if writer.dim != feat.dim:
            writer.close()
            raise StoreError(f"store {store_path} has dim {writer.dim}, the model gives {feat.dim}")
        return writer
    carry = feat.trained if opts.carry_weights is None else bool(opts.carry_weights)
    return StoreWriter.create(store_path, **feat.store_fields(carry_weights=carry), source=src.description,
                              source_spec=getattr(src, "spec", "") or "", plan_keys=src.keys,
                              label_names=src.label_names, extras=opts.extras, compression=opts.compression,
                              plan_identity=file_identity(src), shard=opts.shard)


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


def _rewrite_changed(writer, src, feat, work: _Work, encode, *, in_workers, batch_size, workers, progress,
                     ray) -> int:
    """update: re-extract the files that changed since their row was written and overwrite those rows."""
    from tqdm.auto import tqdm

    if not len(work.changed):
        return 0
    plan_of_row = dict(zip(work.changed_rows.tolist(), work.changed.tolist()))
    n_done = 0
    with tqdm(total=len(work.changed), disable=not progress, unit="img", desc="re-extracting changed files",
              dynamic_ncols=True) as bar:
        for batch in _iter_rows(ray, src, feat, encode, work.changed_rows, in_workers=in_workers,
                                batch_size=batch_size, workers=workers):
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


def _write_batches(writer, src, feat, work: _Work, encode, *, in_workers, batch_size, workers, max_bad,
                   store_path, progress, callback, ray) -> Tuple[int, int, List[Tuple[str, str]]]:
    """Decode, encode and commit batch by batch; returns (rows written, images skipped, first skips)."""
    from tqdm.auto import tqdm

    # on CPU the decoding workers run the encoder too (see the module notes); a GPU is fed from here
    plan_of_row = np.full(len(src), -1, dtype=np.int64)
    plan_of_row[work.src_rows] = work.pending
    labels_all, keys_all, label_map = src.labels, src.keys, work.label_map
    n_new, n_bad, kept_skips = 0, work.n_bad, list(work.kept_skips)
    with tqdm(total=len(work.src_rows), disable=not progress, unit="img", desc=f"extracting {feat.kind}",
              dynamic_ncols=True) as bar:
        batches = _iter_rows(ray, src, feat, encode, work.src_rows, in_workers=in_workers, batch_size=batch_size,
                             workers=workers)
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


def _iter_rows(ray, src, feat, encode, rows, *, in_workers, batch_size, workers):
    """The Batches of ``rows``: from this machine's workers, or from a Ray cluster (which always encodes)."""
    from .data import iter_batches

    if ray is not None:
        return ray.iter_batches(src, feat.preprocess, encode, indices=rows, batch_size=batch_size)
    return iter_batches(src, feat.preprocess, batch_size=batch_size, workers=workers, indices=rows,
                        transform=encode if in_workers else None)


# ----------------------------------------------------------------------------------------------
# helpers

def _ray_engine(opts: ExtractOptions):
    """engine='ray': a :class:`~cvae_features.ray_engine.RayEngine` (it connects when entered); else None."""
    if opts.engine != "ray":
        return None
    from .ray_engine import RayEngine

    return RayEngine(opts.ray_address, actors=opts.workers)


def _check_engine(opts: ExtractOptions) -> None:
    """ConfigError for an unknown engine, and for options the chosen engine cannot honour."""
    if opts.engine not in ("local", "ray"):
        raise ConfigError(f"invalid engine={opts.engine!r}: expected 'local' or 'ray'")
    if opts.ray_address is not None and opts.engine != "ray":
        raise ConfigError(f"--ray-address {opts.ray_address} needs --engine ray (the local engine runs on this "
                          "machine)")
    if opts.engine != "ray":
        return
    if opts.ray_address is not None and (not isinstance(opts.ray_address, str) or not opts.ray_address.strip()):
        raise ConfigError(f"invalid ray_address={opts.ray_address!r}: expected HOST:PORT of a Ray head, or 'auto'")
    workers = opts.workers
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0):
        raise ConfigError(f"invalid workers={workers!r}: expected an integer >= 1 (Ray actors) or None (one per CPU)")
    refused = []
    if workers == 0:
        refused.append("--workers 0 (decoding in this process; with --engine ray, --workers N is the number of actors)")
    if opts.device not in ("auto", "cpu"):
        refused.append(f"--device {opts.device} (the Ray actors run the featurizer on CPU; use auto or cpu)")
    if refused:
        raise ConfigError(f"--engine ray cannot honour {' and '.join(refused)}")

def _read_existing(path: Path) -> dict:
    with FeatureStore(path) as s:
        return {"kind": s.feature_kind, "fingerprint": s.model_fingerprint, "has_model": s.has_model,
                "preprocess": s.preprocess_dict, "dim": s.dim, "source_spec": s.source_spec, "source": s.source,
                "shard": s.shard, "joined": (s.joined or {}).get("mode")}


def _extract_joined(src, store_path: Path, model, opts: ExtractOptions) -> ExtractResult:
    """--resume / --update of a joined store: each of its shards is finished or updated in turn (as its own
    shard), then the shards are joined again in their place."""
    if opts.shard is not None:
        raise StoreError(f"{store_path} is a joined store of whole shards: --shard does not apply (update it "
                         "without --shard, or update one shard file directly)")
    parts = joined_parts(store_path)
    with FeatureStore(store_path) as s:
        spec = s.source_spec
    if not spec:
        raise StoreError(f"{store_path} joins whole stores of different sources: update each of them "
                         f"(cvae extract ITS_SOURCE -o PART --update) and join them again (cvae join {store_path} "
                         "PARTS... --overwrite)")
    done = [extract(src, part, model=model, options=opts) for part in parts]
    joined = join_stores(store_path, parts, overwrite=True)
    total = {name: sum(getattr(r, name) for r in done)
             for name in ("n_new", "n_new_skipped", "n_changed", "n_removed", "seconds")}
    processed = total["n_new"] + total["n_new_skipped"]
    return dataclasses.replace(
        done[-1], path=store_path, n_rows=joined.n_rows, n_skipped=joined.n_skipped, complete=True,
        images_per_s=processed / total["seconds"] if total["seconds"] > 0 else float("nan"),
        skipped=[kv for r in done for kv in r.skipped][:_SKIPPED_KEPT], **total)


def _parse_shard(shard):
    """None, or (index, n) from "I/N" or a pair, with 0 <= I < N; ConfigError otherwise."""
    if shard is None:
        return None
    try:
        i, n = (int(v) for v in (shard.split("/") if isinstance(shard, str) else shard))
    except (TypeError, ValueError):
        raise ConfigError(f"invalid shard={shard!r}: expected I/N, e.g. 0/4 (shards are numbered from 0)") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"invalid shard={shard!r}: I must be from 0 to N-1 (shards are numbered from 0), "
                          f"here 0 to {max(n - 1, 0)}")
    return i, n


def _same_shard(store_path: Path, old: dict, opts: ExtractOptions) -> ExtractOptions:
    """A shard store goes on as its own shard (taken from the store when not given); a whole store stays whole."""
    recorded = old["shard"]
    if opts.shard is None:
        return dataclasses.replace(opts, shard=recorded) if recorded else opts
    if recorded != opts.shard:
        held = f"shard {recorded[0]}/{recorded[1]}" if recorded else "the whole source"
        raise StoreError(f"{store_path} holds {held}, not shard {opts.shard[0]}/{opts.shard[1]}: --resume and "
                         "--update continue a store with its own shard")
    return opts


def _check_same_source(store_path: Path, old: dict, src) -> None:
    """--resume / --update go on with the store's own source only (its recorded spec)."""
    recorded, given = old["source_spec"], getattr(src, "spec", "") or ""
    if recorded and given and recorded != given:
        raise StoreError(f"{store_path} was extracted from {recorded}, not {given}: --resume and --update "
                         "continue a store with its own source (use another -o for other images, or --overwrite)")


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


__all__ = ["extract", "ExtractOptions", "ExtractResult", "ExtractProgress", "resolve_featurizer", "file_identity",
           "AutoTrainPlan", "plan_auto_training", "auto_run_dir", "fit_pca"]
