"""The one place that turns "something that holds a model" into a model.

A model can be given as a model object, a run directory (its ``model.pt``), a
model file, or a feature store carrying the weights of the model that made
its features. :func:`resolve_model` tells them apart and also returns what was
recorded with the model (the sources it saw, its preprocessing, a store's own
features), so extraction, ``cvae show``, the probes and the scikit-learn
transformer all load models the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import ModelError, StoreError
from .families import is_model
from .modelfile import MODEL_FILENAME, model_from_state, read_model_file

@dataclass
class ResolvedModel:
    """A model and where it came from.

    Attributes
    ----------
    model : the model (any registered family), in eval mode when it was loaded
    origin : {'object', 'run-dir', 'model-file', 'store'}
    path : Path or None
        The run directory, model file or store (None for an object).
    preprocess : dict or None
        The recorded preprocessing ({'size', 'channels', 'resize'}) when known: a store's, or the
        ``preprocess`` of the run's ``config.json``.
    meta : dict
        What else was recorded: a run's ``config.json`` contents, or a store's root attributes.
    """

    model: object
    origin: str
    path: Optional[Path] = None
    preprocess: Optional[dict] = None
    meta: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How to name the model in messages and pages."""
        return "(in-memory model)" if self.path is None else str(self.path)


def resolve_model(obj) -> ResolvedModel:
    """Resolve a model object, a run directory, a model file or a weight-carrying store.

    Raises
    ------
    ModelError
        One line naming the path and the problem: missing, not a model (a store without weights,
        an HDF5 file that is no store), damaged, from a newer format, weights not matching their
        fingerprint.
    """
    if is_model(obj):
        return ResolvedModel(obj, "object")
    if not isinstance(obj, (str, Path)):
        raise ModelError(f"invalid model of type {type(obj).__name__}: expected a model, a run directory, "
                         f"a {MODEL_FILENAME} file or a .h5 store")
    path = Path(obj)
    if not path.exists():
        raise ModelError(f"model not found: {path} (expected a run directory, a {MODEL_FILENAME} file or a .h5 store)")
    run_dir = None
    if path.is_dir():
        candidate = path / MODEL_FILENAME
        if not candidate.exists():
            raise ModelError(f"no {MODEL_FILENAME} in run directory {path}")
        run_dir, path = path, candidate
    if not path.is_file():
        raise ModelError(f"{path} is not a regular file: expected a {MODEL_FILENAME} model file")
    from .store import is_hdf5  # the store module knows the HDF5 format

    try:
        hdf5 = is_hdf5(path)
    except OSError as err:
        raise ModelError(f"cannot read {path}: {err.strerror or err}") from None
    if hdf5:
        return _from_store(path)
    model = read_model_file(path)
    meta = _run_config(path.parent)
    pre = meta.get("preprocess") if isinstance(meta.get("preprocess"), dict) else None
    if run_dir is not None:
        return ResolvedModel(model, "run-dir", run_dir, pre, meta)
    return ResolvedModel(model, "model-file", path, pre, meta)


def load_model(path):
    """The model in a model file, a run directory holding ``model.pt``, or a feature store carrying one.

    Model files are read with ``torch.load(weights_only=True)``: anything but tensors and plain
    values is refused, never unpickled. Every way a file can be unusable is a one-line ModelError
    naming the file and the problem.
    """
    return resolve_model(path).model


def _from_store(path: Path) -> ResolvedModel:
    from .store import FeatureStore

    try:
        store = FeatureStore(path)
    except StoreError as err:  # an HDF5 file that is not a usable store is still "no model"
        raise ModelError(f"no model in {path}: {err}") from None
    with store:
        carried = store.carried_model()
        meta = store.attrs
        pre = store.preprocess_dict
    model = model_from_state(carried["arch"], carried["config"], _as_tensors(carried["state"]), source=path,
                             fingerprint=carried["fingerprint"])
    return ResolvedModel(model, "store", path, pre, meta)


def _as_tensors(state: dict) -> dict:
    import torch

    return {name: torch.from_numpy(values) for name, values in state.items()}


def _run_config(folder: Path) -> dict:
    """The ``config.json`` a run directory keeps beside its model, or {} (it only adds detail)."""
    config = folder / "config.json"
    if not config.is_file():
        return {}
    try:
        meta = json.loads(config.read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


__all__ = ["ResolvedModel", "resolve_model", "load_model"]
