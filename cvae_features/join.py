"""Joining stores: the shards of one extraction (``cvae extract --shard I/N``) become one store.

:func:`join_stores` checks that the parts belong together (same featurizer, feature width,
preprocessing and per-row extras; complete, closed cleanly; shards of one source with every
shard present once, or whole stores without a key in common) and writes a store that every
reader treats as one. By default its per-row and plan datasets are HDF5 virtual datasets over
the parts (no row is copied; the parts are recorded relative to the joined store, with a stamp
that every reader compares, see :func:`cvae_features.store.write_joined`); ``copy=True`` writes
a self-contained ordinary store instead. Rows come part after part, each part's rows in its own
order; parts that are shards are put in shard order.

The HDF5 layout is the store's business (:mod:`cvae_features.store`); this module decides what
may be joined.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

import numpy as np

from .errors import ConfigError, StoreError
from .store import FeatureStore, StoreWriter, is_store, write_joined

_CHUNK = 65536  # rows read and written at a time when copying


@dataclass
class JoinResult:
    """What :func:`join_stores` wrote."""

    path: Path
    mode: str  # "virtual" or "copy"
    parts: List[Path]
    n_rows: int
    n_skipped: int
    seconds: float

    def to_dict(self) -> dict:
        return {"path": str(self.path), "mode": self.mode, "parts": [str(p) for p in self.parts],
                "n_rows": self.n_rows, "n_skipped": self.n_skipped, "seconds": self.seconds}


def expand_parts(paths: Sequence, *, exclude=None) -> List[Path]:
    """Paths of the parts to join: files as given, folders replaced by the ``.h5`` stores they hold
    (sorted by name; ``exclude``, the output, left out)."""
    out: List[Path] = []
    skip = Path(exclude).resolve() if exclude is not None else None
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.glob("*.h5") if q.resolve() != skip and is_store(q))
            if not found:
                raise StoreError(f"{p} holds no feature store (.h5) to join")
            out += found
        else:
            out.append(p)
    return out


def join_stores(out, parts: Sequence, *, copy: bool = False, overwrite: bool = False) -> JoinResult:
    """Join the stores ``parts`` (files or folders of ``.h5`` stores) into one store at ``out``.

    Parameters
    ----------
    out : str or path
        The joined store to write (written beside, then moved into place: a stopped join leaves
        no half-written store).
    parts : sequence of str or path
        The stores to join: usually every shard of one extraction (``--shard I/N``, any order).
    copy : bool, default=False
        Write a self-contained store (the rows copied) instead of virtual datasets over the parts.
    overwrite : bool, default=False
        Replace ``out`` when it exists.

    Raises
    ------
    StoreError
        A part is missing, damaged, incomplete or still being written; the parts do not belong
        together (another featurizer, feature kind, width, preprocessing or extras; shards of
        another source or count; a shard missing or given twice; a key in two parts); ``out`` exists
        and ``overwrite`` is False, or is one of the parts.
    """
    t0 = time.perf_counter()
    out = Path(out)
    files = expand_parts(parts, exclude=out)
    if not files:
        raise ConfigError("nothing to join: give the part stores (files or folders)")
    if not out.parent.is_dir():
        raise StoreError(f"cannot write {out}: folder {out.parent} does not exist (create it first)")
    resolved = [f.resolve() for f in files]
    if out.resolve() in resolved:
        raise StoreError(f"{out} is one of the parts to join: choose another output name")
    twice = next((f for f, r in zip(files, resolved) if resolved.count(r) > 1), None)
    if twice is not None:
        raise StoreError(f"{twice} is given twice")
    if out.exists() and not overwrite:
        raise StoreError(f"{out} exists: pass --overwrite to replace it")

    infos = [_part_info(f) for f in files]
    _check_alike(infos)
    infos = _order_shards(infos)
    names, label_maps = _merged_labels(infos)
    _check_unique_keys(infos)
    first = infos[0]
    attrs = {"feature_kind": first["kind"], "dim": first["dim"], "preprocess": first["preprocess"],
             "model_config": first["attrs"].get("model_config") or "", "model_arch": first["attrs"].get("model_arch") or "",
             "model_fingerprint": first["fingerprint"] or "", "compression": first["attrs"].get("compression") or "none",
             "source": _joined_source(infos), "source_spec": first["source_spec"] if first["shard"] else "",
             "shard": ""}
    skipped = ([k for i in infos for k in i["skipped"]["key"]], [r for i in infos for r in i["skipped"]["reason"]])
    if copy:
        _copy(out, infos, attrs, names, label_maps, overwrite)
    else:
        same = all(np.array_equal(m, np.arange(len(m))) for m in label_maps)
        labels = None if same else [_mapped_labels(i, m) for i, m in zip(infos, label_maps)]
        write_joined(out, [(i["file"], i["stamp"]) for i in infos], attrs=attrs, label_names=names, labels=labels,
                     skipped=skipped, state=first["state"])
    return JoinResult(path=out, mode="copy" if copy else "virtual", parts=[i["file"] for i in infos],
                      n_rows=sum(i["stamp"]["n_rows"] for i in infos), n_skipped=len(skipped[0]),
                      seconds=time.perf_counter() - t0)


def joined_parts(store) -> List[Path]:
    """The part files a virtual joined store reads its rows from (absolute); [] for any other store."""
    with FeatureStore(store) as s:
        joined = s.joined
    if joined is None or joined["mode"] != "virtual":
        return []
    return [(Path(store).parent / p["path"]).resolve() for p in joined["parts"]]


# ----------------------------------------------------------------------------------------------
# checks

def _part_info(file: Path) -> dict:
    with FeatureStore(file) as s:
        joined = s.joined
        if joined is not None and joined["mode"] == "virtual":
            raise StoreError(f"{file} is itself a joined store: join its parts instead")
        if s.attrs.get("open_for_writing", 1):
            raise StoreError(f"{file} is still being written or its writer was stopped (open_for_writing is set): "
                             f"finish it with cvae extract SOURCE -o {file} --resume, then join")
        if not s.is_complete:
            raise StoreError(f"{file} is incomplete ({s.n_pending:,} images pending): finish it with "
                             f"cvae extract SOURCE -o {file} --resume, then join")
        return {"file": file, "kind": s.feature_kind, "dim": s.dim, "preprocess": s.preprocess_dict,
                "fingerprint": s.model_fingerprint, "arch": s.model_arch, "extras": s.extras, "shard": s.shard,
                "source": s.source, "source_spec": s.source_spec, "label_names": s.label_names,
                "attrs": s.attrs, "stamp": s.stamp(), "skipped": s.skipped, "state": s.featurizer_state}


def _check_alike(infos: List[dict]) -> None:
    first = infos[0]
    checks = (("feature kind", "kind"), ("model", "fingerprint"), ("model family", "arch"),
              ("feature width", "dim"), ("preprocessing", "preprocess"), ("per-row extras", "extras"))
    for info in infos[1:]:
        for what, key in checks:
            if info[key] != first[key]:
                raise StoreError(f"{info['file']} cannot be joined with {first['file']}: another {what} "
                                 f"({info[key]!r}, not {first[key]!r})")


def _order_shards(infos: List[dict]) -> List[dict]:
    """Shards of one source in shard order, every shard present once; whole stores as given."""
    sharded = [i for i in infos if i["shard"] is not None]
    if not sharded:
        return infos
    if len(sharded) != len(infos):
        whole = next(i for i in infos if i["shard"] is None)
        raise StoreError(f"{whole['file']} holds a whole source but {sharded[0]['file']} one shard: join the shards "
                         "of one extraction, or whole stores")
    first = sharded[0]
    n = first["shard"][1]
    for info in infos:
        if info["shard"][1] != n:
            raise StoreError(f"{info['file']} is shard {info['shard'][0]}/{info['shard'][1]} but {first['file']} is "
                             f"{first['shard'][0]}/{n}: the shards of one extraction share N")
        if info["source_spec"] != first["source_spec"]:
            raise StoreError(f"{info['file']} is a shard of {info['source_spec'] or 'another source'}, "
                             f"{first['file']} of {first['source_spec'] or 'another source'}")
    seen = {}
    for info in infos:
        i = info["shard"][0]
        if i in seen:
            raise StoreError(f"{info['file']} and {seen[i]['file']} are both shard {i}/{n}")
        seen[i] = info
    missing = [i for i in range(n) if i not in seen]
    if missing:
        listed = ", ".join(f"{i}/{n}" for i in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                                                else "")
        raise StoreError(f"shard(s) {listed} missing: give every shard of the extraction "
                         f"({len(infos)} of {n} given)")
    return [seen[i] for i in range(n)]


def _merged_labels(infos: List[dict]):
    """Class names of the joined store (the parts' names in order of first appearance) and, per part, the
    index of each of its names there."""
    names: List[str] = []
    index = {}
    maps = []
    for info in infos:
        for name in info["label_names"]:
            if name not in index:
                index[name] = len(names)
                names.append(name)
        maps.append(np.asarray([index[name] for name in info["label_names"]], dtype=np.int64))
    return names, maps


def _mapped_labels(info: dict, label_map: np.ndarray) -> np.ndarray:
    with FeatureStore(info["file"]) as s:
        labels = s.labels
    return np.where(labels >= 0, label_map[np.maximum(labels, 0)] if len(label_map) else -1, -1)


def _key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")


def _check_unique_keys(infos: List[dict]) -> None:
    """Refuse a key (row or skipped file) found in two parts: 64-bit hashes of every key, then the keys behind
    any equal hashes compared."""
    hashes, owner = [], []
    for n, info in enumerate(infos):
        with FeatureStore(info["file"]) as s:
            keys = s.keys + list(info["skipped"]["key"])
        hashes.append(np.fromiter((_key_hash(k) for k in keys), dtype=np.uint64, count=len(keys)))
        owner.append(np.full(len(keys), n, dtype=np.int64))
    h = np.concatenate(hashes)
    who = np.concatenate(owner)
    order = np.argsort(h, kind="stable")
    same = np.flatnonzero(h[order][1:] == h[order][:-1])
    for pos in same:
        a, b = who[order[pos]], who[order[pos + 1]]
        if a == b:
            continue  # a hash collision inside one part (a store's keys are unique)
        key_a = _key_at(infos[a], order[pos] - sum(len(x) for x in hashes[:a]))
        key_b = _key_at(infos[b], order[pos + 1] - sum(len(x) for x in hashes[:b]))
        if key_a == key_b:
            raise StoreError(f"{key_a!r} is in both {infos[a]['file']} and {infos[b]['file']}: parts to join must not "
                             "share keys (the same shard extracted twice, or the same images in two stores?)")


def _key_at(info: dict, i: int) -> str:
    with FeatureStore(info["file"]) as s:
        keys = s.keys
    return keys[i] if i < len(keys) else info["skipped"]["key"].iloc[i - len(keys)]


def _joined_source(infos: List[dict]) -> str:
    if infos[0]["shard"] is not None:
        return f"{len(infos)} shards joined: {infos[0]['source_spec'] or infos[0]['source']}"
    listed = "; ".join(i["source"] for i in infos[:3]) + (f"; and {len(infos) - 3} more" if len(infos) > 3 else "")
    return f"{len(infos)} stores joined: {listed}"


# ----------------------------------------------------------------------------------------------
# --copy

def _copy(out: Path, infos: List[dict], attrs: dict, names, label_maps, overwrite: bool) -> None:
    """A self-contained store: an ordinary store whose rows are the parts' rows, written batch by batch."""
    tmp = out.with_name(f".{out.name}.joining")
    plans = []
    for info in infos:
        with FeatureStore(info["file"]) as s:
            plans.append(s.plan_entries())
    plan_keys = [k for p in plans for k in p["key"]]
    identity = (np.concatenate([p["size"].to_numpy() for p in plans]),
                np.concatenate([p["mtime_ns"].to_numpy() for p in plans]))
    first = infos[0]
    writer = StoreWriter.create(
        tmp, feature_kind=attrs["feature_kind"], dim=attrs["dim"], preprocess=attrs["preprocess"],
        source=attrs["source"], plan_keys=plan_keys, label_names=names, extras=first["extras"],
        compression=attrs["compression"], fingerprint=attrs["model_fingerprint"],
        model_config=json.loads(first["attrs"]["model_config"]) if first["attrs"].get("model_config") else None,
        model_arch=attrs["model_arch"], state=first["state"], source_spec=attrs["source_spec"],
        plan_identity=identity)
    try:
        offset = 0
        for info, plan, label_map in zip(infos, plans, label_maps):
            where = {k: offset + i for i, k in enumerate(plan["key"])}
            with FeatureStore(info["file"]) as s:
                keys = s.keys
                labels = _mapped_labels(info, label_map)
                extras = {name: s.extra(name) for name in s.extras}
                for start, rows in s.iter_rows(_CHUNK):
                    stop = start + len(rows)
                    writer.write_batch(np.asarray([where[k] for k in keys[start:stop]], dtype=np.int64), rows,
                                       labels[start:stop], extras={n: a[start:stop] for n, a in extras.items()})
            skipped = info["skipped"]
            if len(skipped):
                writer.write_batch(np.zeros(0, np.int64), np.zeros((0, attrs["dim"]), np.float32),
                                   np.zeros(0, np.int64), extras={n: np.zeros(0, np.float32) for n in first["extras"]},
                                   skipped_index=np.asarray([where[k] for k in skipped["key"]], dtype=np.int64),
                                   reasons=list(skipped["reason"]))
            offset += len(plan)
        writer.set_attrs(joined={"mode": "copy", "parts": [dict(i["stamp"], path=str(i["file"])) for i in infos]})
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    writer.close()
    if out.exists() and not overwrite:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"{out} appeared while joining: pass --overwrite to replace it")
    tmp.replace(out)


__all__ = ["join_stores", "JoinResult", "joined_parts", "expand_parts"]
