"""The HDF5 feature store: the only module that reads or writes HDF5.

A store holds one row per image (the embedding, optional per-row scores, the
image's relative path and label), the list of files that could not be decoded,
the extraction plan (so that an interrupted extraction can be finished) and
everything needed to explain and reproduce the features: tool version,
source, preprocessing, feature kind, model config and fingerprint, and
optionally the model weights or the PCA basis. The format is described in
prose in ``docs/store-format.md``; :data:`FORMAT_VERSION` is its version.

:class:`FeatureStore` reads a store; :class:`StoreWriter` creates or appends to
one (it is what :mod:`cvae_features.extraction` uses). Readers see only committed
rows: a row counts once its batch is written and flushed *and* the committed
row count (the root attribute ``n_rows``) has been advanced past it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import h5py
import numpy as np
import pandas as pd

from ._version import __version__
from .errors import ConfigError, ModelError, StoreError, StoreNoSpaceError

FORMAT = "cvae-features-store"
FORMAT_VERSION = 2
#: The built-in feature kinds (cvae_features.featurizers registers them); a store may hold any registered kind.
FEATURE_KINDS = ("vae", "raw", "pca")
JOIN_MODES = ("virtual", "copy")  # a joined store's datasets point into its parts, or hold copies of their rows
_STATE = "featurizer_state"  # the group holding a featurizer's fitted state (format 2)
EXTRA_NAMES = ("logvar", "recon_error", "neg_elbo")
COMPRESSIONS = ("gzip", "lzf")
PENDING, DONE, SKIPPED = 0, 1, 2
STATUS_CODES = {"pending": PENDING, "done": DONE, "skipped": SKIPPED}

# encoding-type -> highest encoding-version this tool reads (anndata style: every element says what it is)
_ENCODINGS = {
    FORMAT: 2,
    "row-array": 1,
    "row-strings": 1,
    "string-array": 1,
    "skip-list": 1,
    "extraction-plan": 1,
    "state-dict": 1,
    "tensor": 1,
    "pca": 1,  # version 1 stores
    "array": 1,
    "featurizer-state": 1,
}
_STR = h5py.string_dtype("utf-8")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_NEW = "~new"  # suffix of a dataset being rebuilt; see _replace_strings
# what h5py raises when the file system refuses a write (OSError) or a flush (RuntimeError)
_WRITE_ERRORS = (OSError, RuntimeError)
_IDENTITY = ("size", "mtime_ns")  # per plan entry: the file's identity when it was planned (-1 unknown)


def _tag(obj, encoding_type: str) -> None:
    obj.attrs["encoding-type"] = encoding_type
    obj.attrs["encoding-version"] = str(_ENCODINGS[encoding_type])


def _check_tag(obj, expected: str, path) -> None:
    """Raise StoreError unless ``obj`` carries the expected encoding-type at a version this tool reads."""
    found = _as_str(obj.attrs.get("encoding-type"))
    if found != expected:
        raise StoreError(f"{path}: element {obj.name} has encoding-type {found!r}, expected {expected!r} "
                         "(damaged or foreign store)")
    version = _as_str(obj.attrs.get("encoding-version", "0"))
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise StoreError(f"{path}: element {obj.name} has unreadable encoding-version {version!r}") from None
    if major > _ENCODINGS[expected]:
        raise StoreError(f"{path}: element {obj.name} is {expected} version {version}, newer than this tool "
                         f"reads ({_ENCODINGS[expected]}); upgrade cvae-features")


def _as_str(value) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _as_str(value.item())
    return str(value)


def _plain(value):
    """HDF5 attribute values as plain Python (str, int, float, bool, list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.dtype == object else value.tolist()
    return value


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def normalize_compression(compression) -> Optional[str]:
    """``None``/"none" -> None, "gzip"/"lzf" unchanged; anything else is a ConfigError."""
    if compression is None or compression == "none":
        return None
    if compression not in COMPRESSIONS:
        raise ConfigError(f"invalid compression={compression!r}: expected 'gzip', 'lzf' or 'none'")
    return compression


def preprocess_to_dict(pre) -> dict:
    """A ``data.Preprocess`` (or a mapping with the same fields) as a JSON-able dict."""
    if isinstance(pre, Mapping):
        d = dict(pre)
    else:
        d = {name: getattr(pre, name) for name in ("size", "channels", "resize") if hasattr(pre, name)}
    if "size" not in d or "channels" not in d:
        raise ConfigError(f"invalid preprocess={pre!r}: expected size and channels")
    return {"size": int(d["size"]), "channels": int(d["channels"]), "resize": str(d.get("resize", "crop"))}


def _open_error(path: Path, err: OSError) -> StoreError:
    """One line for an HDF5 file that exists but cannot be opened: in use, truncated, or otherwise damaged."""
    text = str(err)
    low = text.lower()
    if "truncated file" in low:
        return StoreError(f"{path} is damaged (truncated: the file is shorter than its HDF5 header says); "
                          "it cannot be read or resumed: extract again with --overwrite")
    if "unable to lock file" in low or "file locking" in low:
        return StoreError(f"{path} is in use by another process (a cvae extract still writing it?); "
                          "wait for it to finish or stop it first")
    return StoreError(f"{path} is damaged or unreadable as HDF5: {text.splitlines()[0] if text else type(err).__name__}")


def _open_h5(path: Path, mode: str) -> h5py.File:
    if not path.exists():
        raise StoreError(f"feature store not found: {path}")
    if path.is_dir():
        raise StoreError(f"{path} is a directory, not a feature store (expected an .h5 file written by cvae extract)")
    if not is_hdf5(path):
        raise StoreError(f"{path} is not an HDF5 file (expected a feature store written by cvae extract)")
    try:
        f = h5py.File(path, mode)
    except OSError as err:
        raise _open_error(path, err) from None
    try:
        fmt = _as_str(f.attrs.get("format"))
        if fmt != FORMAT:
            raise StoreError(f"{path} is an HDF5 file but not a cvae feature store "
                             f"(attribute format={fmt!r}, expected {FORMAT!r})")
        version = f.attrs.get("format_version", 0)
        if isinstance(version, (bool, np.bool_)) or not isinstance(version, (int, np.integer)):
            raise StoreError(f"{path}: damaged store: format_version is {_plain(version)!r}, expected an integer")
        version = int(version)
        if version > FORMAT_VERSION:
            raise StoreError(f"{path} is store format version {version}, newer than this tool reads "
                             f"({FORMAT_VERSION}); upgrade cvae-features")
        if version < 1:
            raise StoreError(f"{path} has invalid format_version={version} (expected 1..{FORMAT_VERSION})")
        _check_tag(f, FORMAT, path)
    except BaseException:
        f.close()
        raise
    return f


def _damaged(path, what: str) -> StoreError:
    return StoreError(f"{path}: damaged store: {what}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _plan_length(grp: h5py.Group) -> int:
    """Committed plan entries: the ``n_plan`` attribute (older stores: the shortest plan dataset)."""
    n = grp.attrs.get("n_plan")
    longest = min(grp["keys"].shape[0], grp["status"].shape[0])
    return min(int(n), longest) if _is_int(n) and n >= 0 else longest


def _validate(f: h5py.File, path) -> Tuple[int, int]:
    """Check that a store's shapes, dtypes, counters and attribute types agree; returns (n_rows, n_skipped).

    Raises StoreError with one line saying what is wrong. Cheap: reads attributes and shapes
    only (the label range is checked when labels are read).
    """
    attrs = f.attrs
    for name in ("n_rows", "n_skipped", "feature_kind", "preprocess"):
        if name not in attrs:
            raise _damaged(path, f"missing root attribute {name!r}")
    n, k = attrs["n_rows"], attrs["n_skipped"]
    for name, value in (("n_rows", n), ("n_skipped", k)):
        if not _is_int(value) or value < 0:
            raise _damaged(path, f"{name} is {_plain(value)!r}, expected an integer >= 0")
    n, k = int(n), int(k)
    kind = _as_str(attrs["feature_kind"])
    if not kind or not re.fullmatch(r"[A-Za-z0-9_.-]+", kind):
        raise _damaged(path, f"feature_kind is {kind!r}, expected a featurizer name such as {list(FEATURE_KINDS)}")
    try:
        pre = json.loads(_as_str(attrs["preprocess"]))
        preprocess_to_dict(pre)
        if not (_is_int(pre["size"]) and _is_int(pre["channels"]) and pre["size"] >= 1 and pre["channels"] in (1, 3)):
            raise ValueError
    except (ValueError, TypeError, KeyError, ConfigError):
        raise _damaged(path, f"preprocess attribute {_as_str(attrs['preprocess'])[:80]!r} is not "
                             '{"size": S, "channels": 1 or 3, "resize": ...}') from None
    config = _as_str(attrs.get("model_config")) or ""
    if config:
        try:
            if not isinstance(json.loads(config), dict):
                raise ValueError
        except ValueError:
            raise _damaged(path, f"model_config attribute is not a JSON object: {config[:80]!r}") from None
    for name in ("features", "keys", "labels", "label_names", "skipped", "plan"):
        if name not in f:
            raise _damaged(path, f"missing /{name}" + (" (interrupted repair: cvae extract ... --resume finishes it)"
                                                        if name + _NEW in f else ""))

    def dataset(name, ndim, kinds, rows):
        ds = f[name]
        if not isinstance(ds, h5py.Dataset):
            raise _damaged(path, f"/{name} is not a dataset")
        if ds.ndim != ndim:
            raise _damaged(path, f"/{name} has {ds.ndim} dimension(s), expected {ndim}")
        if ds.dtype.kind not in kinds:
            raise _damaged(path, f"/{name} has dtype {ds.dtype}, expected {'text' if kinds == 'OS' else kinds}")
        if rows is not None and ds.shape[0] < rows:
            raise _damaged(path, f"/{name} holds {ds.shape[0]} entries but the store counts {rows} "
                                 f"({'n_rows' if rows == n else 'n_skipped'})")
        return ds

    features = dataset("features", 2, "f", n)
    dim = features.shape[1]
    if dim < 1 or ("dim" in attrs and _plain(attrs["dim"]) != dim):
        raise _damaged(path, f"/features is {dim} wide but the dim attribute says {_plain(attrs.get('dim'))!r}")
    dataset("keys", 1, "OS", n)
    dataset("labels", 1, "iu", n)
    dataset("label_names", 1, "OS", None)
    for name in EXTRA_NAMES:
        if name in f:
            ds = dataset(name, 2 if name == "logvar" else 1, "f", n)
            if name == "logvar" and ds.shape[1] != dim:
                raise _damaged(path, f"/logvar is {ds.shape[1]} wide, the features {dim}")
    dataset("skipped/keys", 1, "OS", k)
    dataset("skipped/reasons", 1, "OS", k)
    dataset("plan/keys", 1, "OS", None), dataset("plan/status", 1, "iu", None)
    n_plan = _plan_length(f["plan"])
    if n + k > n_plan:
        raise _damaged(path, f"{n} rows and {k} skipped files but only {n_plan} planned files")
    return n, k


class _Described:
    """What a store says about itself, read from its root attributes and layout (shared by the reader and
    the writer, both of which keep the open ``h5py.File`` as ``self._f``)."""

    @property
    def attrs(self) -> dict:
        """The root attributes as plain Python values (JSON attributes are left as strings)."""
        return {k: _plain(v) for k, v in self._f.attrs.items()}

    @property
    def feature_kind(self) -> str:
        """The featurizer's registered name: 'vae' (posterior means), 'raw' (resized pixels in [0, 1]),
        'pca' (PCA of those pixels) or a kind registered by a plug-in."""
        return _as_str(self._f.attrs["feature_kind"])

    @property
    def dim(self) -> int:
        """Width of a feature row."""
        return int(self._f["features"].shape[1])

    @property
    def extras(self) -> List[str]:
        """Names of the optional per-row arrays present ('logvar', 'recon_error', 'neg_elbo')."""
        return [name for name in EXTRA_NAMES if name in self._f]

    @property
    def label_names(self) -> List[str]:
        """Class names, indexed by label."""
        return list(self._f["label_names"].asstr()[:])

    @property
    def model_fingerprint(self) -> Optional[str]:
        """Fingerprint of the model (VAE weights or PCA basis) that made the features; None for raw."""
        return _as_str(self._f.attrs.get("model_fingerprint")) or None

    @property
    def model_config(self) -> Optional[dict]:
        """The VAE config as a dict (None for raw and pca)."""
        text = _as_str(self._f.attrs.get("model_config")) or ""
        return json.loads(text) if text else None

    @property
    def model_arch(self) -> Optional[str]:
        """The model family (``arch``) of a vae store's model; None for other kinds (version-1 vae stores:
        the default family)."""
        arch = _as_str(self._f.attrs.get("model_arch")) or ""
        if arch:
            return arch
        return "conv-vae" if self.feature_kind == "vae" else None

    @property
    def has_model(self) -> bool:
        """True when the store carries the weights of the model that made its features (usable as ``--model``)."""
        return self.feature_kind == "vae" and _has_state(self._f)

    @property
    def preprocess_dict(self) -> dict:
        """The preprocessing as stored: {'size', 'channels', 'resize'}."""
        return json.loads(_as_str(self._f.attrs["preprocess"]))

    @property
    def preprocess(self):
        """The :class:`~cvae_features.data.Preprocess` that turned files into model inputs."""
        from .data import Preprocess

        return Preprocess(**self.preprocess_dict)

    @property
    def source(self) -> str:
        return _as_str(self._f.attrs.get("source")) or ""

    @property
    def source_spec(self) -> str:
        """What ``open_source`` reopens (absolute path or ``name:split``); "" when unknown or in memory."""
        return _as_str(self._f.attrs.get("source_spec")) or ""

    @property
    def shard(self) -> Optional[Tuple[int, int]]:
        """(index, number of shards) when the store holds one shard of its source, else None."""
        text = _as_str(self._f.attrs.get("shard")) or ""
        if not text:
            return None
        try:
            i, n = (int(part) for part in text.split("/"))
        except ValueError:
            raise _damaged(self.path, f"shard attribute {text!r} is not 'I/N'") from None
        return i, n


    @property
    def joined(self) -> Optional[dict]:
        """For a store written by ``cvae join``: ``{"mode": "virtual" or "copy", "parts": [...]}`` (see
        :func:`write_joined`); None for any other store."""
        text = _as_str(self._f.attrs.get("joined")) or ""
        if not text:
            return None
        try:
            joined = json.loads(text)
            if joined["mode"] not in JOIN_MODES or not isinstance(joined["parts"], list):
                raise ValueError
        except (ValueError, TypeError, KeyError):
            raise _damaged(self.path, f"joined attribute {text[:80]!r} is not a join record") from None
        return joined

    def stamp(self) -> dict:
        """What identifies this file's content for a store joined over it (compared on every opening of the
        joined store): its size in bytes, ``store_id`` (random, set at creation) and ``generation`` (one more
        for every writer that opened it), creation and update times, committed counts and plan length,
        shard and featurizer fingerprint."""
        a = self._f.attrs
        st = self.path.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "store_id": _as_str(a.get("store_id")) or "",
                "generation": _plain(a.get("generation", 0)), "created": _as_str(a.get("created")) or "",
                "updated": _as_str(a.get("updated")) or "", "n_rows": int(a["n_rows"]),
                "n_skipped": int(a["n_skipped"]), "n_plan": _plan_length(self._f["plan"]),
                "shard": _as_str(a.get("shard")) or "", "model_fingerprint": _as_str(a.get("model_fingerprint")) or ""}


class FeatureStore(_Described):
    """Read a feature store written by ``cvae extract`` (read-only).

    Parameters
    ----------
    path : str or Path
        The ``.h5`` store.

    Raises
    ------
    StoreError
        If the path is missing, not HDF5, not a cvae feature store, or written
        by a newer format version than this tool reads.

    Notes
    -----
    Only committed rows are visible. Arrays are read on first access and
    cached; use :meth:`read_rows` / :meth:`iter_rows` to stay within a memory
    budget on very large stores.
    """

    def __init__(self, path):
        self.path = Path(path)
        self._f = _open_h5(self.path, "r")
        self._cache: Dict[str, object] = {}
        try:
            self._n, self._n_skipped = _validate(self._f, self.path)
            self._kind = _as_str(self._f.attrs["feature_kind"])
            # one handle for every read: reopening a virtual dataset per read reopens its parts too
            self._features = self._f["features"]
            _check_tag(self._features, "row-array", self.path)
            joined = self.joined
            if joined is not None and joined["mode"] == "virtual":
                _check_parts(self.path, joined["parts"])
        except BaseException:
            self._f.close()
            raise

    # -- lifetime ------------------------------------------------------------
    def close(self) -> None:
        """Close the file; cached arrays stay usable."""
        if self._f:
            self._f.close()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "complete" if self.is_complete else "incomplete"
        return (f"FeatureStore({str(self.path)!r}, rows={self.n_rows}, dim={self.dim}, "
                f"kind={self.feature_kind!r}, {state})")

    def _cached(self, key, fn):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def _dataset(self, name: str, encoding: str):
        ds = self._f[name]
        _check_tag(ds, encoding, self.path)
        return ds

    @property
    def feature_kind(self) -> str:
        """The featurizer's registered name ('vae', 'raw', 'pca'...); kept after closing."""
        return self._kind

    # -- rows ------------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        """Number of committed rows."""
        return self._n

    @property
    def features(self) -> np.ndarray:
        """float32 array of shape (n_rows, dim)."""
        return self._cached("features", lambda: self.read_rows(0, self._n))

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Feature rows ``start:stop`` (clipped to the committed rows), float32 of shape (stop - start, dim)."""
        stop = min(max(stop, 0), self._n)
        start = min(max(start, 0), stop)
        return np.asarray(self._features[start:stop], dtype=np.float32)

    def iter_rows(self, batch_size: int = 65536) -> Iterator[Tuple[int, np.ndarray]]:
        """Yield ``(start, rows)`` over the committed rows, ``batch_size`` rows at a time."""
        if batch_size < 1:
            raise ConfigError(f"invalid batch_size={batch_size!r}: expected an integer >= 1")
        for start in range(0, self._n, batch_size):
            yield start, self.read_rows(start, start + batch_size)

    @property
    def keys(self) -> List[str]:
        """Relative path (or ``name:split/index`` for built-in data sets) of each row."""
        return self._cached("keys", lambda: list(self._dataset("keys", "row-strings").asstr()[: self._n]))

    @property
    def labels(self) -> np.ndarray:
        """int64 array of shape (n_rows,): index into :attr:`label_names`, -1 = unknown."""
        def read():
            labels = np.asarray(self._dataset("labels", "row-array")[: self._n], dtype=np.int64)
            n_names = len(self.label_names)
            bad = (labels < -1) | (labels >= n_names)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise _damaged(self.path, f"row {row} has label {int(labels[row])}, but the store names "
                                          f"{n_names} classes (expected -1 or 0..{n_names - 1})")
            return labels
        return self._cached("labels", read)

    @property
    def label_names(self) -> List[str]:
        """Class names, indexed by label."""
        return self._cached("label_names", lambda: list(self._dataset("label_names", "string-array").asstr()[:]))

    @property
    def has_labels(self) -> bool:
        """True when at least one row has a known label."""
        return bool(self._n) and bool((self.labels >= 0).any())

    @property
    def metadata(self) -> pd.DataFrame:
        """One row per feature row: key, label (-1 unknown) and label_name (None when unknown)."""
        labels = self.labels
        names = np.asarray(self.label_names + [None], dtype=object)
        return pd.DataFrame({"key": self.keys, "label": labels,
                             "label_name": names[np.where(labels >= 0, labels, len(names) - 1)]})

    def extra(self, name: str) -> Optional[np.ndarray]:
        """An optional per-row array: 'logvar' (n, dim), 'recon_error' (n,), 'neg_elbo' (n,); None if absent."""
        if name not in EXTRA_NAMES:
            raise ConfigError(f"invalid extra name={name!r}: expected one of {list(EXTRA_NAMES)}")
        if name not in self._f:
            return None
        return self._cached(("extra", name), lambda: np.asarray(
            self._dataset(name, "row-array")[: self._n], dtype=np.float32))

    # -- what happened ---------------------------------------------------------
    @property
    def skipped(self) -> pd.DataFrame:
        """Files that could not be decoded: columns key and reason."""
        def read():
            grp = self._f["skipped"]
            _check_tag(grp, "skip-list", self.path)
            return pd.DataFrame({"key": list(grp["keys"].asstr()[: self._n_skipped]),
                                 "reason": list(grp["reasons"].asstr()[: self._n_skipped])})
        return self._cached("skipped", read)

    @property
    def n_skipped(self) -> int:
        return self._n_skipped

    @property
    def plan_status(self) -> Dict[str, int]:
        """Counts of plan entries by status: pending, done, skipped."""
        def read():
            grp = self._f["plan"]
            _check_tag(grp, "extraction-plan", self.path)
            counts = np.bincount(np.asarray(grp["status"][:_plan_length(grp)], dtype=np.int64), minlength=3)
            return {name: int(counts[code]) for name, code in STATUS_CODES.items()}
        return self._cached("plan_status", read)

    def plan_entries(self) -> pd.DataFrame:
        """The committed plan: columns key, status (0 pending, 1 done, 2 skipped), size and mtime_ns (the file's
        identity when planned or last extracted; -1 unknown)."""
        grp = self._f["plan"]
        _check_tag(grp, "extraction-plan", self.path)
        n = _plan_length(grp)
        sizes, mtimes = _read_identity(grp, n)
        return pd.DataFrame({"key": list(grp["keys"].asstr()[:n]), "status": np.asarray(grp["status"][:n], np.int8),
                             "size": sizes, "mtime_ns": mtimes})

    @property
    def n_pending(self) -> int:
        """Plan entries not yet extracted (finish them with ``cvae extract ... --resume``)."""
        return self.plan_status["pending"]

    @property
    def is_complete(self) -> bool:
        """True when every planned file was either extracted or recorded as skipped."""
        status = self.plan_status
        return status["pending"] == 0 and status["done"] + status["skipped"] == self._n + self._n_skipped

    # -- how the features were made ---------------------------------------------
    @property
    def featurizer_state(self) -> Dict[str, np.ndarray]:
        """The featurizer's fitted state as stored, by name: a PCA basis, carried model weights; {} when none.

        The store keeps these arrays without knowing what they are (format 2: ``/featurizer_state``;
        version-1 stores: ``/pca`` or the ``/model`` weights).
        """
        return self._cached("featurizer_state", lambda: _read_state(self._f, self.path))

    def carried_model(self) -> dict:
        """What is needed to rebuild the carried model: ``arch``, ``config`` (dict), ``state`` (name -> array)
        and ``fingerprint``; :func:`cvae_features.resolve.load_model` builds and checks it.

        Raises
        ------
        ModelError
            If the store carries no weights (only a fingerprint, or features of another kind), or the
            weights have no fingerprint or another one than the features.
        """
        if not self.has_model:
            if self._kind != "vae":
                raise ModelError(f"{self.path} holds {self._kind} features and carries no VAE model")
            raise ModelError(f"{self.path} carries only the fingerprint {self.model_fingerprint} of its model, "
                             "not the weights; pass the run directory or model file instead")
        expected = _state_fingerprint(self._f, self.path)
        if not expected:
            raise ModelError(f"{self.path}: the model weights it carries have no fingerprint, so they cannot be "
                             "checked; pass the run directory or model file instead")
        if expected != self.model_fingerprint:
            raise ModelError(f"{self.path}: the carried weights are fingerprinted {expected} but the features were "
                             f"made by {self.model_fingerprint} (damaged store?)")
        config = self.model_config
        if config is None and "model" in self._f:  # version 1 kept the config beside the weights too
            try:
                config = json.loads(_as_str(self._f["model"].attrs["config"]))
            except (KeyError, TypeError, ValueError):
                config = None
        if not isinstance(config, dict):
            raise ModelError(f"{self.path}: the carried model has no readable config (damaged store?)")
        return {"arch": self.model_arch, "config": config, "state": self.featurizer_state, "fingerprint": expected}

    @property
    def pca(self) -> Optional[dict]:
        """For pca stores: dict with 'mean' (P,), 'components' (dim, P), 'explained_variance' (dim,); else None."""
        if self._kind != "pca":
            return None
        state = self.featurizer_state
        return {name: np.asarray(state[name], dtype=np.float64) for name in ("mean", "components",
                                                                              "explained_variance")
                if name in state} or None

    def label_counts(self) -> Dict[str, int]:
        """Rows per label name (plus 'unknown' when some rows have none)."""
        counts = np.bincount(self.labels + 1, minlength=len(self.label_names) + 1) if self._n else \
            np.zeros(len(self.label_names) + 1, dtype=np.int64)
        out = {name: int(c) for name, c in zip(self.label_names, counts[1:])}
        if counts[0]:
            out["unknown"] = int(counts[0])
        return out

    def summary(self) -> dict:
        """Everything ``cvae info`` shows, as a JSON-able dict."""
        a = self.attrs
        return {
            "path": str(self.path),
            "format_version": a.get("format_version"),
            "tool_version": a.get("tool_version"),
            "created": a.get("created"),
            "updated": a.get("updated"),
            "source": self.source,
            "feature_kind": self.feature_kind,
            "n_rows": self.n_rows,
            "dim": self.dim,
            "complete": self.is_complete,
            "plan": self.plan_status,
            "n_skipped": self.n_skipped,
            "has_labels": self.has_labels,
            "label_names": self.label_names,
            "label_counts": self.label_counts(),
            "extras": self.extras,
            "model_fingerprint": self.model_fingerprint,
            "model_config": self.model_config,
            "model_arch": self.model_arch,
            "has_model": self.has_model,
            "preprocess": self.preprocess_dict,
            "compression": a.get("compression"),
            "joined": None if self.joined is None else {"mode": self.joined["mode"],
                                                        "parts": [p["path"] for p in self.joined["parts"]]},
        }


class StoreWriter(_Described):
    """Create a feature store or append to one, batch by batch (used by :mod:`cvae_features.extraction`).

    Use :meth:`create` for a new store and :meth:`append_to` to finish or grow
    an existing one. Each :meth:`write_batch` writes whole arrays (no per-row
    Python work), flushes, then commits by advancing the row counters.
    """

    def __init__(self, f: h5py.File, path: Path):
        self._f = f
        self.path = path
        grp = f["plan"]
        n_plan = _plan_length(grp)  # entries past it belong to a plan extension that was cut short
        self._plan_keys = np.asarray(grp["keys"].asstr()[:n_plan], dtype=object)
        self._status = np.asarray(grp["status"][:n_plan], dtype=np.int8)
        self._n = int(f.attrs["n_rows"])
        self._n_skipped = int(f.attrs["n_skipped"])
        self._failed = False

    # -- opening ---------------------------------------------------------------
    @classmethod
    def create(cls, path, *, feature_kind: str, dim: int, preprocess, source: str, plan_keys: Sequence[str],
               label_names: Sequence[str] = (), extras: Sequence[str] = (), compression=None,
               fingerprint: str = "", model_config: Optional[Mapping] = None, model_arch: str = "",
               state: Optional[Mapping[str, np.ndarray]] = None, chunk_rows: Optional[int] = None,
               source_spec: str = "", shard: Optional[Tuple[int, int]] = None,
               plan_identity: Optional[Tuple[Sequence[int], Sequence[int]]] = None) -> "StoreWriter":
        """Write an empty store (all plan entries pending) and return a writer on it.

        Parameters
        ----------
        path : str or Path
            The new store; an existing file there is replaced.
        feature_kind : {'vae', 'raw', 'pca'}
        dim : int
            Width of a feature row.
        preprocess : data.Preprocess or dict
            Size, channels and resize policy of the model inputs.
        source : str
            Description of the image source.
        plan_keys : sequence of str
            Every candidate key, in the order rows will be written.
        label_names : sequence of str
        extras : sequence of {'logvar', 'recon_error', 'neg_elbo'}
            Optional per-row arrays to create.
        compression : {None, 'none', 'gzip', 'lzf'}
            Filter for the per-row numeric datasets.
        fingerprint : str
            What identifies the featurizer (model weights, PCA basis); "" when nothing does (raw).
        model_config : mapping or None
            The model's config (vae), recorded as JSON.
        model_arch : str
            The model family of a vae featurizer ("" otherwise).
        state : mapping of str to array, or None
            The featurizer's fitted state (a PCA basis, model weights to carry), stored as given
            under ``/featurizer_state``; ``featurizer_state`` reads it back.
        chunk_rows : int or None
            Rows per chunk; None picks about 256 KiB per feature chunk.
        source_spec : str
            What ``open_source`` reopens (absolute path or ``name:split``); "" when unknown.
        shard : (index, n_shards) or None
            The store holds only the keys of this shard of the source (recorded as ``"I/N"``).
        plan_identity : (sizes, mtimes) or None
            Per plan key: the file's size in bytes and modification time in ns (-1 unknown),
            so that ``--update`` can tell changed files; None: all unknown.
        """
        path = Path(path)
        if not isinstance(feature_kind, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", feature_kind):
            raise ConfigError(f"invalid feature_kind={feature_kind!r}: expected a featurizer name such as "
                              f"{list(FEATURE_KINDS)}")
        if not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ConfigError(f"invalid dim={dim!r}: expected an integer >= 1")
        bad = [e for e in extras if e not in EXTRA_NAMES]
        if bad:
            raise ConfigError(f"invalid extras={bad!r}: expected some of {list(EXTRA_NAMES)}")
        state = {str(k): _state_array(k, v) for k, v in (state or {}).items()}
        compression = normalize_compression(compression)
        pre = preprocess_to_dict(preprocess)
        dim = int(dim)
        if chunk_rows is None:
            chunk_rows = int(np.clip((1 << 18) // (4 * dim), 16, 8192))
            flat_chunk = max(chunk_rows, 4096)
        else:
            flat_chunk = chunk_rows = int(chunk_rows)
        comp = {"compression": compression} if compression else {}

        if not path.parent.is_dir():
            raise StoreError(f"cannot write {path}: folder {path.parent} does not exist (create it first)")
        identity = None if plan_identity is None else [np.asarray(a, dtype=np.int64) for a in plan_identity]
        if identity is not None and any(len(a) != len(plan_keys) for a in identity):
            raise ConfigError("plan_identity: expected (sizes, mtimes) with one entry per plan key")
        free = shutil.disk_usage(path.parent).free
        need = (1 << 20) + len(plan_keys) * 128 + sum(a.nbytes for a in state.values())
        if free < need:
            raise StoreNoSpaceError(f"no space left on the device of {path}: {free / 1e6:,.1f} MB free, creating "
                                    f"the store needs about {need / 1e6:,.1f} MB")
        try:
            f = h5py.File(path, "w")
        except OSError as err:
            raise StoreError(f"cannot create {path}: {_reason(err)}") from None
        try:
            now = _now()
            config_json = json.dumps(dict(model_config), sort_keys=True) if model_config else ""
            f.attrs.update({
                "format": FORMAT, "format_version": FORMAT_VERSION, "tool_version": __version__,
                "created": now, "updated": now, "source": str(source), "source_spec": str(source_spec or ""),
                "shard": f"{shard[0]}/{shard[1]}" if shard else "",
                "feature_kind": feature_kind,
                "dim": dim, "preprocess": json.dumps(pre, sort_keys=True), "model_config": config_json,
                "model_fingerprint": str(fingerprint or ""), "model_arch": str(model_arch or ""),
                "compression": compression or "none",
                "n_rows": 0, "n_skipped": 0, "open_for_writing": 1, "store_id": uuid.uuid4().hex, "generation": 1,
            })
            _tag(f, FORMAT)

            def rows(name, width, dtype, encoding="row-array", **kw):
                shape, maxshape = ((0, width), (None, width)) if width else ((0,), (None,))
                chunks = (chunk_rows, width) if width else (flat_chunk,)
                ds = f.create_dataset(name, shape=shape, maxshape=maxshape, dtype=dtype, chunks=chunks, **kw)
                _tag(ds, encoding)
                return ds

            rows("features", dim, np.float32, **comp)
            rows("keys", None, _STR, encoding="row-strings")
            rows("labels", None, np.int64, **comp)
            for name in extras:
                rows(name, dim if name == "logvar" else None, np.float32, **comp)
            _tag(f.create_dataset("label_names", data=np.asarray(list(label_names), dtype=object), dtype=_STR),
                 "string-array")

            grp = f.create_group("skipped")
            _tag(grp, "skip-list")
            for name in ("keys", "reasons"):
                _tag(grp.create_dataset(name, shape=(0,), maxshape=(None,), dtype=_STR, chunks=(256,)),
                     "string-array")

            grp = f.create_group("plan")
            _tag(grp, "extraction-plan")
            grp.attrs["status_codes"] = json.dumps(STATUS_CODES)
            grp.attrs["n_plan"] = len(plan_keys)
            keys = np.asarray(list(plan_keys), dtype=object)
            n_plan = len(keys)
            _tag(grp.create_dataset("keys", data=keys, dtype=_STR, maxshape=(None,),
                                    chunks=(int(np.clip(n_plan, 256, 65536)),)), "string-array")
            _tag(grp.create_dataset("status", data=np.zeros(n_plan, dtype=np.int8), maxshape=(None,),
                                    chunks=(max(4096, min(n_plan, 1 << 20)),)), "array")
            for name, values in zip(_IDENTITY, identity or (np.full(n_plan, -1, np.int64),) * 2):
                _tag(grp.create_dataset(name, data=values, maxshape=(None,),
                                        chunks=(max(4096, min(n_plan, 1 << 20)),)), "array")

            if state:
                grp = f.create_group(_STATE)
                _tag(grp, "featurizer-state")
                grp.attrs["kind"] = feature_kind
                grp.attrs["fingerprint"] = str(fingerprint or "")
                for name, values in state.items():
                    _tag(grp.create_dataset(name, data=values), "array")
            f.flush()
        except _WRITE_ERRORS as err:
            try:
                f.close()
            except Exception:  # HDF5 may refuse to flush on closing a file it could not write
                pass
            path.unlink(missing_ok=True)  # a half-created store holds nothing worth keeping
            raise (StoreNoSpaceError if _no_space(err) else StoreError)(
                f"cannot create {path}: {_reason(err)}") from None
        except BaseException:
            f.close()
            raise
        return cls(f, path)

    @classmethod
    def append_to(cls, path) -> "StoreWriter":
        """Open an existing store to finish or grow it.

        The plan status is recomputed from the committed rows and skipped
        entries (so a run stopped between writing and marking is harmless), and
        any uncommitted tail left by an interrupted run is truncated.
        """
        path = Path(path)
        f = _open_h5(path, "r+")
        try:
            if _joined_mode(f) == "virtual":
                raise StoreError(f"{path} is a joined store (its rows live in the parts it was joined from) and "
                                 f"is not written directly: cvae extract SOURCE -o {path} --update (or --resume) "
                                 "finishes and updates its parts and joins them again")
            _finish_replacements(f)
            _validate(f, path)
            _check_tag(f["plan"], "extraction-plan", path)
            # a store not closed by its last writer (killed, crashed, disk full) may hold
            # variable-length strings past its counters whose heap objects never reached the disk
            dirty = bool(_plain(f.attrs.get("open_for_writing", 1)))
            f.attrs["open_for_writing"] = 1
            generation = _plain(f.attrs.get("generation", 0))
            f.attrs["generation"] = (generation if _is_int(generation) else 0) + 1
            f.flush()
            writer = cls(f, path)
            writer._reconcile(rebuild_strings=dirty)
        except OSError as err:
            f.close()
            raise StoreError(f"{path}: cannot be opened for writing: {str(err).splitlines()[0]}") from None
        except BaseException:
            f.close()
            raise
        return writer

    def _row_datasets(self):
        return [self._f[name] for name in ("features", "keys", "labels") + EXTRA_NAMES if name in self._f]

    def _reconcile(self, rebuild_strings: bool = False) -> None:
        """Cut every dataset back to the committed counts and recompute the plan status from them.

        ``rebuild_strings``: rewrite the string datasets that grow (row keys, skipped keys and reasons,
        plan keys) into fresh datasets instead of resizing them. After an unclean stop their chunks may
        hold references to strings that never reached the file; HDF5 follows such references when the
        region is written again ("bad heap index"), so a fresh dataset is the only safe one.
        """
        grp, plan = self._f["skipped"], self._f["plan"]
        strings = [(self._f, "keys", self._n), (grp, "keys", self._n_skipped), (grp, "reasons", self._n_skipped),
                   (plan, "keys", len(self._plan_keys))]
        for ds in self._row_datasets():
            if ds.dtype.kind != "O" and ds.shape[0] != self._n:
                ds.resize(self._n, axis=0)
        for name in ("status",) + _IDENTITY:
            if name in plan and plan[name].shape[0] > len(self._plan_keys):
                plan[name].resize(len(self._plan_keys), axis=0)
        plan.attrs["n_plan"] = len(self._plan_keys)
        for group, name, n in strings:
            if rebuild_strings:
                _replace_strings(group, name, group[name].asstr()[:n])
            elif group[name].shape[0] != n:
                group[name].resize(n, axis=0)
        done = set(self._f["keys"].asstr()[: self._n])
        skipped = set(grp["keys"].asstr()[: self._n_skipped])
        status = np.fromiter((DONE if k in done else SKIPPED if k in skipped else PENDING for k in self._plan_keys),
                             dtype=np.int8, count=len(self._plan_keys))
        if not np.array_equal(status, self._status):
            self._status = status
            self._f["plan"]["status"][:] = status
        self._f.flush()

    # -- what is there -----------------------------------------------------------
    @property
    def plan_keys(self) -> List[str]:
        return self._plan_keys.tolist()

    @property
    def n_rows(self) -> int:
        return self._n

    @property
    def n_skipped(self) -> int:
        return self._n_skipped

    @property
    def status(self) -> np.ndarray:
        """Plan status per entry (PENDING, DONE, SKIPPED), int8 of shape (n_plan,); a copy."""
        return self._status.copy()

    def pending(self) -> np.ndarray:
        """Plan indices still pending, in plan order (int64)."""
        return np.flatnonzero(self._status == PENDING).astype(np.int64)

    # -- growing -----------------------------------------------------------------
    def add_plan(self, keys: Sequence[str], identity: Optional[Tuple[Sequence[int], Sequence[int]]] = None
                 ) -> np.ndarray:
        """Append new candidate keys (pending) to the plan; returns their plan indices.

        ``identity``: (sizes, mtimes) of their files, as for :meth:`create`; None: unknown.
        """
        keys = np.asarray(list(keys), dtype=object)
        start = len(self._plan_keys)
        if len(keys):
            grp = self._f["plan"]
            ident = [np.full(len(keys), -1, np.int64)] * 2 if identity is None else \
                [np.asarray(a, dtype=np.int64) for a in identity]
            self._ensure_identity()
            new = (("status", np.zeros(len(keys), dtype=np.int8)),) + tuple(zip(_IDENTITY, ident)) + (("keys", keys),)
            for name, values in new:
                grp[name].resize(start + len(keys), axis=0)
                grp[name][start:] = values
            self._f.flush()
            grp.attrs["n_plan"] = start + len(keys)  # the commit of the new entries, as n_rows is for rows
            self._f.flush()
            self._plan_keys = np.concatenate([self._plan_keys, keys])
            self._status = np.concatenate([self._status, np.zeros(len(keys), dtype=np.int8)])
        return np.arange(start, start + len(keys), dtype=np.int64)

    def _ensure_identity(self) -> None:
        """Stores written before file identities were recorded get them, all unknown (-1)."""
        grp = self._f["plan"]
        for name in _IDENTITY:
            if name not in grp:
                _tag(grp.create_dataset(name, data=np.full(len(self._plan_keys), -1, np.int64), maxshape=(None,),
                                        chunks=(max(4096, min(len(self._plan_keys), 1 << 20)),)), "array")

    def identity(self) -> Tuple[np.ndarray, np.ndarray]:
        """(sizes, mtimes) recorded for each plan entry, int64 of shape (n_plan,); -1 where unknown."""
        return _read_identity(self._f["plan"], len(self._plan_keys))

    def replace_rows(self, plan_index: np.ndarray, features: np.ndarray, labels: np.ndarray,
                     extras: Optional[Mapping[str, np.ndarray]] = None,
                     identity: Optional[Tuple[Sequence[int], Sequence[int]]] = None) -> None:
        """Overwrite the committed rows of the plan entries ``plan_index`` (files that changed).

        The rows are rewritten in place, then the entries' file identity is recorded: a run
        stopped in between leaves the old identity, so the next ``--update`` rewrites them again.
        """
        plan_index = np.asarray(plan_index, dtype=np.int64)
        if not len(plan_index):
            return
        row_of = {k: i for i, k in enumerate(self._f["keys"].asstr()[: self._n])}
        try:
            rows = np.asarray([row_of[k] for k in self._plan_keys[plan_index]], dtype=np.int64)
        except KeyError as err:
            raise StoreError(f"{self.path}: plan entry {err} has no committed row to replace") from None
        order = np.argsort(rows)  # HDF5 point selections must increase
        rows, plan_index = rows[order], plan_index[order]
        arrays = {"features": np.asarray(features, dtype=np.float32)[order],
                  "labels": np.asarray(labels, dtype=np.int64)[order]}
        arrays.update({k: np.asarray(v, dtype=np.float32)[order] for k, v in (extras or {}).items()})
        if sorted(set(arrays) - {"features", "labels"}) != sorted(self.extras):
            raise StoreError(f"batch extras {sorted(extras or {})} do not match the store's {sorted(self.extras)}")
        try:
            for name, data in arrays.items():
                self._f[name][rows] = data
            self._f.flush()
            if identity is not None:
                self._ensure_identity()
                for name, values in zip(_IDENTITY, identity):
                    ds = self._f["plan"][name]
                    ds[plan_index] = np.asarray(values, dtype=np.int64)[order]
                self._f.flush()
        except _WRITE_ERRORS as err:
            self._failed = True
            raise self._write_error(err) from None

    def _write_error(self, err: BaseException) -> StoreError:
        if _no_space(err):
            return StoreNoSpaceError(f"no space left on the device of {self.path} ({self._n:,} rows are "
                                     "committed and kept)")
        return StoreError(f"writing {self.path} failed: {_reason(err)} ({self._n:,} rows are committed and kept)")

    def merge_label_names(self, names: Sequence[str]) -> np.ndarray:
        """Add names not yet known; returns the map from the given names' indices to store label indices."""
        current = self.label_names
        index = {n: i for i, n in enumerate(current)}
        added = [n for n in names if n not in index]
        if added:
            current = current + added
            index = {n: i for i, n in enumerate(current)}
            _replace_strings(self._f, "label_names", current)
        return np.asarray([index[n] for n in names], dtype=np.int64)

    def write_batch(self, plan_index: np.ndarray, features: np.ndarray, labels: np.ndarray,
                    extras: Optional[Mapping[str, np.ndarray]] = None,
                    skipped_index: Optional[np.ndarray] = None, reasons: Sequence[str] = ()) -> None:
        """Append one batch of rows and skipped entries, then commit it.

        Parameters
        ----------
        plan_index : int array of shape (b,)
            Plan entries of the rows.
        features : float array of shape (b, dim)
        labels : int array of shape (b,)
        extras : dict name -> array of shape (b, dim) or (b,)
            Every extra the store was created with.
        skipped_index : int array of shape (s,)
            Plan entries that could not be decoded.
        reasons : sequence of s str
        """
        plan_index = np.asarray(plan_index, dtype=np.int64)
        skipped_index = np.asarray([] if skipped_index is None else skipped_index, dtype=np.int64)
        extras = dict(extras or {})
        b, s = len(plan_index), len(skipped_index)
        if features.shape != (b, self.dim) or len(labels) != b:
            raise StoreError(f"batch shape mismatch: features {features.shape}, labels {len(labels)}, "
                             f"expected ({b}, {self.dim}) and {b}")
        if sorted(extras) != sorted(self.extras):
            raise StoreError(f"batch extras {sorted(extras)} do not match the store's {sorted(self.extras)}")
        if len(reasons) != s:
            raise StoreError(f"{s} skipped entries but {len(reasons)} reasons")
        if self._failed:
            raise StoreError(f"{self.path}: an earlier write failed; reopen the store (cvae extract ... --resume)")
        self._check_space(b, s)
        keys = self._plan_keys
        n0, k0 = self._n, self._n_skipped
        arrays = {}
        if b:
            arrays = {"features": np.asarray(features, dtype=np.float32), "keys": keys[plan_index],
                      "labels": np.asarray(labels, dtype=np.int64)}
            arrays.update({k: np.asarray(v, dtype=np.float32) for k, v in extras.items()})
        skips = {"keys": keys[skipped_index], "reasons": np.asarray(list(reasons), dtype=object)} if s else {}
        try:
            for group, start, data in ((self._f, n0, arrays), (self._f["skipped"], k0, skips)):
                for name, values in data.items():
                    ds = group[name]
                    ds.resize(start + len(values), axis=0)
                    ds[start:] = values
            self._f.flush()
        except _WRITE_ERRORS as err:
            self._failed = True
            self._cut_back(n0, k0)
            raise self._write_error(err) from None
        # the commit: counters move only after the data is on disk
        try:
            self._f.attrs["n_rows"] = n0 + b
            self._f.attrs["n_skipped"] = k0 + s
            self._f.flush()
        except _WRITE_ERRORS as err:
            self._failed = True
            raise self._write_error(err) from None
        self._n, self._n_skipped = n0 + b, k0 + s
        touched = np.concatenate([plan_index, skipped_index])
        if len(touched):
            self._status[plan_index] = DONE
            self._status[skipped_index] = SKIPPED
            lo, hi = int(touched.min()), int(touched.max()) + 1
            try:
                self._f["plan"]["status"][lo:hi] = self._status[lo:hi]
                self._f.flush()
            except _WRITE_ERRORS as err:  # committed already; the status is recomputed from the rows on reopening
                self._failed = True
                raise self._write_error(err) from None

    def bytes_per_row(self) -> int:
        """Bytes a row takes on disk, roughly (features, extras, label, key), before compression."""
        return sum(ds.dtype.itemsize * int(np.prod(ds.shape[1:])) if ds.dtype.kind != "O" else 64
                   for ds in self._row_datasets())

    def _check_space(self, n_rows: int, n_skips: int) -> None:
        """Refuse a batch the disk cannot hold, before HDF5 writes any of it.

        HDF5 does not recover from a write that fails half-way through a flush (the file's
        metadata can be left inconsistent), so running out of space must be seen coming: the
        batch itself, one new chunk per dataset, and 1 MiB for HDF5's own bookkeeping.
        """
        chunk_bytes = sum(int(np.prod(ds.chunks)) * (16 if ds.dtype.kind == "O" else ds.dtype.itemsize)
                          for ds in self._row_datasets() if ds.chunks)
        need = n_rows * self.bytes_per_row() + n_skips * 256 + chunk_bytes + (1 << 20)
        free = shutil.disk_usage(self.path.parent).free
        if free < need:
            raise StoreNoSpaceError(f"no space left on the device of {self.path}: {free / 1e6:,.1f} MB free, "
                                    f"the next batch needs about {need / 1e6:,.1f} MB ({self._n:,} rows are "
                                    "committed and kept)")

    def _cut_back(self, n: int, k: int) -> None:
        """After a failed write: shrink the row datasets to the committed counts again, where HDF5 still can."""
        try:
            for ds in self._row_datasets():
                if ds.shape[0] > n:
                    ds.resize(n, axis=0)
            for name in ("keys", "reasons"):
                if self._f["skipped"][name].shape[0] > k:
                    self._f["skipped"][name].resize(k, axis=0)
        except Exception:  # a full disk may refuse even this; readers ignore rows past the counters anyway
            pass

    def set_attrs(self, **attrs) -> None:
        """Set root attributes (e.g. ``source``); dicts are stored as JSON."""
        for k, v in attrs.items():
            self._f.attrs[k] = json.dumps(v, sort_keys=True) if isinstance(v, dict) else v

    def close(self) -> None:
        """Stamp the update time, mark the store closed cleanly, and close the file.

        After a failed write the store is closed without the clean mark, so that the next
        writer repairs it (see :meth:`append_to`).
        """
        if not self._f:
            return
        try:
            if self._f.mode == "r+" and not self._failed:
                self._f.attrs["updated"] = _now()
                self._f.flush()
                self._f.attrs["open_for_writing"] = 0
        except _WRITE_ERRORS:
            self._failed = True
        try:
            self._f.close()
        except Exception:
            if not self._failed:
                raise

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _replace_strings(group: h5py.Group, name: str, values) -> None:
    """Replace the string dataset ``group[name]`` by a fresh one holding ``values`` (same tags, chunks, maxshape).

    Kill-safe: the new dataset is written and flushed under ``name~new`` before the old one
    is unlinked and the new one renamed; :func:`_finish_replacements` completes a replacement
    that was cut short.
    """
    old = group[name]
    tmp = name + _NEW
    if tmp in group:
        del group[tmp]
    values = np.asarray(list(values), dtype=object)
    chunks = old.chunks if old.chunks else None
    new = group.create_dataset(tmp, data=values, dtype=_STR, maxshape=old.maxshape if chunks else None,
                               chunks=chunks)
    for key, value in old.attrs.items():
        new.attrs[key] = value
    group.file.flush()
    del group[name]
    group.move(tmp, name)
    group.file.flush()


def _finish_replacements(f: h5py.File) -> None:
    """Complete or discard replacements (:func:`_replace_strings`) that an unclean stop cut short."""
    for group in (f, f.get("skipped"), f.get("plan")):
        if not isinstance(group, h5py.Group):
            continue
        for tmp in [name for name in group if name.endswith(_NEW)]:
            base = tmp[: -len(_NEW)]
            if base in group:
                del group[tmp]  # the old dataset is still there: the new one may be incomplete
            else:
                group.move(tmp, base)  # the old one was already unlinked: the new one was complete
    f.flush()


def _read_identity(grp: h5py.Group, n_plan: int) -> Tuple[np.ndarray, np.ndarray]:
    """(sizes, mtimes) of the first ``n_plan`` plan entries, int64; -1 where unknown (or not recorded)."""
    out = []
    for name in _IDENTITY:
        values = np.full(n_plan, -1, np.int64)
        if name in grp:
            known = np.asarray(grp[name][:n_plan], dtype=np.int64)
            values[: len(known)] = known
        out.append(values)
    return out[0], out[1]


def _reason(err: BaseException) -> str:
    """The operating system's words inside an HDF5 error ("File too large"), else its first line."""
    text = str(err)
    found = re.search(r"error message = '([^']*)'", text)
    return found.group(1) if found else (text.splitlines()[0] if text else type(err).__name__)


def _no_space(err: BaseException) -> bool:
    text = str(err)
    return "errno = 28" in text or "No space left" in text or getattr(err, "errno", None) == 28


def _state_array(name, value) -> np.ndarray:
    """A state entry as a numpy array (torch tensors are converted; bfloat16 is widened to float32)."""
    if hasattr(value, "detach"):  # a torch tensor; the store does not import torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise ConfigError(f"featurizer state {name!r} has dtype {arr.dtype}: expected numbers")
    return arr


def _has_state(f: h5py.File) -> bool:
    return _STATE in f or "model" in f or "pca" in f


def _state_group(f: h5py.File, path):
    """(group, its encoding) of the featurizer state: format 2 ``/featurizer_state``; version 1 ``/model``
    (a state dict) or ``/pca``; (None, None) when there is none."""
    for name, encoding in ((_STATE, "featurizer-state"), ("model", "state-dict"), ("pca", "pca")):
        if name in f:
            grp = f[name]
            if not isinstance(grp, h5py.Group):
                raise _damaged(path, f"/{name} is not a group")
            _check_tag(grp, encoding, path)
            return grp, encoding
    return None, None


def _state_fingerprint(f: h5py.File, path) -> str:
    grp, _ = _state_group(f, path)
    return "" if grp is None else (_as_str(grp.attrs.get("fingerprint")) or "")


def _read_state(f: h5py.File, path) -> Dict[str, np.ndarray]:
    grp, encoding = _state_group(f, path)
    if grp is None:
        return {}
    out = {}
    for name, ds in grp.items():
        if not isinstance(ds, h5py.Dataset):
            raise _damaged(path, f"{grp.name}/{name} is not an array")
        _check_tag(ds, "tensor" if encoding == "state-dict" else "array", path)
        out[name] = np.array(ds[()])
    return out


# -- joined stores ----------------------------------------------------------------------------------
# What `cvae join` writes (cvae_features.join decides what may be joined; this is how it is laid out).

_VIRTUAL_ROWS = {  # dataset -> (encoding, fill value read where a part is missing: never a valid value)
    "features": ("row-array", np.nan), "keys": ("row-strings", None), "labels": ("row-array", -2),
    "logvar": ("row-array", np.nan), "recon_error": ("row-array", np.nan), "neg_elbo": ("row-array", np.nan),
}


def _joined_mode(f: h5py.File) -> Optional[str]:
    try:
        return json.loads(_as_str(f.attrs.get("joined")) or "{}").get("mode")
    except (ValueError, AttributeError):
        return None


def write_joined(path, parts: Sequence[Tuple[Path, dict]], *, attrs: Mapping, label_names: Sequence[str],
                 labels: Optional[Sequence[np.ndarray]] = None, skipped: Tuple[Sequence[str], Sequence[str]] = ((), ()),
                 state: Optional[Mapping[str, np.ndarray]] = None) -> None:
    """Write a joined store at ``path`` whose per-row and plan datasets are HDF5 virtual datasets over
    ``parts`` (complete stores, in this order): no row is copied.

    ``parts``: (file, stamp) pairs, ``stamp`` from :meth:`FeatureStore.stamp`; each file is recorded
    relative to the folder of ``path`` (so the folder can move) with its stamp, which every reader
    compares before use. ``attrs``: the root attributes the joined store describes itself with (kind,
    dim, preprocess, model...; counters and the join record are added here). ``labels``: one array
    per part, already mapped to ``label_names``, when the parts name classes differently (they are
    copied); None: the parts' labels are used as they are. ``skipped``: (keys, reasons) of every part,
    copied. ``state``: the featurizer state, copied. The file is written beside ``path`` and moved
    onto it when complete.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.joining")
    n = sum(st["n_rows"] for _, st in parts)
    n_plan = sum(st["n_plan"] for _, st in parts)
    record = {"mode": "virtual", "parts": [dict(st, path=Path(os.path.relpath(file, path.parent)).as_posix())
                                           for file, st in parts]}
    opened = [h5py.File(file, "r") for file, _ in parts]
    try:
        first = opened[0]
        with h5py.File(tmp, "w") as f:
            f.attrs.update({k: (json.dumps(v, sort_keys=True) if isinstance(v, dict) else v)
                            for k, v in attrs.items()})
            now = _now()
            f.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION, "tool_version": __version__,
                            "created": now, "updated": now, "n_rows": n, "n_skipped": len(skipped[0]),
                            "open_for_writing": 0, "joined": json.dumps(record, sort_keys=True)})
            _tag(f, FORMAT)

            def virtual(group, name, entries, encoding, fill):
                src = first[f"{group.name.rstrip('/')}/{name}"]
                lay = h5py.VirtualLayout(shape=(entries,) + src.shape[1:], dtype=src.dtype)
                at = 0
                for (file, st), rec, h in zip(parts, record["parts"], opened):
                    rows = st["n_plan"] if group.name == "/plan" else st["n_rows"]
                    ds = h[src.name]
                    if ds.shape[1:] != src.shape[1:] or ds.dtype != src.dtype:
                        raise StoreError(f"{file}: {src.name} is {ds.dtype} {ds.shape[1:]}, the first part's "
                                         f"{src.dtype} {src.shape[1:]}")
                    if rows:
                        lay[at: at + rows] = h5py.VirtualSource(rec["path"], src.name, shape=ds.shape)[:rows]
                    at += rows
                kw = {} if fill is None else {"fillvalue": fill}
                _tag(group.create_virtual_dataset(name, lay, **kw), encoding)

            for name, (encoding, fill) in _VIRTUAL_ROWS.items():
                if name not in first or (name == "labels" and labels is not None):
                    continue
                virtual(f, name, n, encoding, fill)
            if labels is not None:
                values = np.concatenate([np.asarray(x, dtype=np.int64) for x in labels])
                _tag(f.create_dataset("labels", data=values, chunks=(max(4096, min(max(n, 1), 1 << 20)),),
                                      maxshape=(None,)), "row-array")
            _tag(f.create_dataset("label_names", data=np.asarray(list(label_names), dtype=object), dtype=_STR),
                 "string-array")
            grp = f.create_group("skipped")
            _tag(grp, "skip-list")
            for name, values in zip(("keys", "reasons"), skipped):
                _tag(grp.create_dataset(name, data=np.asarray(list(values), dtype=object), dtype=_STR,
                                        maxshape=(None,), chunks=(256,)), "string-array")
            grp = f.create_group("plan")
            _tag(grp, "extraction-plan")
            grp.attrs["status_codes"] = json.dumps(STATUS_CODES)
            grp.attrs["n_plan"] = n_plan
            for name in ("keys", "status") + _IDENTITY:
                if all(name in h["plan"] for h in opened):
                    virtual(grp, name, n_plan, "string-array" if name == "keys" else "array",
                            None if name == "keys" else -1)
            if state:
                grp = f.create_group(_STATE)
                _tag(grp, "featurizer-state")
                grp.attrs["kind"] = attrs["feature_kind"]
                grp.attrs["fingerprint"] = str(attrs.get("model_fingerprint") or "")
                for name, values in state.items():
                    _tag(grp.create_dataset(name, data=_state_array(name, values)), "array")
        os.replace(tmp, path)
    except OSError as err:
        raise (StoreNoSpaceError if _no_space(err) else StoreError)(f"cannot write {path}: {_reason(err)}") from None
    finally:
        for h in opened:
            h.close()
        tmp.unlink(missing_ok=True)


def _check_parts(path: Path, parts: Sequence[dict]) -> None:
    """Refuse a joined store whose parts are missing or are not the files that were joined: HDF5 would read
    a missing part as fill values without a word."""
    for part in parts:
        file = path.parent / part["path"]
        again = f"put it back or join the parts again (cvae join {path} PARTS... --overwrite)"
        if not file.is_file():
            raise StoreError(f"{path}: its part {file} is missing (moved or deleted since it was joined): {again}")
        st = file.stat()
        if st.st_size != part["size"]:
            raise StoreError(f"{path}: its part {file} changed since it was joined ({part['size']:,} bytes then, "
                             f"{st.st_size:,} now): {again}")
        if st.st_mtime_ns == part.get("mtime_ns"):
            continue  # untouched since the join (same size, same modification time to the nanosecond)
        try:  # copied, touched or rewritten: its own identity decides
            with h5py.File(file, "r") as f:
                a = f.attrs
                seen = {"store_id": _as_str(a.get("store_id")) or "", "generation": _plain(a.get("generation", 0)),
                        "created": _as_str(a.get("created")) or "", "updated": _as_str(a.get("updated")) or "",
                        "n_rows": _plain(a.get("n_rows")), "n_skipped": _plain(a.get("n_skipped")),
                        "model_fingerprint": _as_str(a.get("model_fingerprint")) or ""}
                now = {k: part.get(k) for k in seen}
        except OSError as err:
            raise StoreError(f"{path}: its part {file} cannot be read: {str(err).splitlines()[0]}") from None
        if seen != now:
            what = next(k for k in now if seen[k] != now[k])
            how = "is not the file that was joined" if what == "store_id" else "changed since it was joined"
            raise StoreError(f"{path}: its part {file} {how} ({what} {now[what]!r} then, {seen[what]!r} now): {again}")


def is_hdf5(path) -> bool:
    """True when the file at ``path`` starts with the HDF5 signature (OSError when it cannot be read)."""
    with open(path, "rb") as fh:
        return fh.read(8) == _HDF5_MAGIC


def is_store(path) -> bool:
    """True when ``path`` is an HDF5 file whose root says it is a cvae feature store."""
    path = Path(path)
    if not path.is_file() or not is_hdf5(path):
        return False
    try:
        with h5py.File(path, "r") as f:
            return _as_str(f.attrs.get("format")) == FORMAT
    except OSError as err:
        raise _open_error(path, err) from None


__all__ = ["FeatureStore", "StoreWriter", "FORMAT", "FORMAT_VERSION", "FEATURE_KINDS", "EXTRA_NAMES",
           "JOIN_MODES", "is_store", "is_hdf5", "normalize_compression", "preprocess_to_dict", "write_joined"]
