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
        None keeps the images' own side, which must then be square and at most 256;
        smaller than 8 (the model's smallest input) they are enlarged to 8.
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
        Values per sample of the X given to ``fit``: h * w * c for images, the column count of 2-D X.
    image_shape_ : tuple of int
        (h, w, c) of the image one sample of ``fit``'s X is read as, before any resizing (for rows of
        numbers: the zero-padded canvas).
    data_range_ : tuple of float or None
        None when ``fit``'s X held pixel values; else its (min, max), which every X is scaled from.
    history_ : list of dict
        Loss per epoch (empty when ``model`` was given).

    Notes
    -----
    **Shapes.** X is a stack of images: shape (n, h, w) (grayscale), (n, h, w, c)
    with c in {1, 3} (channels last), or 2-D (n, s * s) for flattened square
    grayscale images (or (n, 3 * s * s) for flattened channels-last RGB).
    Any other 2-D X of p columns is read as rows of numbers, not as images: each
    row is written row-major into a square grayscale canvas, padded with black
    (zeros), of side ``image_size`` when p fits in it, else max(8, ⌈√p⌉). A
    convolutional VAE has no spatial prior to exploit in such a layout: expect
    features no better than the numbers themselves. It is there so that the
    transformer takes any numeric table, as scikit-learn estimators do; other
    shapes (1-D, 5-D, 2 or 4+ channels last) raise ValueError.

    **Values.** When every value of ``fit``'s X is a pixel value (bool, integers
    in 0..255, floats in [0, 1]) X is read as pixels: floats are quantised to
    8 bits like image files (``rint(255 * x)``), and ``transform`` refuses values
    outside those ranges. Otherwise (floats outside [0, 1], negative numbers,
    integers above 255) ``fit`` records the global minimum and maximum of X in
    ``data_range_``, and every X given to ``fit`` and ``transform`` (of any dtype)
    is scaled by (x - min) / (max - min) (0 when max = min), clipped to [0, 1]
    and quantised to 8 bits: one scale for all pixels, so relative brightness is
    kept; values beyond the fitted range become black or white. NaN, infinity,
    complex and non-numeric X raise ValueError; sparse X, and object X holding
    things that are no numbers (a dict), raise TypeError.
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
        tags.transformer_tags.preserves_dtype = ["float32"]  # features are always float32
        return tags

    # -- fitting ---------------------------------------------------------------------
    def fit(self, X, y=None):
        """Train the VAE on the images X (y is ignored).

        Parameters
        ----------
        X : array-like of shape (n, h, w), (n, h, w, c) or (n, n_features)
            Images (uint8 in 0..255, float in [0, 1]) or other numbers, see the class notes.
        y : ignored

        Returns
        -------
        self
        """
        from .errors import CvaeError
        from .model import VAEConfig
        from .resolve import resolve_model

        images, shape, n_values, data_range = _as_images(
            X, "fit", flat_side=lambda p: _rows_side(p, self.image_size))
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
                from .training import TrainConfig, train

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
        self.n_features_in_ = n_values
        self.data_range_ = data_range
        self._n_features_out = int(model.config.latent_dim)
        self.history_ = history
        return self

    def _target_size(self, images: np.ndarray) -> int:
        _, _, h, w = images.shape
        if self.image_size is not None:
            return int(self.image_size)
        if h != w or h > 256:
            raise ValueError(f"images of {h}x{w} pixels: expected square images with a side up to 256, "
                             "or set image_size to resize them")
        return max(8, int(h))  # the smallest input of the model

    # -- features ----------------------------------------------------------------------
    def transform(self, X):
        """The embedding μ(x) of each image.

        Parameters
        ----------
        X : array-like of shape (n, h, w), (n, h, w, c) or (n, n_features)
            The same per-sample shape as in ``fit``; values read as in ``fit`` (pixels, or scaled by
            ``data_range_``).

        Returns
        -------
        ndarray of dtype float32 and shape (n, latent_dim)
        """
        check_is_fitted(self, "model_")
        rows = int(np.prod(self.image_shape_)) != self.n_features_in_  # fitted on rows of numbers
        side = self.image_shape_[0]
        images, shape, n_values, _ = _as_images(
            X, "transform", data_range=getattr(self, "data_range_", None),
            flat_side=lambda p: side if rows and p == self.n_features_in_ else _rows_side(p))
        if shape != self.image_shape_ or n_values != self.n_features_in_:
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


def _as_images(X, where: str, *, data_range="fit", flat_side=None):
    """Validate X and make images of it.

    Returns (uint8 array (n, C, H, W), per-sample image shape (h, w, c), features per sample, data range):
    the data range is None when X holds pixel values, else the (min, max) it is scaled from.
    ``data_range="fit"`` chooses it from X; ``flat_side(p)`` is the side of the canvas that rows of p
    numbers (p neither s*s nor 3*s*s) are laid into.
    """
    X = _read(X, where)
    shape = X.shape
    layout, per = _plan(shape, where, flat_side)
    if shape[0] < 1 or 0 in per:
        raise ValueError(f"{where}: X of shape {shape} holds no images (need n >= 1 and non-empty images)")
    if np.issubdtype(X.dtype, np.floating) and not np.isfinite(X).all():
        raise ValueError(f"{where}: X of shape {shape} contains NaN or infinity; expected finite values")
    if isinstance(data_range, str):
        data_range = None if _holds_pixels(X) else (float(X.min()), float(X.max()))
    if data_range is None:
        pixels = _pixels(X, where)
    else:
        lo, hi = data_range
        scaled = (X.astype(np.float64) - lo) / (hi - lo) if hi > lo else np.zeros(shape)
        pixels = np.rint(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)
    n = shape[0]
    if layout == "rows":
        canvas = np.zeros((n, per[0] * per[1]), dtype=np.uint8)
        canvas[:, :shape[1]] = pixels
        arr = canvas.reshape(n, *per)
    else:
        arr = pixels.reshape(n, *per)
    n_values = int(shape[1]) if X.ndim == 2 else int(np.prod(per))
    # a fresh copy: ascontiguousarray may keep a 0 stride on the size-1 channel axis, and the conv
    # kernels then take another code path (last-bit differences between equal inputs)
    return arr.transpose(0, 3, 1, 2).copy(order="C"), per, n_values, data_range


def _read(X, where: str) -> np.ndarray:
    """X as a dense real numeric ndarray, or ValueError/TypeError saying why not."""
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
        except TypeError as err:  # an element that is no number at all (a dict, a list)
            raise TypeError(f"{where}: X of shape {shape} and dtype object: {err}") from None
        except ValueError as err:  # a string that is no number
            raise ValueError(f"{where}: X of shape {shape} and dtype object: {err}") from None
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == np.bool_):
        raise ValueError(f"{where}: X of shape {shape} and dtype {X.dtype}: expected numeric images")
    if X.ndim == 2 and shape[1] == 0:
        raise ValueError(f"{where}: 0 feature(s) (shape={shape}) while a minimum of 1 is required: "
                         "expected flattened images or rows of numbers")
    return X


def _plan(shape, where: str, flat_side):
    """("image" or "rows", per-sample image shape (h, w, c)) for X of this shape."""
    if len(shape) == 2:
        p = shape[1]
        side = math.isqrt(p)
        if side * side == p:
            return "image", (side, side, 1)
        if p % 3 == 0 and math.isqrt(p // 3) ** 2 == p // 3:
            side = math.isqrt(p // 3)
            return "image", (side, side, 3)
        side = (flat_side or _rows_side)(p)
        return "rows", (side, side, 1)
    if len(shape) == 3:
        return "image", (shape[1], shape[2], 1)
    if len(shape) == 4 and shape[3] in (1, 3):
        return "image", tuple(shape[1:])
    if len(shape) == 1:
        raise ValueError(f"{where}: X of shape {shape} is 1-D: expected one row per sample. Reshape your data "
                         "with X.reshape(1, -1) if it is one sample (a flattened image or a row of numbers)")
    raise ValueError(f"{where}: X of shape {shape}: expected images of shape (n, h, w), (n, h, w, c) with "
                     "c in {1, 3} (channels last), or 2-D (n, n_features)")


def _rows_side(p: int, image_size=None) -> int:
    """Side of the square canvas that a row of p numbers is laid into."""
    if image_size is not None and int(image_size) ** 2 >= p:
        return int(image_size)
    return max(8, math.isqrt(p - 1) + 1)


def _holds_pixels(X: np.ndarray) -> bool:
    """Whether every value is a pixel value: bool, integers in 0..255 or floats in [0, 1]."""
    if X.size == 0 or X.dtype == np.bool_:
        return True
    top = 1 if np.issubdtype(X.dtype, np.floating) else 255
    return bool(X.min() >= 0 and X.max() <= top)


def _pixels(X: np.ndarray, where: str) -> np.ndarray:
    """Pixel values (bool, integers in 0..255, floats in [0, 1]) as uint8, or ValueError."""
    if np.issubdtype(X.dtype, np.floating):
        if X.size and (X.min() < 0 or X.max() > 1):
            raise ValueError(f"{where}: X of shape {X.shape} and dtype {X.dtype} has values in "
                             f"[{X.min():g}, {X.max():g}]: expected float in [0, 1] or uint8 in 0..255, "
                             "the pixel values the estimator was fitted on")
        return np.rint(X * 255).astype(np.uint8)
    if X.dtype == np.bool_:
        return X.astype(np.uint8) * 255
    if X.size and (X.min() < 0 or X.max() > 255):
        raise ValueError(f"{where}: X of shape {X.shape} and dtype {X.dtype} has values in "
                         f"[{X.min()}, {X.max()}]: expected uint8 in 0..255 or float in [0, 1], "
                         "the pixel values the estimator was fitted on")
    return X.astype(np.uint8)


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (n, C, H, W) -> (n, C, size, size) with the data layer's crop policy."""
    if images.shape[2] == size and images.shape[3] == size:
        return images
    from .data import Preprocess

    return np.ascontiguousarray(Preprocess(int(size), int(images.shape[1])).array(images))
