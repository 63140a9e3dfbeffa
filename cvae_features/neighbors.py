"""Similar images and near-duplicates: nearest neighbours and duplicate groups over feature rows.

The distance is the **cosine distance** ``1 - cos(a, b)`` of two feature rows (0 for rows pointing the
same way, 1 for orthogonal ones, at most 2). It is scale-free, so one duplicate threshold means the
same thing for μ, raw pixels and PCA stores of any width, and it is what the approximate index
computes exactly (inner products of L2-normalised rows). Rows are not centred: a store's mean
changes when rows are added, and distances should not.

Two layers:

- over arrays: :func:`nearest_neighbors` and :func:`find_duplicates` take ``X`` (n, d) and keys and
  return pandas DataFrames; exact, in blocks whose distance matrix stays under :data:`BLOCK_BYTES`;
- over a store: :func:`store_neighbors` (queries are keys of the store or image files, embedded with
  the store's own featurizer) and :func:`store_duplicates` choose exact search up to
  :data:`EXACT_MAX_ROWS` rows and the approximate index (:mod:`cvae_features.index`) above it.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import pandas as pd

from .errors import ConfigError, DecodeError, MissingExtraError, ModelError, StoreError
from .index import normalize_rows, open_index, require_faiss

METRIC = "cosine distance (1 - cos) between feature rows"
#: Default duplicate threshold on the cosine distance (chosen in benchmarks/results/copy_detection.md).
DEFAULT_THRESHOLD = 0.01
#: Exact search up to this many rows; the approximate index above (``search="auto"``). At this size an
#: exact duplicate search compares 1.25e9 row pairs (11-12 s for μ of width 256 on 2 cores), and its time
#: grows with the square of the rows (benchmarks/results/copy_detection.md).
EXACT_MAX_ROWS = 50_000
#: Upper bound of one block of similarities computed at once (bytes).
BLOCK_BYTES = 64 << 20
#: Queries scored against the rows at once.
QUERY_BLOCK = 1024
SEARCH_CHOICES = ("auto", "exact", "approximate")
#: Slack for float32 rounding when a distance is compared with a threshold (identical rows may read 1e-7).
ROUNDING = 1e-5


# ------------------------------------------------------------------------------------------
# over arrays

def _rows_per_block(n_queries: int, width: int) -> int:
    """Rows per block so that both the block (rows x width) and its similarities (queries x rows) fit BLOCK_BYTES."""
    return max(1, BLOCK_BYTES // (4 * max(n_queries, width, 1)))


def _top_k(blocks, Qn: np.ndarray, k: int, query_rows: Optional[np.ndarray]):
    """(similarities (q, k), rows (q, k)) of the k most similar rows, best first (ties: lower row first).

    ``blocks`` yields ``(start, unit-norm rows)``; a query's own row (``query_rows``, -1 = none) is left out.
    """
    q = len(Qn)
    best_s = np.full((q, k), -np.inf, dtype=np.float32)
    best_i = np.full((q, k), -1, dtype=np.int64)
    for start, B in blocks:
        S = Qn @ B.T
        if query_rows is not None:
            inside = (query_rows >= start) & (query_rows < start + len(B))
            S[np.flatnonzero(inside), query_rows[inside] - start] = -np.inf
        kk = min(k, S.shape[1])
        part = np.argpartition(-S, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(S, part, 1)], axis=1)
        cand_i = np.concatenate([best_i, part + start], axis=1)
        top = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, top, 1), np.take_along_axis(cand_i, top, 1)
    order = np.lexsort((best_i, -best_s))
    return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)


def _array_blocks(Xn: np.ndarray, n_queries: int):
    step = _rows_per_block(n_queries, Xn.shape[1])
    for start in range(0, len(Xn), step):
        yield start, Xn[start:start + step]


def _table(query_names: Sequence[str], sims: np.ndarray, rows: np.ndarray, keys: Sequence[str]) -> pd.DataFrame:
    found = rows >= 0
    q_idx, rank = np.nonzero(found)
    picked = rows[found]
    return pd.DataFrame({"query": [query_names[i] for i in q_idx], "rank": rank + 1,
                         "key": [keys[r] for r in picked], "row": picked,
                         "distance": np.clip(1.0 - sims[found], 0.0, 2.0).astype(np.float64)})


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"invalid k={k!r}: expected an integer >= 1")
    return int(k)


def nearest_neighbors(X, queries, k: int = 10, *, keys: Optional[Sequence[str]] = None,
                      query_rows: Optional[Sequence[int]] = None,
                      query_names: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """The ``k`` rows of ``X`` nearest to each query, by cosine distance, exactly.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    queries : ndarray of shape (n_queries, n_features)
    k : int, default=10
        Neighbours per query; more than the rows there are is clamped.
    keys : sequence of str of length n_samples, optional
        Names of the rows (default: ``"0"``, ``"1"``...).
    query_rows : sequence of int of length n_queries, optional
        The row of ``X`` each query is (-1 for none); a query's own row is not its neighbour.
    query_names : sequence of str, optional
        Default: the key of the query's row, or its position.

    Returns
    -------
    DataFrame with columns query, rank (1 = nearest), key, row, distance; sorted by query, then rank.
    """
    X = normalize_rows(X)
    Qn = normalize_rows(queries)
    if Qn.shape[1] != X.shape[1]:
        raise ConfigError(f"queries have {Qn.shape[1]} features, X has {X.shape[1]}")
    keys = [str(i) for i in range(len(X))] if keys is None else list(keys)
    if len(keys) != len(X):
        raise ConfigError(f"{len(keys)} keys for {len(X)} rows")
    rows = None if query_rows is None else np.asarray(query_rows, dtype=np.int64).reshape(-1)
    if rows is not None and len(rows) != len(Qn):
        raise ConfigError(f"{len(rows)} query_rows for {len(Qn)} queries")
    if query_names is None:
        query_names = [keys[r] if rows is not None and r >= 0 else str(i)
                       for i, r in enumerate(rows if rows is not None else [-1] * len(Qn))]
    k = min(_check_k(k), len(X) - (1 if rows is not None and (rows >= 0).any() else 0))
    if k < 1 or len(Qn) == 0:
        return _table([], np.zeros((0, 0), np.float32), np.zeros((0, 0), np.int64), keys)
    sims, found = [], []
    for q0 in range(0, len(Qn), QUERY_BLOCK):
        s, r = _top_k(_array_blocks(X, min(QUERY_BLOCK, len(Qn))), Qn[q0:q0 + QUERY_BLOCK], k,
                      None if rows is None else rows[q0:q0 + QUERY_BLOCK])
        sims.append(s)
        found.append(r)
    return _table(list(query_names), np.concatenate(sims), np.concatenate(found), keys)


class _Components:
    """Connected components of a graph fed edge batches; memory stays O(n + one batch)."""

    slack = 1_000_000  # edges kept beyond 4 per row before they are compacted

    def __init__(self, n: int):
        self.n, self.r, self.c, self.count = n, [], [], 0

    def add(self, r: np.ndarray, c: np.ndarray) -> None:
        if len(r):
            self.r.append(r.astype(np.int64))
            self.c.append(c.astype(np.int64))
            self.count += len(r)
        if self.count > 4 * self.n + self.slack:  # keep one edge per grouped row instead of every pair
            self.r, self.c = self._forest()
            self.count = len(self.r[0])

    def labels(self) -> np.ndarray:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        r = np.concatenate(self.r) if self.r else np.zeros(0, np.int64)
        c = np.concatenate(self.c) if self.c else np.zeros(0, np.int64)
        graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(self.n, self.n))
        return connected_components(graph, directed=False)[1]

    def _forest(self):
        labels = self.labels()
        first = np.full(labels.max() + 1, self.n, dtype=np.int64)
        np.minimum.at(first, labels, np.arange(self.n))
        rows = np.flatnonzero(first[labels] != np.arange(self.n))
        return [rows], [first[labels[rows]]]

    def groups(self) -> List[np.ndarray]:
        """Groups of two or more rows, each sorted, ordered by their first row."""
        labels = self.labels()
        order = np.argsort(labels, kind="stable")
        bounds = np.flatnonzero(np.diff(labels[order])) + 1
        groups = [g for g in np.split(order, bounds) if len(g) > 1]
        return sorted(groups, key=lambda g: g[0])


def _check_threshold(threshold) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        t = float("nan")
    if not 0.0 <= t <= 2.0:
        raise ConfigError(f"invalid threshold={threshold!r}: expected a cosine distance in [0, 2]")
    return t


def _exact_pairs(Xn: np.ndarray, min_sim: float):
    """Yield (rows, cols), rows < cols, of the pairs of unit rows with similarity >= ``min_sim``."""
    step = _rows_per_block(len(Xn), Xn.shape[1])
    for i0 in range(0, len(Xn), step):
        S = Xn[i0:i0 + step] @ Xn[i0:].T
        r, c = np.nonzero(S >= min_sim)
        keep = c > r
        yield r[keep] + i0, c[keep] + i0


def _groups_table(groups: List[np.ndarray], keys: Sequence[str], distances: np.ndarray) -> pd.DataFrame:
    rows = np.concatenate(groups) if groups else np.zeros(0, np.int64)
    number = np.repeat(np.arange(1, len(groups) + 1), [len(g) for g in groups])
    return pd.DataFrame({"group": number, "key": [keys[r] for r in rows], "row": rows,
                         "distance": np.clip(distances, 0.0, 2.0).astype(np.float64)})


def _first_member_distances(groups, fetch) -> np.ndarray:
    """Cosine distance of each member to its group's first member; ``fetch(rows)`` gives unit rows."""
    if not groups:
        return np.zeros(0)
    members = np.concatenate(groups)
    firsts = np.repeat([g[0] for g in groups], [len(g) for g in groups])
    wanted = np.unique(members)
    unit = fetch(wanted)
    at = np.searchsorted(wanted, members), np.searchsorted(wanted, firsts)
    distances = 1.0 - np.einsum("ij,ij->i", unit[at[0]], unit[at[1]]).astype(np.float64)
    distances[members == firsts] = 0.0
    return distances


def find_duplicates(X, keys: Optional[Sequence[str]] = None,
                    threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """Groups of near-identical rows: pairs within ``threshold`` cosine distance, joined transitively.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    keys : sequence of str of length n_samples, optional
    threshold : float, default=DEFAULT_THRESHOLD
        Two rows are duplicates when ``1 - cos`` is at most this (plus :data:`ROUNDING`); groups are the connected
        components of that relation (so a member may be farther than ``threshold`` from the first).

    Returns
    -------
    DataFrame with columns group (1, 2, ... in order of the group's first row), key, row and
    distance (to the group's first member, which has 0); rows outside every group are left out.
    """
    t = _check_threshold(threshold)
    Xn = normalize_rows(X)
    keys = [str(i) for i in range(len(Xn))] if keys is None else list(keys)
    if len(keys) != len(Xn):
        raise ConfigError(f"{len(keys)} keys for {len(Xn)} rows")
    comps = _Components(len(Xn))
    for r, c in _exact_pairs(Xn, 1.0 - t - ROUNDING):
        comps.add(r, c)
    groups = comps.groups()
    return _groups_table(groups, keys, _first_member_distances(groups, lambda rows: Xn[rows]))


# ------------------------------------------------------------------------------------------
# over a store

def choose_search(search: str, n_rows: int) -> str:
    """'exact' or 'approximate' for ``search`` ('auto' decides by size: :data:`EXACT_MAX_ROWS`)."""
    if search not in SEARCH_CHOICES:
        raise ConfigError(f"invalid search={search!r}: expected one of {list(SEARCH_CHOICES)}")
    if search == "auto":
        return "exact" if n_rows <= EXACT_MAX_ROWS else "approximate"
    return search


@dataclass
class NeighborsResult:
    """What :func:`store_neighbors` found: ``table`` (query, rank, key, row, distance) and how."""

    store: str
    table: pd.DataFrame
    queries: List[dict]
    k: int
    search: str
    notes: List[str] = field(default_factory=list)
    index: Optional[dict] = None

    def to_dict(self) -> dict:
        out = []
        for q in self.queries:
            rows = self.table[self.table["query"] == q["query"]]
            out.append(dict(q, neighbors=rows.drop(columns="query").to_dict("records")))
        return {"store": self.store, "metric": METRIC, "search": self.search, "k": self.k, "queries": out,
                "notes": self.notes, "index": self.index}


@dataclass
class DuplicatesResult:
    """What :func:`store_duplicates` found: ``table`` (group, key, row, distance) and how."""

    store: str
    table: pd.DataFrame
    threshold: float
    n_rows: int
    search: str
    notes: List[str] = field(default_factory=list)
    index: Optional[dict] = None

    @property
    def n_groups(self) -> int:
        return int(self.table["group"].nunique())

    def to_dict(self) -> dict:
        groups = [{"group": int(g), "members": part.drop(columns="group").to_dict("records")}
                  for g, part in self.table.groupby("group", sort=True)]
        return {"store": self.store, "metric": METRIC, "threshold": self.threshold, "search": self.search,
                "n_rows": self.n_rows, "n_groups": self.n_groups, "n_images_in_groups": len(self.table),
                "groups": groups, "notes": self.notes, "index": self.index}


def _open(store_path):
    from .store import FeatureStore

    store = FeatureStore(store_path)
    if store.n_rows == 0:
        store.close()
        raise StoreError(f"{store_path} holds no rows: nothing to search")
    return store


def _search_method(store, search: str, notes: List[str]) -> str:
    method = choose_search(search, store.n_rows)
    if method == "approximate" and search == "auto":
        try:
            require_faiss()
        except MissingExtraError:
            notes.append(f"{store.n_rows} rows would use the approximate index, but faiss is not installed "
                         "(pip install 'cvae-features[index]'): searching exactly")
            return "exact"
    return method


def _index(store, rebuild: bool, notes: List[str]):
    idx = open_index(store, rebuild=rebuild, note=notes.append)
    return idx, dict(idx.info, path=str(idx.path), built_now=idx.built)


def _query_featurizer(store, model):
    """The featurizer that made ``store`` (rebuilt from it, or ``model`` checked against its fingerprint)."""
    from .featurizers import get_featurizer

    cls = get_featurizer(store.feature_kind)
    if model is None:
        return cls.from_store(store)
    feat = cls.from_reference(model, None, types.SimpleNamespace(dim=None))
    if (feat.fingerprint or "") != (store.model_fingerprint or ""):
        raise ModelError(f"model {model} has fingerprint {feat.fingerprint}, but {store.path} was written by "
                         f"{store.model_fingerprint}: its features are not comparable")
    feat.keep_resize(store.preprocess_dict)
    return feat


def embed_images(store, paths: Sequence, model=None) -> np.ndarray:
    """float32 (len(paths), dim): image files embedded by the featurizer that made the open ``store``.

    A vae store rebuilds its model from the weights it carries; one without weights needs ``model``
    (a run dir, model file or store with the same fingerprint). A file that cannot be decoded raises
    :class:`DecodeError` naming it.
    """
    import torch

    from .data import decode_image

    feat = _query_featurizer(store, model)
    images = []
    for path in paths:
        try:
            images.append(decode_image(path, feat.preprocess))
        except DecodeError as err:
            raise DecodeError(f"query {path}: cannot be decoded: {err}") from None
    features, _ = feat.batch_fn((), "cpu")(torch.from_numpy(np.stack(images)))
    return np.asarray(features, dtype=np.float32)


def _resolve_queries(store, queries: Sequence, model) -> tuple:
    """(query records, unit query rows, own rows): a query is a key of the store, else an image file."""
    if not queries:
        raise ConfigError("no query: give keys of the store or image files")
    position = {key: i for i, key in enumerate(store.keys)}
    records, rows, files = [], [], []
    for q in dict.fromkeys(map(str, queries)):  # each query once, in the order given
        if q in position:
            records.append({"query": q, "kind": "key"})
            rows.append(position[q])
        elif Path(q).is_file():
            records.append({"query": q, "kind": "file"})
            rows.append(-1)
            files.append(q)
        else:
            raise StoreError(f"query {q!r} is neither a key in {store.path} nor an image file "
                             f"(keys look like {store.keys[0]!r})")
    Q = np.zeros((len(records), store.dim), dtype=np.float32)
    rows = np.asarray(rows, dtype=np.int64)
    for i in np.flatnonzero(rows >= 0):
        Q[i] = store.read_rows(rows[i], rows[i] + 1)[0]
    if files:
        Q[rows < 0] = embed_images(store, files, model)
    return records, normalize_rows(Q), rows


def store_neighbors(store_path, queries: Sequence, k: int = 10, *, model=None, search: str = "auto",
                    nprobe: Optional[int] = None, rebuild: bool = True) -> NeighborsResult:
    """The ``k`` images of a store nearest to each query (cosine distance on its features).

    Parameters
    ----------
    store_path : str or Path
    queries : sequence of str
        Keys of the store (its own row is left out of its list), or image files, embedded with the
        store's featurizer (``model`` for a vae store that carries no weights).
    k : int, default=10
        Neighbours per query; more than the store has is clamped, with a note.
    search : {'auto', 'exact', 'approximate'}
        'auto': exact up to :data:`EXACT_MAX_ROWS` rows, the approximate index above.
    nprobe : int, optional
        Inverted lists the approximate index probes (default :data:`cvae_features.index.DEFAULT_NPROBE`).
    rebuild : bool, default=True
        Rebuild an index that no longer matches the store; False refuses it (IndexMismatchError).
    """
    k = _check_k(k)
    notes: List[str] = []
    with _open(store_path) as store:
        if not store.is_complete:
            notes.append(f"{store_path} is incomplete ({store.n_pending} files pending): searching its "
                         f"{store.n_rows} committed rows")
        records, Qn, own = _resolve_queries(store, queries, model)
        available = store.n_rows - (1 if (own >= 0).any() else 0)
        if available < 1:
            raise StoreError(f"{store_path} holds one row, the query itself: no other image to compare with")
        if k > available:
            notes.append(f"k={k} is more than the {available} other rows: showing {available}")
            k = available
        method = _search_method(store, search, notes)
        index_info = None
        if method == "exact":
            blocks = ((start, normalize_rows(rows)) for start, rows in
                      store.iter_rows(_rows_per_block(len(Qn), store.dim)))
            sims, rows = _top_k(blocks, Qn, k, own)
        else:
            idx, index_info = _index(store, rebuild, notes)
            sims, rows = _approximate(idx, Qn, k, own, nprobe)
        table = _table([r["query"] for r in records], sims, rows, store.keys)
    short = [r["query"] for r in records if (table["query"] == r["query"]).sum() < k]
    if short:
        notes.append(f"the approximate index found fewer than {k} neighbours for {len(short)} queries "
                     "(raise --nprobe, or --search exact)")
    return NeighborsResult(str(store_path), table, records, k, method, notes, index_info)


def _approximate(idx, Qn: np.ndarray, k: int, own: np.ndarray, nprobe: Optional[int]):
    """The index's k best rows per query, a query's own row left out (one extra is asked for)."""
    sims, rows = idx.search(Qn, k + 1, nprobe)
    keep = (rows != own[:, None]) & (rows >= 0)
    out_s = np.full((len(Qn), k), -np.inf, dtype=np.float32)
    out_r = np.full((len(Qn), k), -1, dtype=np.int64)
    for i in range(len(Qn)):
        found = np.flatnonzero(keep[i])[:k]
        out_s[i, :len(found)], out_r[i, :len(found)] = sims[i, found], rows[i, found]
    return out_s, out_r


def store_duplicates(store_path, threshold: float = DEFAULT_THRESHOLD, *, search: str = "auto",
                     nprobe: Optional[int] = None, rebuild: bool = True) -> DuplicatesResult:
    """Groups of near-identical images in a store: pairs within ``threshold`` cosine distance, joined
    transitively (see :func:`find_duplicates`).

    Exact search holds the features in memory (n x d float32) and compares them in blocks; the
    approximate index (``search='auto'`` above :data:`EXACT_MAX_ROWS` rows) runs a range search of
    every row, reading the store a block at a time, and may miss pairs its probed lists do not hold.
    """
    t = _check_threshold(threshold)
    notes: List[str] = []
    with _open(store_path) as store:
        n, keys = store.n_rows, store.keys
        method = _search_method(store, search, notes)
        if method == "exact":
            return DuplicatesResult(str(store_path), find_duplicates(store.features, keys, t), t, n, method, notes)
        idx, index_info = _index(store, rebuild, notes)
        comps = _Components(n)
        for start, block in store.iter_rows(QUERY_BLOCK):
            lims, _, found = idx.range_search(normalize_rows(block), 1.0 - t - ROUNDING, nprobe)
            query = np.repeat(np.arange(start, start + len(block)), np.diff(lims.astype(np.int64)))
            keep = found != query  # the probed lists may find a pair one way only
            comps.add(query[keep], found[keep])

        def fetch(rows):
            out = np.zeros((len(rows), store.dim), dtype=np.float32)
            for start, block in store.iter_rows(_rows_per_block(1, store.dim)):
                inside = (rows >= start) & (rows < start + len(block))
                out[inside] = normalize_rows(block[rows[inside] - start])
            return out

        groups = comps.groups()
        table = _groups_table(groups, keys, _first_member_distances(groups, fetch))
    return DuplicatesResult(str(store_path), table, t, n, method, notes, index_info)


__all__ = ["nearest_neighbors", "find_duplicates", "store_neighbors", "store_duplicates", "embed_images",
           "choose_search", "NeighborsResult", "DuplicatesResult", "METRIC", "DEFAULT_THRESHOLD",
           "EXACT_MAX_ROWS", "SEARCH_CHOICES"]
