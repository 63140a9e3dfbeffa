"""Look inside a trained model: reconstructions, samples, interpolations, traversals, inpainting, a 2-D map.

:func:`show` writes one PNG per view and an ``index.html`` that shows them (relative
image links, inline CSS, no scripts, no external URLs), so the folder can be zipped
and opened anywhere. The images come from a source given by the caller or from the
source recorded with the run directory or feature store.
"""

from __future__ import annotations

import dataclasses
import html
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ._json import dumps
from ._version import __version__
from .errors import ConfigError, CvaeError, DataError
from .model import ConvVAE, count_parameters
from .resolve import resolve_model
from .sheets import PAGE_CSS, find_key, pad_row, recorded_specs, save_grid

MAP_POINTS = 2000
INTERP_STEPS = 9
TRAVERSAL_STEPS = 9
TRAVERSAL_RANGE = 3.0
MAX_TRAVERSAL_DIMS = 8
INPAINT_STEPS = 100
INPAINT_LR = 0.05
MASKS = ("right", "bottom", "centre")

# (file name, heading, caption) in the order index.html shows them.
VIEWS = (
    ("reconstructions.png", "Reconstructions",
     "Rows in pairs: the original image, then its reconstruction decoded from the posterior mean μ."),
    ("samples.png", "Samples from the prior",
     "Codes drawn from the model's prior and decoded: what the model believes an image looks like."),
    ("interpolations.png", "Interpolations",
     "Each row walks linearly in latent space from μ of the left image to μ of the right image."),
    ("traversals.png", "Latent traversals",
     "Each row walks one of the most active latent dimensions from the prior's mean -3 to +3 standard "
     "deviations, the others held at a base code."),
    ("inpainting.png", "Inpainting",
     "Rows in triples: masked input (hidden part grey), the model's fill (the most probable code given the "
     "known pixels, decoded; known pixels kept), the original."),
    ("embedding_map.png", "Embedding map",
     "PCA of the embeddings μ to two dimensions, coloured by label."),
)


@dataclass
class ShowResult:
    """What :func:`show` wrote and what it looked at.

    Attributes
    ----------
    out_dir : Path
        The output folder.
    files : dict of str to Path
        View name (file stem, e.g. ``"samples"``) to the PNG written.
    index : Path
        The ``index.html`` that shows every PNG.
    source : str or None
        Description of the images shown.
    n_images : int
        Images shown in the reconstruction grid.
    map_points : int
        Points in the embedding map.
    map_from : str
        ``"store"`` (the store's features) or ``"source"`` (μ of loaded images).
    traversal_dims : list of int
        Latent dimensions traversed, most active first.
    traversal_kl : list of float
        Mean KL (nats) of each traversed dimension over the loaded images.
    inpaint_mask : str
        The region hidden for inpainting.
    inpaint_steps : int
        Adam steps of the inpainting fill.
    fingerprint : str
        The model's fingerprint.
    """

    out_dir: Path
    files: Dict[str, Path]
    index: Path
    source: Optional[str]
    n_images: int
    map_points: int
    map_from: str
    traversal_dims: List[int]
    traversal_kl: List[float]
    inpaint_mask: str
    fingerprint: str
    inpaint_steps: int = INPAINT_STEPS
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["out_dir"] = str(self.out_dir)
        d["index"] = str(self.index)
        d["files"] = {k: str(v) for k, v in self.files.items()}
        return d


# ----------------------------------------------------------------------------- public helpers

def mask_for(mask: str, channels: int, size: int) -> torch.Tensor:
    """Boolean mask of shape (C, S, S), True where pixels are *known* (kept), False where hidden.

    Parameters
    ----------
    mask : {"right", "bottom", "centre"}
        Which region to hide: the right half, the bottom half or a centre square of half the side.
    """
    if mask not in MASKS:
        raise ConfigError(f"invalid mask={mask!r}: expected one of {list(MASKS)}")
    known = torch.ones(channels, size, size, dtype=torch.bool)
    half = size // 2
    if mask == "right":
        known[:, :, half:] = False
    elif mask == "bottom":
        known[:, half:, :] = False
    else:
        lo = size // 4
        known[:, lo:lo + half, lo:lo + half] = False
    return known


def inpaint(model: ConvVAE, images: torch.Tensor, known: torch.Tensor, steps: int = INPAINT_STEPS,
            lr: float = INPAINT_LR) -> torch.Tensor:
    """Fill the hidden pixels of images from the model, keeping the known pixels exactly.

    The most probable code given the known pixels (MAP under ``model.prior``, N(0, I) for a ConvVAE):
    z = argmin  -log p(known pixels | z) - log p(z), by Adam from μ of the image with its
    hidden part at mid-grey; the hidden pixels are the decoder's mean for that z. The weights
    are not changed. ``benchmarks/inpainting.py`` compares this with plain encode/decode rounds
    (which, with a small β, copy much of the grey region back).

    Parameters
    ----------
    model : ConvVAE
    images : uint8 Tensor of shape (n, C, S, S)
    known : bool Tensor of shape (C, S, S) or (n, C, S, S)
        True where a pixel is known.
    steps : int, default=100
        Adam steps on z, >= 1.
    lr : float, default=0.05
        Adam step size.

    Returns
    -------
    uint8 Tensor of shape (n, C, S, S)
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"invalid steps={steps!r}: expected an integer >= 1")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"invalid lr={lr!r}: expected a positive number")
    if images.dtype != torch.uint8:
        raise ConfigError(f"invalid images dtype {images.dtype}: expected torch.uint8")
    device = _device_of(model)
    modes = {m: m.training for m in model.modules()}
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        # gradients flow to z only; this also works when the caller is inside torch.inference_mode()
        with torch.inference_mode(False), torch.enable_grad():
            known = known.to(device).expand_as(images).clone()
            original = images.to(device).clone()
            x = original.float() / 255.0
            weight = known.float()
            with torch.no_grad():
                z = model.encode(torch.where(known, x, torch.full_like(x, 0.5)))[0].float()
            z.requires_grad_(True)
            opt = torch.optim.Adam([z], lr=float(lr))
            for _ in range(steps):
                loss = (model.reconstruction_nll(model.decode(z).float(), x, weight) - model.prior.log_prob(z)).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():
                recon = model.decode_mean(z.detach())
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        for m, mode in modes.items():
            m.training = mode
    filled = (recon * 255.0).round().clamp(0, 255).to(torch.uint8)
    # Copy the known pixels byte for byte so float round-trips cannot alter them.
    return torch.where(known, original, filled).cpu()


# ----------------------------------------------------------------------------- show

def show(model_or_path, out_dir, *, source=None, n: int = 16, seed: int = 0, data_dir=None,
         map_points: int = MAP_POINTS, mask: str = "right", inpaint_steps: int = INPAINT_STEPS) -> ShowResult:
    """Write PNG views of a model and an ``index.html`` showing them.

    Parameters
    ----------
    model_or_path : ConvVAE or path
        A model, or a run directory, model file or feature store that carries one.
    out_dir : path
        Folder to write into (created; files of the same names are replaced).
    source : str, path, ImageSource, uint8 array/Tensor of shape (m, C, S, S) or None
        Images to show. ``None`` opens the source recorded with the run directory or store.
    n : int, default=16
        Images in the reconstruction grid (2 to 256); the other views use up to 8.
    seed : int, default=0
        Seeds the choice of images, the prior samples and the map subsample.
    data_dir : path or None
        Where built-in data sets live (passed to ``open_source``).
    map_points : int, default=2000
        At most this many points in the embedding map.
    mask : {"right", "bottom", "centre"}, default="right"
        Region hidden in the inpainting view.
    inpaint_steps : int, default=100
        Adam steps on the code in the inpainting view (>= 1; see :func:`inpaint`). Fewer steps are
        faster and fill less faithfully.

    Returns
    -------
    ShowResult

    Raises
    ------
    ModelError
        If ``model_or_path`` is missing or holds no model.
    DataError
        If no images can be found to show.
    """
    if not isinstance(n, int) or isinstance(n, bool) or not 2 <= n <= 256:
        raise ConfigError(f"invalid n={n!r}: expected an integer from 2 to 256")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"invalid seed={seed!r}: expected an integer >= 0")
    if not isinstance(map_points, int) or map_points < 2:
        raise ConfigError(f"invalid map_points={map_points!r}: expected an integer >= 2")
    if not isinstance(inpaint_steps, int) or isinstance(inpaint_steps, bool) or inpaint_steps < 1:
        raise ConfigError(f"invalid inpaint_steps={inpaint_steps!r}: expected an integer >= 1")
    mask_for(mask, 1, 8)  # validates the name before any work

    model, origin = _resolve_model(model_or_path)
    cfg = model.config
    rng = np.random.default_rng(seed)

    images, labels, label_names, description = _images_to_show(
        source, origin, cfg, rng, n=n, max_points=map_points, data_dir=data_dir)
    if len(images) < 2:
        raise DataError(f"source {description!r} gave {len(images)} decodable image(s): expected at least 2 to show")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        mu, logvar = _encode_all(model, images)
        shown = images[: min(n, len(images))]
        m = min(8, len(shown))
        files: Dict[str, Path] = {}
        scale = max(1, math.ceil(64 / cfg.image_size))

        files["reconstructions"] = _save_reconstructions(model, shown, out_dir, scale)
        files["samples"] = _save_samples(model, min(n, 32), seed, out_dir, scale)
        files["interpolations"] = _save_interpolations(model, images, mu, labels, out_dir, scale)
        dims, dim_kl = _active_dims(model.prior, mu, logvar)
        files["traversals"] = _save_traversals(model, mu[0], dims, out_dir, scale)
        files["inpainting"] = _save_inpainting(model, shown[:m], mask, inpaint_steps, out_dir, scale)

        store_map = origin.get("store_map")
        if store_map is not None:
            feats, map_labels, map_names = store_map
            idx = np.sort(rng.choice(len(feats), size=min(map_points, len(feats)), replace=False))
            feats, map_labels, map_from = feats[idx], map_labels[idx], "store"
        else:
            feats, map_labels, map_names, map_from = mu.numpy(), labels, label_names, "source"
        files["embedding_map"] = _save_map(feats, map_labels, map_names, out_dir)
    finally:
        model.train(was_training)

    result = ShowResult(
        out_dir=out_dir, files=files, index=out_dir / "index.html", source=description,
        n_images=len(shown), map_points=len(feats), map_from=map_from,
        traversal_dims=[int(d) for d in dims], traversal_kl=[round(float(k), 4) for k in dim_kl],
        inpaint_mask=mask, fingerprint=model.fingerprint(), inpaint_steps=inpaint_steps, config=cfg.to_dict())
    _write_index(result, model, origin.get("label", "model"))
    # show.json lives beside the pictures: it names them relative to its folder, so the folder can move
    saved = dict(result.to_dict(), out_dir=".", index=result.index.name,
                 files={k: v.name for k, v in result.files.items()})
    (out_dir / "show.json").write_text(dumps(saved, indent=2) + "\n")
    return result


# ----------------------------------------------------------------------------- model and images

def _device_of(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _resolve_model(model_or_path) -> Tuple[torch.nn.Module, dict]:
    """The model, and what was recorded with it: source spec, preprocess, store features."""
    resolved = resolve_model(model_or_path)
    model = resolved.model
    origin = {"label": resolved.label}
    if resolved.origin == "object":
        return model, origin
    origin["sources"] = recorded_specs(resolved.meta)
    if resolved.origin != "store":
        origin["preprocess_dict"] = find_key(resolved.meta, ("preprocess",))
        return model, origin
    from .data import Preprocess
    from .store import FeatureStore

    origin["preprocess"] = Preprocess.from_dict(resolved.preprocess)
    with FeatureStore(resolved.path) as store:
        # The store's own rows make the map only when they are this model's μ.
        if store.feature_kind == "vae" and store.model_fingerprint in (None, model.fingerprint()) \
                and store.n_rows >= 2:
            origin["store_map"] = (np.asarray(store.features, dtype=np.float32),
                                   np.asarray(store.labels, dtype=np.int64), list(store.label_names))
    return model, origin


def _images_to_show(source, origin, cfg, rng, *, n, max_points, data_dir):
    """Up to ``max_points`` images (the first ``n`` are the shown ones), labels, label names, description."""
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return _from_array(source, cfg, rng, max_points)
    if source is None:
        specs = origin.get("sources") or []
        if not specs:
            raise DataError(f"no source is recorded with {origin.get('label', 'the model')}: pass --source "
                            "(a folder, a .csv manifest or a built-in data set name)")
        src, first_error = None, None
        for spec in specs:
            try:
                src = _open(spec, data_dir)
                break
            except CvaeError as err:
                first_error = first_error or err
        if src is None:
            raise DataError(f"cannot open the source recorded with {origin.get('label')} ({first_error}); "
                            "pass --source") from None
    elif isinstance(source, (str, Path)):
        src = _open(str(source), data_dir)
    else:
        src = source  # an ImageSource
    pre = _preprocess_for(src, origin, cfg)
    from .data import load_images

    total = len(src)
    if total == 0:
        raise DataError(f"source {src.description!r} holds no images: expected at least 2")
    chosen = rng.permutation(total)[: min(max_points, total)]
    # Decode in source order (fast for files), then restore the random order so the first n are a random draw.
    order = np.argsort(chosen)
    images, indices, _skipped = load_images(src.subset(chosen[order]), pre, progress=False)
    indices = np.asarray(indices, dtype=np.int64)
    rows = order[indices]  # position of each decoded row in the random draw
    perm = np.argsort(rows)
    images = torch.as_tensor(images)[torch.as_tensor(perm)]
    picked = chosen[rows[perm]]
    labels = np.asarray(src.labels, dtype=np.int64)[picked] if getattr(src, "has_labels", False) \
        else np.full(len(picked), -1, dtype=np.int64)
    return images, labels, list(getattr(src, "label_names", []) or []), src.description


def _open(spec: str, data_dir):
    from .data import open_source

    return open_source(spec, data_dir=data_dir)


def _preprocess_for(src, origin, cfg):
    """The model's canonical input: the store's preprocess, the run's, or the model's size and channels."""
    from . import data

    pre = origin.get("preprocess")
    if pre is not None and (pre.size, pre.channels) == (cfg.image_size, cfg.channels):
        return pre
    d = origin.get("preprocess_dict")
    if isinstance(d, dict) and hasattr(data, "Preprocess"):
        try:
            pre = data.Preprocess(**{k: d[k] for k in ("size", "channels", "resize") if k in d})
            if (pre.size, pre.channels) == (cfg.image_size, cfg.channels):
                return pre
        except (TypeError, CvaeError):
            pass
    return data.infer_preprocess(src, image_size=cfg.image_size, channels=cfg.channels)


def _from_array(arr, cfg, rng, max_points):
    images = torch.as_tensor(np.asarray(arr) if isinstance(arr, np.ndarray) else arr)
    want = (cfg.channels, cfg.image_size, cfg.image_size)
    if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != want:
        raise DataError(f"invalid source array of dtype {images.dtype} and shape {tuple(images.shape)}: "
                        f"expected uint8 of shape (m, {want[0]}, {want[1]}, {want[2]})")
    perm = rng.permutation(len(images))[: min(max_points, len(images))]
    images = images[torch.as_tensor(perm)]
    return images, np.full(len(images), -1, dtype=np.int64), [], f"array of {len(perm)} images"


@torch.no_grad()
def _encode_all(model, images, batch_size=256):
    device = _device_of(model)
    mus, lvs = [], []
    for start in range(0, len(images), batch_size):
        mu, lv = model.encode(images[start:start + batch_size].to(device))
        mus.append(mu.float().cpu())
        lvs.append(lv.float().cpu())
    return torch.cat(mus), torch.cat(lvs)


@torch.no_grad()
def _decode(model, z) -> torch.Tensor:
    """Codes (k, d) to uint8 images (k, C, S, S)."""
    out = model.decode_mean(z.to(_device_of(model))).float().cpu()
    return (out * 255.0).round().clamp(0, 255).to(torch.uint8)


def _active_dims(prior, mu: torch.Tensor, logvar: torch.Tensor):
    """Latent dimensions ranked by mean KL to the prior over the loaded images (most used first)."""
    mean_kl = prior.kl_per_dim(mu, logvar).mean(0)
    k = min(MAX_TRAVERSAL_DIMS, mu.shape[1])
    order = torch.argsort(mean_kl, descending=True)[:k]
    return order.tolist(), mean_kl[order].tolist()


# ----------------------------------------------------------------------------- views

def _save_reconstructions(model, shown, out_dir, scale):
    recon = _decode(model, _encode_all(model, shown)[0])
    cols = min(len(shown), 8)
    rows, labels = [], []
    for start in range(0, len(shown), cols):
        rows.append(pad_row(shown[start:start + cols], cols))
        rows.append(pad_row(recon[start:start + cols], cols))
        labels += ["original", "reconstruction"]
    return save_grid(rows, labels, out_dir / "reconstructions.png", scale)


def _save_samples(model, k, seed, out_dir, scale):
    gen = torch.Generator().manual_seed(seed)
    z = model.prior.sample(k, generator=gen)
    imgs = _decode(model, z)
    cols = 8
    rows = [pad_row(imgs[s:s + cols], cols) for s in range(0, k, cols)]
    return save_grid(rows, [""] * len(rows), out_dir / "samples.png", scale)


def _save_interpolations(model, images, mu, labels, out_dir, scale):
    pairs = max(1, min(4, len(images) // 2))
    t = torch.linspace(0.0, 1.0, INTERP_STEPS).unsqueeze(1)
    rows, used = [], set(range(pairs))
    for a in range(pairs):
        # Pair each image with an unused one of another label when labels are known: a more telling walk.
        b = next((j for j in range(pairs, len(images)) if j not in used and labels[j] != labels[a]),
                 next(j for j in range(pairs, len(images)) if j not in used))
        used.add(b)
        z = (1 - t) * mu[a] + t * mu[b]
        rows.append([images[a]] + list(_decode(model, z)) + [images[b]])
    return save_grid(rows, [f"pair {p + 1}" for p in range(pairs)], out_dir / "interpolations.png", scale)


def _traversal_codes(prior, base: torch.Tensor, d: int) -> torch.Tensor:
    """``base`` repeated TRAVERSAL_STEPS times with dimension d walking the prior's mean ± TRAVERSAL_RANGE std."""
    steps = torch.linspace(-TRAVERSAL_RANGE, TRAVERSAL_RANGE, TRAVERSAL_STEPS)
    z = base.repeat(TRAVERSAL_STEPS, 1)
    z[:, d] = prior.mean[d] + steps * prior.stddev[d]
    return z


def _save_traversals(model, base, dims, out_dir, scale):
    rows = []
    for d in dims:
        rows.append(list(_decode(model, _traversal_codes(model.prior, base, d))))
    return save_grid(rows, [f"z[{d}]" for d in dims], out_dir / "traversals.png", scale)


def _save_inpainting(model, shown, mask, steps, out_dir, scale):
    cfg = model.config
    known = mask_for(mask, cfg.channels, cfg.image_size)
    filled = inpaint(model, shown, known, steps=steps)
    masked = torch.where(known.expand_as(shown), shown, torch.full_like(shown, 128))
    cols = len(shown)
    rows = [pad_row(masked, cols), pad_row(filled, cols), pad_row(shown, cols)]
    return save_grid(rows, ["masked", "filled", "original"], out_dir / "inpainting.png", scale)


def _save_map(feats, labels, label_names, out_dir):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.decomposition import PCA

    feats = np.asarray(feats, dtype=np.float64)
    if feats.shape[1] >= 2 and len(feats) >= 2:
        pca = PCA(n_components=2, random_state=0).fit(feats)
        xy, ratio = pca.transform(feats), pca.explained_variance_ratio_
    else:  # a 1-d latent: plot it against zero
        xy = np.column_stack([feats[:, 0], np.zeros(len(feats))])
        ratio = np.array([1.0, 0.0])
    # Figure + Agg canvas directly: no pyplot global state, works without a display.
    fig = Figure(figsize=(6.4, 5.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    labels = np.asarray(labels)
    present = [c for c in np.unique(labels) if c >= 0]
    if present:
        cmap = _colormap(len(present))
        for i, c in enumerate(present):
            sel = labels == c
            name = label_names[c] if 0 <= c < len(label_names) else str(c)
            ax.scatter(xy[sel, 0], xy[sel, 1], s=6, alpha=0.7, color=cmap(i), label=str(name), linewidths=0)
        if (labels < 0).any():
            sel = labels < 0
            ax.scatter(xy[sel, 0], xy[sel, 1], s=6, alpha=0.5, color="0.6", label="unlabelled", linewidths=0)
        if len(present) <= 20:
            ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=2, frameon=False)
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.6, color="tab:blue", linewidths=0)
    ax.set_xlabel(f"PC 1 ({100 * ratio[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * ratio[1]:.1f}% of variance)")
    ax.set_title(f"embeddings μ, {len(feats)} points")
    fig.tight_layout()
    path = out_dir / "embedding_map.png"
    fig.savefig(path)
    return path


def _colormap(k):
    from matplotlib import colormaps

    return colormaps["tab10" if k <= 10 else "tab20" if k <= 20 else "turbo"].resampled(max(k, 2))


# ----------------------------------------------------------------------------- index.html

def _write_index(result: ShowResult, model: ConvVAE, label: str) -> Path:
    esc = html.escape
    prior = model.prior
    prior_text = prior.describe() if hasattr(prior, "describe") else type(prior).__name__
    captions = {
        "samples": f"Codes drawn from the model's prior ({prior_text}) and decoded: what the model believes an "
                   "image looks like.",
        "traversals": f"Rows set latent dimensions {result.traversal_dims} (most active first, by mean KL to the "
                      f"prior) to the prior's mean -{TRAVERSAL_RANGE:g} to +{TRAVERSAL_RANGE:g} standard deviations "
                      f"(prior: {prior_text}); the others stay at μ of one image.",
        "inpainting": f"Rows in triples: the input with its {result.inpaint_mask} part hidden (grey), the model's "
                      f"fill (the most probable code given the known pixels, {result.inpaint_steps} Adam steps, decoded; "
                      "known pixels kept), the original.",
        "embedding_map": f"PCA of the embeddings μ to two dimensions, {result.map_points} points from the "
                         f"{'store' if result.map_from == 'store' else 'source'}, coloured by label.",
    }
    parts = [
        "<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>cvae show: {esc(label)}</title>", f"<style>{PAGE_CSS}</style></head><body>",
        f"<h1>Inside the model {esc(label)}</h1>",
        f"<p>Fingerprint <code>{esc(result.fingerprint)}</code>, {count_parameters(model):,} parameters, "
        f"images from <code>{esc(str(result.source))}</code>. Written by cvae-features {esc(__version__)}.</p>",
    ]
    for filename, heading, caption in VIEWS:
        stem = filename[:-4]
        if stem not in result.files:
            continue
        parts.append(f"<h2>{esc(heading)}</h2>")
        parts.append(f"<p class=\"caption\">{esc(captions.get(stem, caption))}</p>")
        parts.append(f"<img src=\"{esc(result.files[stem].name)}\" alt=\"{esc(heading)}\">")
    parts.append("<h2>Model configuration</h2><table>")
    parts.append("<tr><th>fingerprint</th><td><code>" + esc(result.fingerprint) + "</code></td></tr>")
    for key, value in result.config.items():
        parts.append(f"<tr><th>{esc(key)}</th><td>{esc(dumps(value))}</td></tr>")
    parts.append("</table></body></html>")
    result.index.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return result.index


__all__ = ["show", "ShowResult", "inpaint", "mask_for"]
