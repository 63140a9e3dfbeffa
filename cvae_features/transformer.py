"""A scikit-learn transformer: fit trains a ConvVAE on image arrays, transform returns μ(x).

``VAEFeatureExtractor`` drops the VAE into a ``Pipeline`` (e.g. before a
``LogisticRegression``), supports ``get_params``/``set_params``/``clone`` and
follows the estimator contract checked by ``parametrize_with_checks``.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

__all__ = ["VAEFeatureExtractor"]


class VAEFeatureExtractor(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Unsupervised image features: the posterior mean of a convolutional VAE.

    Its defaults (latent 32, β 1, 10 epochs) suit the small arrays scikit-learn pipelines are
    usually fitted on; they are not the package defaults of ``VAEConfig`` / ``TrainConfig``
    (latent 256, β 0.05, 20 epochs, tuned on Fashion-MNIST's 60k images). Pass those explicitly,
    or ``model=`` a trained run, to get the benchmarked model.

    Parameters
    ----------
    latent_dim : int, default=32
        Width of the features (ignored when ``model`` is given).
    beta : float, default=1.0
        Weight of the KL term.
    epochs : int, default=10
        Training epochs.
    batch_size : int, default=128
        Images per optimizer step and per inference batch.
    lr : float, default=2e-3
        Peak learning rate.
    image_size : int or None, default=None
        Side the images are resized to (centre crop of non-square images);
        None keeps the images' own side, which must then be square and 8 to 256.
    likelihood : {"bernoulli", "gaussian"}, default="bernoulli"
    val_fraction : float, default=0.0
        Share of X held out to choose the best epoch; 0 trains on all of X.
    seed : int, default=0
        Seeds weights, shuffling and noise: equal seeds give equal features.
    model : ConvVAE, str, path or None, default=None
        A trained model (or run directory, model file, feature store) to use
        without training; ``fit`` then only checks the input.
    device : str, default="cpu"
        Where training and inference run ("cpu", "cuda", "auto").

    Attributes
    ----------
    model_ : ConvVAE
        The trained (or given) model, in eval mode on the CPU.
    n_features_in_ : int
        Values per sample of the X given to ``fit`` (h * w * c).
    image_shape_ : tuple of int
        (h, w, c) of one sample as given to ``fit``.
    history_ : list of dict
        Loss per epoch (empty when ``model`` was given).

    Notes
    -----
    X is a stack of images: shape (n, h, w) (grayscale), (n, h, w, c) with
    c in {1, 3} (channels last), or 2-D (n, h * w) for flattened square
    grayscale images (or (n, 3 * s * s) for flattened channels-last RGB).
    Values are uint8 (or any integer type) in 0..255, or float in [0, 1]
    (quantised to 8 bits like image files). Anything else raises ValueError.
    """

    def __init__(self, latent_dim=32, *, beta=1.0, epochs=10, batch_size=128, lr=2e-3, image_size=None,
                 likelihood="bernoulli", val_fraction=0.0, seed=0, model=None, device="cpu"):
        self.latent_dim = latent_dim
        self.beta = beta
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.image_size = image_size
        self.likelihood = likelihood
        self.val_fraction = val_fraction
        self.seed = seed
        self.model = model
        self.device = device

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True  # pixel values: negatives are refused
        tags.transformer_tags.preserves_dtype = ["float32"]  # features are always float32
        return tags

    # -- fitting ---------------------------------------------------------------------
    def fit(self, X, y=None):
        """Train the VAE on the images X (y is ignored).

        Parameters
        ----------
        X : array-like of shape (n, h, w), (n, h, w, c) or (n, h * w)
            uint8 in 0..255 or float in [0, 1].
        y : ignored

        Returns
        -------
        self
        """
        from .errors import CvaeError
        from .model import VAEConfig
        from .resolve import resolve_model

        images, shape = _as_images(X, "fit")
        if self.model is not None:
            model = resolve_model(self.model).model  # a model object, a run dir, a model file or a store
            model = model.cpu().eval()
            size = model.config.image_size
            if model.config.channels != images.shape[1]:
                raise ValueError(f"X has {images.shape[1]} channel(s) per image (shape {np.shape(X)}) but the "
                                 f"given model expects {model.config.channels}")
            history = []
        else:
            size = self._target_size(images)
            images = _resize(images, size)
            try:
                mcfg = VAEConfig(image_size=size, channels=int(images.shape[1]), latent_dim=self.latent_dim,
                                 beta=self.beta, likelihood=self.likelihood)
                from .train import TrainConfig, train

                tcfg = TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=self.seed,
                                   device=self.device, val_fraction=self.val_fraction)
                with tempfile.TemporaryDirectory(prefix="cvae-fit-") as tmp:
                    result = train(torch.from_numpy(images), Path(tmp) / "run", model_config=mcfg,
                                   train_config=tcfg, progress=False)
            except CvaeError as err:
                raise ValueError(str(err)) from None
            model, history = result.model.cpu().eval(), result.history
        self.model_ = model
        self.image_shape_ = shape
        self.n_features_in_ = int(np.prod(shape))
        self._n_features_out = int(model.config.latent_dim)
        self.history_ = history
        return self

    def _target_size(self, images: np.ndarray) -> int:
        _, _, h, w = images.shape
        if self.image_size is not None:
            return int(self.image_size)
        if h != w or not 8 <= h <= 256:
            raise ValueError(f"images of {h}x{w} pixels: expected square images with a side from 8 to 256, "
                             "or set image_size to resize them")
        return int(h)

    # -- features ----------------------------------------------------------------------
    def transform(self, X):
        """The embedding μ(x) of each image.

        Parameters
        ----------
        X : array-like of shape (n, h, w), (n, h, w, c) or (n, h * w)
            The same per-image shape as in ``fit``.

        Returns
        -------
        ndarray of dtype float32 and shape (n, latent_dim)
        """
        check_is_fitted(self, "model_")
        images, shape = _as_images(X, "transform")
        n_values = int(np.prod(shape))
        if shape != self.image_shape_:
            raise ValueError(f"X has {n_values} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input (images of shape {self.image_shape_})")
        images = _resize(images, self.model_.config.image_size)
        device = torch.device("cuda" if self.device == "auto" and torch.cuda.is_available() else
                              "cpu" if self.device == "auto" else self.device)
        model = self.model_.to(device)
        out = np.empty((len(images), self.model_.config.latent_dim), dtype=np.float32)
        step = max(int(self.batch_size), 1)
        try:
            for start in range(0, len(images), step):
                x = torch.from_numpy(images[start:start + step]).to(device)
                out[start:start + step] = model.embed(x).float().cpu().numpy()
        finally:
            self.model_ = model.cpu()
        return out


def _as_images(X, where: str):
    """Validate X; returns (uint8 array (n, C, H, W), per-sample shape (h, w, c))."""
    if hasattr(X, "to_numpy") and not isinstance(X, np.ndarray):
        X = X.to_numpy()
    if hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
        raise TypeError(f"{where}: sparse input is not supported; expected a dense image array")
    X = np.asarray(X)
    shape = X.shape
    if np.iscomplexobj(X):
        raise ValueError(f"{where}: Complex data not supported: X of shape {shape} has dtype {X.dtype}; "
                         "expected real pixel values")
    if X.dtype == object:
        try:
            X = X.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: X of shape {shape} and dtype object: {err}") from None
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == np.bool_):
        raise ValueError(f"{where}: X of shape {shape} and dtype {X.dtype}: expected numeric images")
    if X.ndim == 2 and shape[1] == 0:
        raise ValueError(f"{where}: 0 feature(s) (shape={shape}) while a minimum of 1 is required: "
                         "expected flattened images")
    if X.size and np.issubdtype(X.dtype, np.number) and np.nanmin(X) < 0:
        raise ValueError(f"{where}: Negative values in data passed to VAEFeatureExtractor (X of shape {shape}): "
                         "expected uint8 in 0..255 or float in [0, 1]")
    if X.ndim == 2:
        n, p = shape
        side = math.isqrt(p)
        if p >= 1 and side * side == p:
            arr, per = X.reshape(n, side, side, 1), (side, side, 1)
        elif p % 3 == 0 and math.isqrt(p // 3) ** 2 == p // 3 and p:
            side = math.isqrt(p // 3)
            arr, per = X.reshape(n, side, side, 3), (side, side, 3)
        else:
            raise ValueError(f"{where}: 2-D X of shape {shape}: expected (n, s*s) flattened square grayscale "
                             "images (or (n, 3*s*s) channels-last RGB)")
    elif X.ndim == 3:
        arr, per = X[..., None], (shape[1], shape[2], 1)
    elif X.ndim == 4 and shape[3] in (1, 3):
        arr, per = X, tuple(shape[1:])
    else:
        raise ValueError(f"{where}: X of shape {shape}: expected images of shape (n, h, w), (n, h, w, c) with "
                         "c in {1, 3} (channels last), or (n, h*w)")
    if shape[0] < 1 or 0 in per:
        raise ValueError(f"{where}: X of shape {shape} holds no images (need n >= 1 and non-empty images)")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError(f"{where}: X of shape {shape} contains NaN or infinity; expected floats in [0, 1]")
        if arr.min() < 0 or arr.max() > 1:
            raise ValueError(f"{where}: X of shape {shape} and dtype {arr.dtype} has values in "
                             f"[{arr.min():g}, {arr.max():g}]: expected float in [0, 1] or uint8 in 0..255")
        arr = np.rint(arr * 255).astype(np.uint8)
    elif arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"{where}: X of shape {shape} and dtype {arr.dtype} has values outside 0..255")
        arr = arr.astype(np.uint8) * (255 if arr.dtype == np.bool_ else 1)
    # a fresh copy: ascontiguousarray may keep a 0 stride on the size-1 channel axis, and the conv
    # kernels then take another code path (last-bit differences between equal inputs)
    return arr.transpose(0, 3, 1, 2).copy(order="C"), per


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (n, C, H, W) -> (n, C, size, size) with the data layer's crop policy."""
    if images.shape[2] == size and images.shape[3] == size:
        return images
    from .data import Preprocess

    return np.ascontiguousarray(Preprocess(int(size), int(images.shape[1])).array(images))
