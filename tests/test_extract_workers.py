"""Extraction's fast paths: the encoder running in the decoding workers gives the features of the plain path."""

from __future__ import annotations

import numpy as np
import torch

from _images import write_class_folder
from cvae_features.data import Preprocess, load_images, open_source
from cvae_features.extraction import extract
from cvae_features.model import ConvVAE
from cvae_features.store import FeatureStore


def test_encoding_in_workers_equals_encoding_here_and_leaves_the_model_alone(tmp_path):
    root = tmp_path / "images"
    write_class_folder(root, per_class=9, size=(12, 12))
    torch.manual_seed(0)
    model = ConvVAE(image_size=12, channels=1, latent_dim=5, widths=(8, 8)).train()
    before = model.fingerprint()
    stores = {}
    for workers in (0, 2):
        stores[workers] = extract(root, tmp_path / f"w{workers}.h5", model=model, workers=workers, batch_size=4,
                                  scores=True, logvar=True, progress=False).path
    # the caller's model keeps its weights, mode and memory layout
    assert model.training and model.fingerprint() == before
    assert all(p.is_contiguous() for p in model.parameters())
    src = open_source(root)
    images, rows, _ = load_images(src, Preprocess(12, 1), workers=0)
    with torch.no_grad():
        expected = model.eval()(images)
    with FeatureStore(stores[0]) as a, FeatureStore(stores[2]) as b:
        assert a.keys == b.keys == [src.keys[r] for r in rows] and a.n_rows == 18
        for got in (a, b):
            np.testing.assert_allclose(got.features, expected.mu.numpy(), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(got.extra("logvar"), expected.logvar.numpy(), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(got.extra("recon_error"), expected.recon_per_sample.numpy(), rtol=1e-4)
        assert a.labels.tolist() == b.labels.tolist() == [0] * 9 + [1] * 9
