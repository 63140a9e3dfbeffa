"""Plots of probe results and feature maps (matplotlib, Agg): what the report and the probes' plot hooks draw.

Rendering only: it imports neither the probes nor the report, so both can use it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_confusion(result, path, *, label_names=None, title: str | None = None) -> Path:
    """Confusion matrix of a linear-probe result (row-normalised colours, counts written in cells)."""
    plt = _pyplot()
    cm = np.asarray(result.confusion_matrix, dtype=float)
    names = [str(label_names[c]) if label_names is not None and 0 <= c < len(label_names) else str(c)
             for c in result.classes]
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.5 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(names) <= 20:
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_title(title or f"linear probe: accuracy {result.accuracy:.3f}")
    return _save(fig, path)


def plot_fewshot(results, path, *, title: str = "few labels per class") -> Path:
    """Accuracy vs labels per class with error bars (std over seeds), one line per (store, method).

    ``results`` is a FewShotResult or ``{store_label: FewShotResult}``.
    """
    plt = _pyplot()
    by_store = results if isinstance(results, dict) else {"": results}
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    styles = ["-", "--", ":", "-."]
    for si, (store, res) in enumerate(by_store.items()):
        for method, per_k in res.curves.items():
            ks = sorted(per_k, key=int)
            ax.errorbar([int(k) for k in ks], [per_k[k]["mean"] for k in ks], yerr=[per_k[k]["std"] for k in ks],
                        marker="o", capsize=3, linestyle=styles[si % len(styles)],
                        label=f"{store}: {method}" if store else method)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training rows per class")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_roc(result, path, *, title: str | None = None) -> Path:
    """ROC curves of every anomaly score that has them (needs test labels), with AUROC in the legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, s in result.scores.items():
        if s.get("roc"):
            ax.plot(s["roc"]["fpr"], s["roc"]["tpr"], label=f"{name} (AUROC {s['auroc']:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
    ax.axvline(result.target_fpr, color="grey", linewidth=0.8, linestyle="--",
               label=f"target FPR {result.target_fpr:g}")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(title or "anomaly scores")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def feature_map(X, *, method: str = "pca", max_points: int = 5000, seed: int = 0):
    """2-D coordinates of (a seeded subsample of) ``X`` (n_samples, n_features).

    Returns
    -------
    coords : ndarray of shape (m, 2)
    rows : ndarray of shape (m,)
        The rows of ``X`` that were mapped.
    """
    from .errors import ConfigError

    X = np.asarray(X, dtype=np.float64)
    if method not in ("pca", "tsne"):
        raise ConfigError(f"method: expected 'pca' or 'tsne', got {method!r}")
    rng = np.random.default_rng(seed)
    rows = np.arange(X.shape[0]) if X.shape[0] <= max_points else np.sort(rng.choice(X.shape[0], max_points,
                                                                                    replace=False))
    Xs = X[rows]
    if X.shape[1] == 1:
        return np.column_stack([Xs[:, 0], np.zeros(rows.size)]), rows
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(Xs), rows
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (rows.size - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(Xs), rows


def plot_feature_map(X, y=None, path="map.png", *, method: str = "pca", label_names=None, max_points: int = 5000,
                     seed: int = 0, title: str | None = None) -> Path:
    """Scatter of a 2-D map of the features (PCA by default, t-SNE optional) coloured by label."""
    plt = _pyplot()
    coords, rows = feature_map(X, method=method, max_points=max_points, seed=seed)
    fig, ax = plt.subplots(figsize=(6, 5))
    if y is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=3, alpha=0.6)
    else:
        y = np.asarray(y)[rows]
        classes = np.unique(y)
        cmap = plt.get_cmap("tab10" if classes.size <= 10 else "tab20")
        for i, c in enumerate(classes):
            name = "unknown" if c < 0 else (str(label_names[c]) if label_names is not None and c < len(label_names)
                                            else str(c))
            sel = y == c
            ax.scatter(coords[sel, 0], coords[sel, 1], s=3, alpha=0.6, color=cmap(i % cmap.N), label=name)
        if classes.size <= 20:
            ax.legend(fontsize=7, markerscale=3, loc="best")
    ax.set_title(title or f"features ({method.upper()}, {rows.size} rows)")
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, path)


def file_label(text: str) -> str:
    """A store label made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "features"


__all__ = ["plot_confusion", "plot_fewshot", "plot_roc", "feature_map", "plot_feature_map", "file_label"]
