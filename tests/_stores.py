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
