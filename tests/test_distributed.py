"""Training that does not depend on batching: keyed noise; data-parallel training with two real processes."""

import numpy as np
import torch

from cvae_features.model import ConvVAE
from cvae_features.noise import keyed_normal


def test_keyed_noise_is_a_function_of_key_and_index_only():
    a = keyed_normal(7, torch.tensor([3, 9, 4]), 16)
    b = keyed_normal(7, torch.tensor([4, 100, 3]), 16)
    assert torch.equal(a[0], b[2]) and torch.equal(a[2], b[0])
    assert not torch.equal(keyed_normal(8, torch.tensor([3]), 16)[0], a[0])  # another key (epoch): other noise
    assert not torch.equal(a[0], a[1])
    z = keyed_normal(1, torch.arange(5000), 40).numpy()
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert abs(np.corrcoef(z[:, 0], z[:, 1])[0, 1]) < 0.05 and abs(np.corrcoef(z[:-1, 0], z[1:, 0])[0, 1]) < 0.05
    assert (np.abs(z) > 3).mean() < 0.005 and np.isfinite(z).all()


def test_a_batch_split_in_two_gives_the_same_per_image_terms():
    torch.manual_seed(0)
    model = ConvVAE(image_size=8, channels=1, latent_dim=4, widths=(8,)).train()
    images = torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8)
    index = torch.arange(20, 30)
    whole = model.loss({"images": images, "index": index, "noise_key": torch.tensor(5)})
    halves = [model.loss({"images": images[s], "index": index[s], "noise_key": torch.tensor(5)})
              for s in (slice(0, 4), slice(4, 10))]
    for name in ("recon", "kl"):
        joined = torch.cat([h.per_sample_terms()[name] for h in halves])
        torch.testing.assert_close(joined, whole.per_sample_terms()[name])
    other = model.loss({"images": images, "index": index, "noise_key": torch.tensor(6)})
    assert not torch.allclose(other.per_sample_terms()["recon"], whole.per_sample_terms()["recon"])
