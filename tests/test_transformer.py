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

_NOT_IMAGES = "check data has 2, 3, 5 or 10 columns: not flattened square images"
_NOT_PIXELS = "check data are floats above 1: pixels must be uint8 0..255 or float in [0, 1]"

# Checks that feed data which is not an image stack. The estimator refuses such input on purpose
# (with a ValueError naming the shape or value range), so these checks cannot apply.
EXPECTED_FAILED = {
    "check_estimators_overwrite_params": _NOT_IMAGES,
    "check_estimators_fit_returns_self": _NOT_IMAGES,
    "check_readonly_memmap_input": _NOT_IMAGES,
    "check_estimators_dtypes": _NOT_IMAGES,
    "check_dtype_object": _NOT_IMAGES,
    "check_fit_idempotent": _NOT_IMAGES,  # covered by test_fit_is_deterministic on images
    "check_fit_check_is_fitted": _NOT_IMAGES,
    "check_n_features_in": _NOT_IMAGES,
    "check_fit2d_1sample": _NOT_IMAGES + " (the shape error comes before any sample-count message)",
    "check_dont_overwrite_parameters": _NOT_PIXELS,
    "check_n_features_in_after_fitting": _NOT_PIXELS,
    "check_pipeline_consistency": _NOT_PIXELS,
    "check_estimators_pickle": _NOT_PIXELS,  # covered by test_clone_and_pickle on images
    "check_f_contiguous_array_estimator": _NOT_PIXELS,
    "check_transformer_data_not_an_array": _NOT_PIXELS,
    "check_transformer_general": _NOT_PIXELS,
    "check_transformer_preserve_dtypes": _NOT_PIXELS,
    "check_methods_sample_order_invariance": _NOT_PIXELS,  # covered by test_transform_is_row_wise on images
    "check_methods_subset_invariance": _NOT_PIXELS,  # covered by test_transform_is_row_wise on images
    "check_fit2d_1feature": _NOT_PIXELS + " (the range error comes before any feature-count message)",
    "check_dict_unchanged": _NOT_PIXELS,
    "check_fit2d_predict1d": _NOT_PIXELS,
}


def _tiny(**kw):
    params = dict(latent_dim=2, epochs=1, batch_size=32, image_size=8, seed=0)
    params.update(kw)
    return VAEFeatureExtractor(**params)


@parametrize_with_checks([_tiny()], expected_failed_checks=lambda est: EXPECTED_FAILED)
def test_sklearn_contract(estimator, check):
    check(estimator)


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


def test_bad_input_names_the_shape(digits):
    X, _ = digits
    est = _tiny()
    with pytest.raises(ValueError, match=r"shape \(5, 7\)"):
        est.fit(np.zeros((5, 7)))
    with pytest.raises(ValueError, match=r"shape \(4, 2, 8, 8\): expected images of shape \(n, h, w\)"):
        est.fit(np.zeros((4, 2, 8, 8)))
    with pytest.raises(ValueError, match=r"values in \[0, 2\]: expected float in \[0, 1\] or uint8"):
        est.fit(X * 2)
    with pytest.raises(ValueError, match="Negative values"):
        est.fit(X - 0.5)
    with pytest.raises(ValueError, match="images of 4x4 pixels: expected square images with a side from 8"):
        VAEFeatureExtractor(2, epochs=1).fit(np.zeros((5, 4, 4)))
    fitted = _tiny().fit(X)
    with pytest.raises(ValueError, match="X has 16 features, but VAEFeatureExtractor is expecting 64"):
        fitted.transform(np.zeros((3, 4, 4)))
