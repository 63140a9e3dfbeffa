"""VAEFeatureExtractor: the scikit-learn estimator contract, pipelines, clone, input validation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from cvae_features.model import ConvVAE
from cvae_features.transformer import VAEFeatureExtractor

# Every scikit-learn estimator check passes: 2-D tables whose column count is no flattened image are
# laid out as rows of numbers, values outside the pixel ranges are min-max scaled (see the class notes).
# A check that has to be expected to fail goes here with its reason; the xfail is strict, so it fails
# the suite the day it passes (test_expected_failures_are_strict_and_named).
EXPECTED_FAILED: dict = {}

# The estimator the checks run on: the defaults (image_size=None included), made small to be quick.
CONTRACT = VAEFeatureExtractor(2, epochs=1, batch_size=32)


def _tiny(**kw):
    params = dict(latent_dim=2, epochs=1, batch_size=32, image_size=8, seed=0)
    params.update(kw)
    return VAEFeatureExtractor(**params)


@parametrize_with_checks([CONTRACT], expected_failed_checks=lambda est: EXPECTED_FAILED)
def test_sklearn_contract(estimator, check):
    check(estimator)


def test_expected_failures_are_strict_and_named(request):
    from sklearn.utils.estimator_checks import _check_name

    params = test_sklearn_contract.pytestmark[0].args[1]
    names, strict = set(), request.config.getini("xfail_strict")
    for param in params:
        marks = getattr(param, "marks", ())
        check = param.values[1] if marks else param[1]
        names.add(_check_name(check))
        for mark in marks:
            assert mark.name == "xfail" and mark.kwargs.get("strict", strict) is True, (check, mark)
    assert len(names) > 40
    assert set(EXPECTED_FAILED) <= names, set(EXPECTED_FAILED) - names  # no stale names


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return (d.images / 16.0)[:400], d.target[:400]  # float in [0, 1], shape (n, 8, 8)


def test_fit_transform_shapes_and_types(digits):
    X, _ = digits
    est = _tiny(latent_dim=3)
    Z = est.fit(X).transform(X)
    assert Z.shape == (400, 3) and Z.dtype == np.float32 and np.isfinite(Z).all()
    assert est.n_features_in_ == 64 and est.image_shape_ == (8, 8, 1) and len(est.history_) == 1
    assert isinstance(est.model_, ConvVAE) and est.model_.config.latent_dim == 3
    assert list(est.get_feature_names_out()) == ["vaefeatureextractor0", "vaefeatureextractor1",
                                                 "vaefeatureextractor2"]
    # the same images as uint8, flattened, or channels-last give the same features
    u8 = np.rint(X * 255).astype(np.uint8)
    np.testing.assert_array_equal(est.transform(u8), Z)
    np.testing.assert_array_equal(est.transform(u8[..., None]), Z)
    flat = X.reshape(400, 64)
    np.testing.assert_array_equal(_tiny(latent_dim=3).fit(flat).transform(flat), Z)


def test_fit_is_deterministic(digits):
    X, _ = digits
    a = _tiny().fit(X).transform(X)
    b = _tiny().fit(X).transform(X)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, _tiny(seed=1).fit(X).transform(X))


def test_transform_is_row_wise(digits):
    X, _ = digits
    est = _tiny().fit(X)
    Z = est.transform(X)
    order = np.random.default_rng(0).permutation(len(X))
    np.testing.assert_allclose(est.transform(X[order]), Z[order], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(est.transform(X[:7]), Z[:7], rtol=1e-5, atol=1e-6)


def test_pipeline_with_logistic_regression(digits):
    X, y = digits
    pipe = make_pipeline(_tiny(latent_dim=8, epochs=2), LogisticRegression(max_iter=500))
    pipe.fit(X[:300], y[:300])
    accuracy = pipe.score(X[300:], y[300:])
    assert 0.2 < accuracy <= 1.0  # 10 classes: chance is 0.1; even a 2-epoch VAE carries signal
    assert pipe.predict(X[300:]).shape == (100,)


def test_clone_and_pickle(digits):
    X, _ = digits
    est = _tiny(latent_dim=4, lr=1e-3)
    fitted = est.fit(X)
    c = clone(fitted)
    assert c.get_params() == est.get_params() and not hasattr(c, "model_")
    with pytest.raises(NotFittedError):
        c.transform(X)
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.transform(X), fitted.transform(X))


def test_given_model_skips_training(digits, tmp_path):
    X, _ = digits
    model = ConvVAE(image_size=8, channels=1, latent_dim=5)
    path = model.save(tmp_path / "run")
    est = VAEFeatureExtractor(model=path).fit(X)
    assert est.history_ == [] and est.model_.fingerprint() == model.fingerprint()
    import torch

    expected = model.embed(torch.from_numpy(np.rint(X * 255).astype(np.uint8)[:, None])).numpy()
    np.testing.assert_allclose(est.transform(X), expected, rtol=1e-5, atol=1e-6)


def test_rows_of_numbers_are_laid_into_a_padded_square(digits):
    X = digits[0][:100]
    rows = X.reshape(100, 64)[:, 20:27]  # 7 columns: no flattened image
    canvas = np.zeros((100, 8, 8))
    canvas.reshape(100, 64)[:, :7] = rows  # row-major, the rest black
    est = _tiny().fit(rows)
    assert est.n_features_in_ == 7 and est.image_shape_ == (8, 8, 1) and est.data_range_ is None
    np.testing.assert_array_equal(est.transform(rows), _tiny().fit(canvas).transform(canvas))
    with pytest.raises(ValueError, match="X has 64 features, but VAEFeatureExtractor is expecting 7"):
        est.transform(canvas)  # the canvas itself is another input
    with pytest.raises(ValueError, match="X has 8 features, but VAEFeatureExtractor is expecting 7"):
        est.transform(X.reshape(100, 64)[:, :8])
    # the canvas is image_size when the row fits in it, else the smallest square that holds it
    assert _tiny(image_size=12).fit(rows).image_shape_ == (12, 12, 1)
    wide = np.tile(rows, 10)  # 70 columns > 8 * 8
    fitted = _tiny().fit(wide)
    assert fitted.image_shape_ == (9, 9, 1) and fitted.model_.config.image_size == 8
    assert fitted.transform(wide[:5]).shape == (5, 2)


def test_values_outside_the_pixel_ranges_are_min_max_scaled(digits):
    X = digits[0][:100]
    assert X.min() == 0 and X.max() == 1
    pixels = _tiny().fit(X)
    Z = pixels.transform(X)
    assert pixels.data_range_ is None
    for numbers, lo, hi in ((X * 2, 0, 2), (X - 0.5, -0.5, 0.5), (X * 1000 + 3, 3, 1003)):
        est = _tiny().fit(numbers)
        assert est.data_range_ == (lo, hi)
        np.testing.assert_array_equal(est.transform(numbers), Z)  # scaled back onto the same pixels
    est = _tiny().fit(X * 2)
    # beyond the fitted range: clipped to black and white
    np.testing.assert_array_equal(est.transform(X * 4 - 1), est.transform(np.clip(X * 4 - 1, 0, 2)))
    # one scale for every dtype: integers are numbers too once fit saw numbers
    np.testing.assert_array_equal(est.transform((X * 2).astype(np.int64)), est.transform(np.floor(X * 2)))
    ints = np.rint(X * 300).astype(np.int64)  # integers above 255
    assert _tiny().fit(ints).data_range_ == (0, 300)
    # pixels stay pixels: uint8 0..255 is never rescaled, and a fit on pixels refuses other values
    dim = np.rint(X * 100).astype(np.uint8)
    assert _tiny().fit(dim).data_range_ is None
    np.testing.assert_array_equal(_tiny().fit(dim).transform(dim), _tiny().fit(dim / 255.0).transform(dim))
    with pytest.raises(ValueError, match=r"values in \[0, 2\]: expected float in \[0, 1\]"):
        pixels.transform(X * 2)
    with pytest.raises(ValueError, match=r"values in \[-0.5, 0.5\]"):
        pixels.transform(X - 0.5)
    with pytest.raises(ValueError, match=r"values in \[0, 300\]: expected uint8 in 0..255"):
        pixels.transform(ints)
    const = _tiny().fit(np.full((20, 8, 8), 7.0))
    assert const.data_range_ == (7, 7)
    np.testing.assert_array_equal(const.transform(np.full((2, 8, 8), 7.0)), const.transform(np.zeros((2, 8, 8))))


def test_small_images_are_enlarged_to_the_smallest_model_input(digits):
    X = digits[0][:100]
    small = X[:, ::2, ::2]  # 4x4
    est = VAEFeatureExtractor(2, epochs=1, batch_size=32).fit(small)
    assert est.model_.config.image_size == 8 and est.image_shape_ == (4, 4, 1)
    np.testing.assert_array_equal(est.transform(small), _tiny().fit(small).transform(small))


def test_bad_input_names_the_shape(digits):
    X, _ = digits
    est = _tiny()
    with pytest.raises(ValueError, match=r"shape \(4, 2, 8, 8\): expected images of shape \(n, h, w\)"):
        est.fit(np.zeros((4, 2, 8, 8)))
    with pytest.raises(ValueError, match=r"shape \(2, 3, 8, 8, 1\): expected images"):
        est.fit(np.zeros((2, 3, 8, 8, 1)))
    with pytest.raises(ValueError, match=r"shape \(64,\) is 1-D: .*Reshape your data"):
        est.fit(np.zeros(64))
    with pytest.raises(ValueError, match=r"0 feature\(s\)"):
        est.fit(np.zeros((5, 0)))
    with pytest.raises(ValueError, match="NaN or infinity"):
        est.fit(np.where(X == 1, np.inf, X))
    bad = X.reshape(400, 64).astype(object)
    bad[0, 0] = {"a": 1}
    with pytest.raises(TypeError, match="dtype object"):
        est.fit(bad)
    bad[0, 0] = "dark"
    with pytest.raises(ValueError, match="dtype object"):
        est.fit(bad)
    with pytest.raises(ValueError, match="images of 4x6 pixels: expected square images with a side up to 256"):
        VAEFeatureExtractor(2, epochs=1).fit(np.zeros((5, 4, 6)))
    fitted = _tiny().fit(X)
    with pytest.raises(ValueError, match="X has 16 features, but VAEFeatureExtractor is expecting 64"):
        fitted.transform(np.zeros((3, 4, 4)))
