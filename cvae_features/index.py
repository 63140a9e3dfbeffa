"""The approximate nearest-neighbour index kept beside a feature store, and when it is stale.

``feats.h5`` gets ``feats.h5.index`` (a faiss ``IndexIVFFlat`` over the L2-normalised feature rows,
inner product, so its scores are cosine similarities) and ``feats.h5.index.json``, a sidecar that
records the identity of the store it was built from: resolved path, committed rows, width, feature
kind, model fingerprint, the store's ``updated`` attribute, file size and modification time. An
index is used only when that identity equals the store's now; otherwise it is rebuilt (the
default) or refused with :class:`IndexMismatchError` (``rebuild=False``).

faiss is an optional dependency (``pip install 'cvae-features[index]'``); asking for the index
without it raises :class:`MissingExtraError` naming the extra.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .errors import ConfigError, IndexMismatchError, MissingExtraError, StoreError

INDEX_FORMAT = "cvae-features-index"
INDEX_VERSION = 1
#: Probed inverted lists per query unless told otherwise (recall and speed: benchmarks/results/copy_detection.md).
DEFAULT_NPROBE = 16
#: Rows added to (and read from the store for) the index per step: bounds the memory of a build.
BUILD_BATCH_ROWS = 65536
#: Training rows per inverted list for the k-means of the coarse quantizer (faiss asks for at least 39).
TRAIN_ROWS_PER_LIST = 50
_IDENTITY_FIELDS = ("path", "n_rows", "dim", "feature_kind", "model_fingerprint", "updated", "size", "mtime_ns")


def require_faiss():
    """The faiss module, or a one-line MissingExtraError naming the extra that installs it."""
    try:
        import faiss
    except ImportError:
        raise MissingExtraError("approximate search needs faiss: pip install 'cvae-features[index]' "
                                "(or use exact search: --search exact)") from None
    return faiss


def index_paths(store_path) -> tuple:
    """(index file, sidecar JSON) kept beside ``store_path``: ``feats.h5.index``, ``feats.h5.index.json``."""
    store_path = Path(store_path)
    return store_path.with_name(store_path.name + ".index"), store_path.with_name(store_path.name + ".index.json")


def store_identity(store) -> dict:
    """What identifies the state of an open FeatureStore: an index built from another state is stale."""
    stat = os.stat(store.path)
    return {"path": str(Path(store.path).resolve()), "n_rows": int(store.n_rows), "dim": int(store.dim),
            "feature_kind": store.feature_kind, "model_fingerprint": store.model_fingerprint or "",
            "updated": str(store.attrs.get("updated", "")), "size": int(stat.st_size),
            "mtime_ns": int(stat.st_mtime_ns)}


def n_lists(n_rows: int) -> int:
    """Inverted lists for ``n_rows`` vectors: about 4·√n, with at least 39 training rows per list."""
    return max(1, min(int(4 * math.sqrt(n_rows)), n_rows // 39))


def normalize_rows(X) -> np.ndarray:
    """float32 rows scaled to unit L2 norm (all-zero rows stay zero)."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ConfigError(f"expected a 2-D array of feature rows, got shape {X.shape}")
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, np.float32(1.0))


class ApproximateIndex:
    """A loaded (or freshly built) index: ``search`` and ``range_search`` over unit-norm query rows.

    Attributes
    ----------
    path : Path
        The index file.
    info : dict
        The sidecar's contents (``store`` identity, ``index`` parameters, build time).
    built : bool
        True when this call built (or rebuilt) it.
    """

    def __init__(self, faiss_index, path: Path, info: dict, built: bool):
        self._index, self.path, self.info, self.built = faiss_index, Path(path), info, built

    @property
    def n_lists(self) -> int:
        return int(self._index.nlist)

    def _probe(self, nprobe: Optional[int]) -> None:
        nprobe = DEFAULT_NPROBE if nprobe is None else int(nprobe)
        if nprobe < 1:
            raise ConfigError(f"invalid nprobe={nprobe}: expected an integer >= 1")
        self._index.nprobe = min(nprobe, self.n_lists)

    def search(self, Qn: np.ndarray, k: int, nprobe: Optional[int] = None):
        """(similarities (q, k), rows (q, k)) of the k best rows per query, best first; row -1 where fewer were found."""
        self._probe(nprobe)
        return self._index.search(np.ascontiguousarray(Qn, dtype=np.float32), int(k))

    def range_search(self, Qn: np.ndarray, min_similarity: float, nprobe: Optional[int] = None):
        """(lims, similarities, rows): faiss's range search, rows with similarity above ``min_similarity``."""
        self._probe(nprobe)
        return self._index.range_search(np.ascontiguousarray(Qn, dtype=np.float32), float(min_similarity))


def build_index(store) -> ApproximateIndex:
    """Build the index of an open FeatureStore and write it (with its sidecar) beside the store.

    The store is read ``BUILD_BATCH_ROWS`` rows at a time (twice: a seeded sample trains the coarse
    quantizer, then every row is added), so memory holds the index and one batch. Files are written
    to temporary names and renamed; the sidecar last, so an interrupted build leaves a stale index.
    """
    faiss = require_faiss()
    index_path, sidecar = index_paths(store.path)
    n, d = store.n_rows, store.dim
    if n == 0:
        raise StoreError(f"{store.path} holds no rows: nothing to index")
    started = time.perf_counter()
    nlist = n_lists(n)
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.min_points_per_centroid = 1  # tiny stores: one list, no warning from faiss
    index.cp.seed = 0
    n_train = min(n, TRAIN_ROWS_PER_LIST * nlist)
    sample = np.sort(np.random.default_rng(0).choice(n, n_train, replace=False))
    parts = []
    for start, rows in store.iter_rows(BUILD_BATCH_ROWS):
        take = sample[(sample >= start) & (sample < start + len(rows))] - start
        parts.append(normalize_rows(rows[take]))
    index.train(np.concatenate(parts))
    for _, rows in store.iter_rows(BUILD_BATCH_ROWS):
        index.add(normalize_rows(rows))
    info = {"format": INDEX_FORMAT, "format_version": INDEX_VERSION, "store": store_identity(store),
            "index": {"type": "IndexIVFFlat", "metric": "inner product of L2-normalised rows (cosine)",
                      "n_lists": nlist, "n_train": int(n_train), "faiss_version": faiss.__version__},
            "build_seconds": round(time.perf_counter() - started, 3),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        tmp = index_path.with_name(index_path.name + ".tmp")
        faiss.write_index(index, str(tmp))
        os.replace(tmp, index_path)
        tmp = sidecar.with_name(sidecar.name + ".tmp")
        tmp.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, sidecar)
    except (OSError, RuntimeError) as err:
        raise StoreError(f"cannot write the index {index_path}: {str(err).splitlines()[0]}") from None
    return ApproximateIndex(index, index_path, info, built=True)


def _read_sidecar(sidecar: Path) -> Optional[dict]:
    try:
        info = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(info, dict) and info.get("format") == INDEX_FORMAT and isinstance(info.get("store"), dict)
    return info if ok else None


def stale_reason(info: Optional[dict], identity: dict) -> Optional[str]:
    """Why an index whose sidecar says ``info`` does not match a store with ``identity`` (None: it matches)."""
    if info is None:
        return "its sidecar is missing or unreadable"
    if info.get("format_version") != INDEX_VERSION:
        return f"it has index format {info.get('format_version')}, this tool writes {INDEX_VERSION}"
    built = info["store"]
    changed = [f"{name} {built.get(name)!r} -> {identity[name]!r}" for name in _IDENTITY_FIELDS
               if built.get(name) != identity[name]]
    return ("the store changed since it was built (" + "; ".join(changed) + ")") if changed else None


def open_index(store, *, rebuild: bool = True, note: Optional[Callable[[str], None]] = None) -> ApproximateIndex:
    """The index beside an open FeatureStore: loaded when it matches the store, built when missing,
    rebuilt when stale (``rebuild=True``) or refused with one line (``rebuild=False``).

    ``note`` receives one line when the index is built or rebuilt, and why.
    """
    faiss = require_faiss()
    index_path, sidecar = index_paths(store.path)
    say = note or (lambda line: None)
    if not index_path.exists():
        say(f"building the approximate index {index_path} ({store.n_rows} rows)")
        return build_index(store)
    info = _read_sidecar(sidecar)
    reason = stale_reason(info, store_identity(store))
    loaded = None
    if reason is None:
        try:
            loaded = faiss.read_index(str(index_path))
        except RuntimeError as err:
            reason = f"it cannot be read ({str(err).strip().splitlines()[-1]})"
        else:
            if loaded.ntotal != store.n_rows or loaded.d != store.dim:
                reason, loaded = f"it holds {loaded.ntotal} rows of width {loaded.d}", None
    if reason is None:
        return ApproximateIndex(loaded, index_path, info, built=False)
    if not rebuild:
        raise IndexMismatchError(f"the index {index_path} no longer matches {store.path}: {reason}; "
                                 "run without --no-rebuild (rebuild=True) to rebuild it")
    say(f"rebuilding the approximate index {index_path}: {reason}")
    return build_index(store)


__all__ = ["ApproximateIndex", "build_index", "open_index", "index_paths", "store_identity", "stale_reason",
           "normalize_rows", "n_lists", "require_faiss", "DEFAULT_NPROBE"]
