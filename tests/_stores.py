"""Keyword arguments of StoreWriter.create that record a featurizer, for tests that write stores by hand."""

from cvae_features.featurizers import pca_fingerprint


def vae_fields(model, carry_weights=True) -> dict:
    """A vae store made by ``model``; ``carry_weights`` keeps its weights in the store."""
    return {"fingerprint": model.fingerprint(), "model_config": model.config.to_dict(), "model_arch": model.arch,
            "state": model.state_dict() if carry_weights else None}


def pca_fields(pca, preprocess) -> dict:
    """A pca store with basis ``pca`` ('mean', 'components', 'explained_variance')."""
    if pca is None:
        return {}
    return {"fingerprint": pca_fingerprint(pca["mean"], pca["components"], preprocess), "state": pca}


def save_tiny_model(run_dir, image_size, latent_dim, seed=0):
    """A small ConvVAE with seeded random weights saved as a run directory (enough to compare paths exactly)."""
    import torch

    from cvae_features.model import ConvVAE

    torch.manual_seed(seed)
    ConvVAE(image_size=image_size, channels=1, latent_dim=latent_dim, widths=(8, 8)).save(run_dir)
    return run_dir
