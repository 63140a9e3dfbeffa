"""Featurizers: what turns preprocessed images into feature rows, behind one protocol and a registry.

A featurizer says how it is obtained (fitted on a source, taken from a reference such as a model
or a store, or rebuilt from a store it wrote), what its fitted state is (persisted by the store
as plain arrays, without the store knowing what they are), what identifies it (its fingerprint)
and gives a picklable batch call that the decoding workers run.

Built in: ``vae`` (the posterior mean μ of a model of any registered family, with optional
log-variance and anomaly scores), ``raw`` (the preprocessed pixels) and ``pca`` (their PCA).
A new kind is one subclass of :class:`Featurizer` plus :func:`register_featurizer`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import ClassVar, Dict, List, Optional, Tuple

import numpy as np
import torch

from .errors import ConfigError, DataError, ModelError, StoreError

#: Exact PCA (covariance + eigh) up to this many pixel values per image; IncrementalPCA beyond.
PCA_COVARIANCE_MAX_FEATURES = 4096


class Featurizer:
    """The protocol every feature kind implements (and the base class of the built-in ones).

    Attributes
    ----------
    kind : str
        The registry name, recorded as the store's ``feature_kind``.
    extras : tuple of str
        Per-row outputs it can add besides the features (store names, e.g. ``"logvar"``).
    preprocess : data.Preprocess
        How files become its input (uint8, (C, S, S)).
    dim : int
        Width of a feature row.
    trained, train_seconds, run_dir, n_train_images
        Set when obtaining it trained a model (vae without a model).
    """

    kind: ClassVar[str] = ""
    extras: ClassVar[Tuple[str, ...]] = ()
    description: ClassVar[str] = ""

    def __init__(self, preprocess, dim: int):
        self.preprocess, self.dim = preprocess, int(dim)
        self.trained, self.train_seconds, self.run_dir, self.n_train_images = False, 0.0, None, None

    # -- how it is obtained ------------------------------------------------------------
    @classmethod
    def fit(cls, source, options, *, store_path: Path, on_training=None) -> "Featurizer":
        """Fit (or train) a new featurizer on ``source`` (an open ImageSource); ``options`` is an ExtractOptions."""
        raise NotImplementedError

    @classmethod
    def from_reference(cls, reference, source, options) -> "Featurizer":
        """The featurizer a reference stands for (``--model``: a model, a run dir, a model file or a store)."""
        raise ConfigError(f"{cls.kind} features take no reference model")

    @classmethod
    def from_store(cls, store) -> "Featurizer":
        """Rebuild the featurizer that wrote ``store`` (an open FeatureStore) from its recorded state."""
        raise NotImplementedError

    # -- its identity and state -------------------------------------------------------
    @property
    def fingerprint(self) -> Optional[str]:
        """16 hex digits that are equal exactly when two featurizers map images to the same features
        (None when the kind and preprocessing alone decide, as for raw pixels)."""
        return None

    def state(self) -> Dict[str, np.ndarray]:
        """The fitted state the store must keep to rebuild this featurizer (arrays by name)."""
        return {}

    def store_fields(self, carry_weights: bool = False) -> dict:
        """Keyword arguments of :meth:`StoreWriter.create` that record this featurizer."""
        from .store import preprocess_to_dict

        return {"feature_kind": self.kind, "dim": self.dim, "preprocess": preprocess_to_dict(self.preprocess),
                "fingerprint": self.fingerprint or "", "state": self.state()}

    def keep_resize(self, preprocess: dict) -> None:
        """Use a recorded preprocessing's resize policy (a store being finished keeps its own)."""
        from .data import Preprocess

        self.preprocess = Preprocess(self.preprocess.size, self.preprocess.channels,
                                     preprocess.get("resize", self.preprocess.resize))

    # -- running it ---------------------------------------------------------------------
    def batch_fn(self, extras, device):
        """A picklable callable: uint8 images (b, C, S, S) -> (float32 (b, dim), {extra: array})."""
        raise NotImplementedError


_FEATURIZERS: Dict[str, type] = {}


def register_featurizer(cls: type, *, replace: bool = False) -> type:
    """Add a :class:`Featurizer` subclass under its ``kind``; usable as a class decorator."""
    kind = getattr(cls, "kind", "")
    if not (isinstance(cls, type) and issubclass(cls, Featurizer)) or not kind:
        raise ConfigError(f"{cls!r} is not a Featurizer subclass with a kind")
    if kind in _FEATURIZERS and not replace and _FEATURIZERS[kind] is not cls:
        raise ConfigError(f"feature kind {kind!r} is already registered (pass replace=True to replace it)")
    _FEATURIZERS[kind] = cls
    return cls


def unregister_featurizer(kind: str) -> None:
    """Remove a featurizer added with :func:`register_featurizer` (the built-in ones stay)."""
    if kind in ("vae", "raw", "pca"):
        raise ConfigError(f"the built-in feature kind {kind!r} cannot be removed")
    _FEATURIZERS.pop(kind, None)


def featurizer_kinds() -> List[str]:
    """Registered kinds: the built-in ones first."""
    builtin = ["vae", "raw", "pca"]
    return builtin + sorted(k for k in _FEATURIZERS if k not in builtin)


def get_featurizer(kind: str) -> type:
    """The featurizer class registered as ``kind``; ConfigError naming the known ones otherwise."""
    try:
        return _FEATURIZERS[kind]
    except (KeyError, TypeError):
        raise ConfigError(f"invalid features={kind!r}: expected one of {featurizer_kinds()}") from None


# ------------------------------------------------------------------------------------------
# vae

@register_featurizer
class VAEFeaturizer(Featurizer):
    """μ(x) of a model of any registered family (see :mod:`cvae_features.families`)."""

    kind = "vae"
    extras = ("logvar", "recon_error", "neg_elbo")
    description = "posterior mean of a VAE (a model of any registered family)"

    def __init__(self, model, preprocess=None):
        from .data import Preprocess

        cfg = model.config  # the model decides size and channels; a recorded preprocessing only its resize
        resize = "crop"
        if isinstance(preprocess, dict):
            resize = preprocess.get("resize") or "crop"
        elif preprocess is not None:
            resize = preprocess.resize
        super().__init__(Preprocess(cfg.image_size, cfg.channels, resize), cfg.latent_dim)
        self.model = model

    @classmethod
    def fit(cls, source, options, *, store_path: Path, on_training=None) -> "VAEFeaturizer":
        from .autotrain import plan_auto_training, train_for_extraction

        plan = plan_auto_training(source, store_path, dim=options.dim, model_config=options.model_config,
                                  train_config=options.train_config, data_dir=options.data_dir,
                                  estimate=on_training is not None)
        if on_training is not None:
            on_training(plan)
        model, seconds, n_images = train_for_extraction(source, plan, resume=options.resume,
                                                        overwrite=options.overwrite, progress=options.progress,
                                                        data_dir=options.data_dir)
        feat = cls(model, plan.preprocess)
        feat.trained, feat.train_seconds, feat.run_dir, feat.n_train_images = True, seconds, plan.run_dir, n_images
        return feat

    @classmethod
    def from_reference(cls, reference, source, options) -> "VAEFeaturizer":
        from .resolve import resolve_model

        resolved = resolve_model(reference)
        feat = cls(resolved.model, resolved.preprocess)
        if options.dim is not None and options.dim != feat.dim:
            raise ConfigError(f"dim={options.dim} does not match the model's latent width {feat.dim}; "
                              "dim only chooses the width of an auto-trained model")
        return feat

    @classmethod
    def from_store(cls, store) -> "VAEFeaturizer":
        if not store.has_model:
            raise StoreError(f"{store.path} carries only the fingerprint {store.model_fingerprint} of its model, "
                             "not the weights; pass the model (--model RUN_DIR or model file) to go on")
        from .resolve import resolve_model

        resolved = resolve_model(store.path)
        return cls(resolved.model, resolved.preprocess)

    @property
    def fingerprint(self) -> str:
        return self.model.fingerprint()

    def state(self) -> Dict[str, np.ndarray]:
        return {}

    def store_fields(self, carry_weights: bool = False) -> dict:
        from .families import arch_of

        fields = super().store_fields()
        fields.update(model_config=self.model.config.to_dict(), model_arch=arch_of(self.model),
                      state=({k: v.detach().cpu() for k, v in self.model.state_dict().items()}
                             if carry_weights else {}))
        return fields

    def batch_fn(self, extras, device):
        return _VAEBatch(self.model, extras, device)


class _VAEBatch:
    """Picklable: holds its own eval-mode copy of the model (channels-last on CPU, about 20% faster)."""

    def __init__(self, model, extras, device):
        self.extras, self.device = list(extras), torch.device(device)
        self.memory_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.model = copy.deepcopy(model).to(self.device, memory_format=self.memory_format).eval()

    def __call__(self, images: torch.Tensor):
        with torch.no_grad():
            x = images.to(self.device, memory_format=self.memory_format, non_blocking=True)
            if "recon_error" in self.extras or "neg_elbo" in self.extras:
                out = self.model.scores(x)  # eval mode: z = mu, so the scores are deterministic
                mu, lv = out["mu"], out["logvar"]
                scores = {k: out[k] for k in ("recon_error", "neg_elbo")}
            else:
                mu, lv = self.model.encode(x)
                scores = {}
        result = {k: v.float().cpu().numpy() for k, v in scores.items()}
        if "logvar" in self.extras:
            result["logvar"] = lv.float().cpu().numpy()
        return mu.float().cpu().numpy(), result


# ------------------------------------------------------------------------------------------
# raw pixels and their PCA

def pixels(images: torch.Tensor) -> np.ndarray:
    """uint8 (b, C, S, S) -> float32 (b, C*S*S) in [0, 1] (b may be 0: a batch of undecodable files)."""
    flat = images.reshape(len(images), int(np.prod(images.shape[1:])))  # not -1: ambiguous for 0 images
    return flat.numpy().astype(np.float32) / np.float32(255.0)


def _reference_store(reference, kind: str):
    """The preprocessing (and state) of a raw/pca store given as ``--model``."""
    from .store import FeatureStore, is_store

    if not isinstance(reference, (str, Path)) or not is_store(reference):
        raise ModelError(f"model={reference!r}: for {kind} features, expected a {kind} feature store whose "
                         "preprocessing (and basis) to reuse")
    store = FeatureStore(reference)
    if store.feature_kind != kind:
        store.close()
        raise ModelError(f"model store {reference} holds {store.feature_kind} features: expected a {kind} store")
    return store


@register_featurizer
class RawFeaturizer(Featurizer):
    """The preprocessed pixels, flattened (channel-major), float32 in [0, 1]."""

    kind = "raw"
    description = "resized pixels in [0, 1]"

    def __init__(self, preprocess):
        super().__init__(preprocess, preprocess.channels * preprocess.size * preprocess.size)

    @classmethod
    def _checked(cls, preprocess, options):
        feat = cls(preprocess)
        if options.dim is not None and options.dim != feat.dim:
            p = preprocess
            raise ConfigError(f"dim={options.dim} does not fit raw features of {p.channels}x{p.size}x{p.size} "
                              f"= {feat.dim} values; leave dim unset for raw")
        return feat

    @classmethod
    def fit(cls, source, options, *, store_path: Path, on_training=None) -> "RawFeaturizer":
        from .data import infer_preprocess

        return cls._checked(infer_preprocess(source), options)

    @classmethod
    def from_reference(cls, reference, source, options) -> "RawFeaturizer":
        with _reference_store(reference, cls.kind) as store:
            return cls._checked(store.preprocess, options)

    @classmethod
    def from_store(cls, store) -> "RawFeaturizer":
        return cls(store.preprocess)

    def keep_resize(self, preprocess: dict) -> None:
        from .data import Preprocess

        self.preprocess = Preprocess.from_dict(preprocess)
        self.dim = self.preprocess.channels * self.preprocess.size * self.preprocess.size

    def batch_fn(self, extras, device):
        return _RawBatch()


class _RawBatch:
    def __call__(self, images: torch.Tensor):
        return pixels(images), {}


def pca_fingerprint(mean: np.ndarray, components: np.ndarray, preprocess: dict) -> str:
    """16 hex digits over the preprocessing and the PCA basis: equal fingerprints mean equal transforms."""
    h = hashlib.sha256(json.dumps(preprocess, sort_keys=True).encode())
    for arr in (mean, components):
        a = np.ascontiguousarray(arr, dtype=np.float64)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


@register_featurizer
class PCAFeaturizer(Featurizer):
    """The PCA of the raw pixels: ``(pixels - mean) @ components.T``."""

    kind = "pca"
    description = "PCA of the resized pixels"
    _STATE = ("mean", "components", "explained_variance")

    def __init__(self, preprocess, mean, components, explained_variance):
        components = np.asarray(components, dtype=np.float64)
        super().__init__(preprocess, len(components))
        self.mean = np.asarray(mean, dtype=np.float64)
        self.components = components
        self.explained_variance = np.asarray(explained_variance, dtype=np.float64)

    @classmethod
    def _checked(cls, preprocess, basis: dict, options):
        feat = cls(preprocess, *(basis[name] for name in cls._STATE))
        if options.dim is not None and options.dim != feat.dim:
            raise ConfigError(f"dim={options.dim} does not match the pca basis of width {feat.dim}")
        return feat

    @classmethod
    def fit(cls, source, options, *, store_path: Path, on_training=None) -> "PCAFeaturizer":
        from .data import infer_preprocess

        if options.dim is None:
            raise ConfigError("features='pca' needs dim (the number of components), or --model with a pca store")
        pre = infer_preprocess(source)
        basis = fit_pca(source, pre, options.dim, batch_size=options.batch_size, workers=options.workers,
                        progress=options.progress)
        return cls._checked(pre, basis, options)

    @classmethod
    def from_reference(cls, reference, source, options) -> "PCAFeaturizer":
        with _reference_store(reference, cls.kind) as store:
            return cls._checked(store.preprocess, cls._basis(store), options)

    @classmethod
    def from_store(cls, store) -> "PCAFeaturizer":
        return cls(store.preprocess, *(cls._basis(store)[name] for name in cls._STATE))

    @classmethod
    def _basis(cls, store) -> dict:
        state = store.featurizer_state
        missing = [name for name in cls._STATE if name not in state]
        if missing:
            raise StoreError(f"{store.path}: the pca basis lacks {missing} (damaged store?)")
        return state

    def keep_resize(self, preprocess: dict) -> None:
        from .data import Preprocess

        self.preprocess = Preprocess.from_dict(preprocess)

    @property
    def fingerprint(self) -> str:
        from .store import preprocess_to_dict

        return pca_fingerprint(self.mean, self.components, preprocess_to_dict(self.preprocess))

    def state(self) -> Dict[str, np.ndarray]:
        return {"mean": self.mean, "components": self.components, "explained_variance": self.explained_variance}

    def batch_fn(self, extras, device):
        return _PCABatch(self.mean, self.components)


class _PCABatch:
    def __init__(self, mean, components):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.components_t = np.ascontiguousarray(np.asarray(components, dtype=np.float64).T)

    def __call__(self, images: torch.Tensor):
        return ((pixels(images) - self.mean) @ self.components_t).astype(np.float32), {}


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
            x = pixels(batch.images).astype(np.float64)
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


__all__ = ["Featurizer", "register_featurizer", "unregister_featurizer", "featurizer_kinds", "get_featurizer",
           "VAEFeaturizer", "RawFeaturizer", "PCAFeaturizer", "fit_pca", "pca_fingerprint", "pixels",
           "PCA_COVARIANCE_MAX_FEATURES"]
