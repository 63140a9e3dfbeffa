"""How well ``cvae show`` fills hidden pixels: its MAP fill against plain encode/decode rounds.

    python benchmarks/inpainting.py --model RUN_DIR --source fashion-mnist:test --name fashion_mnist
    python benchmarks/inpainting.py --model RUN_DIR --source digits:test --name digits

For each mask of ``cvae_features.show.MASKS`` the same seeded draw of images is filled three ways,
and the mean squared error of the hidden pixels (values in [0, 1]) against the originals is
recorded: mid-grey (no model), ``rounds`` (start at mid-grey, then encode to μ, decode, put the
known pixels back, 10 times) and ``inpaint`` (what ``cvae show`` draws: the most probable code
given the known pixels under the N(0, I) prior, decoded). Lower is better. Writes
``benchmarks/results/inpainting_<name>.{md,json}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as bc  # noqa: E402

ROUNDS = 10


def fill_by_rounds(model, images, known, rounds=ROUNDS):
    """The baseline: grey start, then encode to μ / decode / restore known pixels, ``rounds`` times."""
    import torch

    with torch.no_grad():
        known = known.expand_as(images)
        x = images.float() / 255.0
        cur = torch.where(known, x, torch.full_like(x, 0.5))
        for _ in range(rounds):
            cur = torch.where(known, x, model.decode_mean(model.encode(cur)[0]))
    return (cur * 255.0).round().clamp(0, 255).to(torch.uint8)


def hidden_mse(filled, images, known) -> float:
    hidden = ~known.expand_as(images)
    diff = filled.float() / 255.0 - images.float() / 255.0
    return float(diff[hidden].pow(2).mean())


def run(args, argv) -> dict:
    import torch

    from cvae_features import load_model, open_source
    from cvae_features.data import Preprocess, load_images
    from cvae_features.show import INPAINT_LR, INPAINT_STEPS, MASKS, inpaint, mask_for

    rec = bc.record_header("inpainting", __file__, argv)
    t0 = time.perf_counter()
    model = load_model(args.model)
    cfg = model.config
    src = open_source(args.source, data_dir=args.data_dir)
    chosen = np.sort(np.random.default_rng(args.seed).choice(len(src), min(args.n, len(src)), replace=False))
    images, _, _ = load_images(src.subset(chosen), Preprocess(size=cfg.image_size, channels=cfg.channels),
                               progress=False)
    images = torch.as_tensor(images)
    rows = []
    for mask in MASKS:
        known = mask_for(mask, cfg.channels, cfg.image_size)
        grey = torch.where(known.expand_as(images), images, torch.full_like(images, 128))
        t = time.perf_counter()
        rounds = fill_by_rounds(model, images, known)
        t_rounds = time.perf_counter() - t
        t = time.perf_counter()
        mapfill = inpaint(model, images, known)
        t_map = time.perf_counter() - t
        rows.append({"mask": mask, "hidden_pixels": int((~known).sum()), "mse_grey": hidden_mse(grey, images, known),
                     "mse_rounds": hidden_mse(rounds, images, known), "mse_inpaint": hidden_mse(mapfill, images, known),
                     "seconds_rounds": round(t_rounds, 2), "seconds_inpaint": round(t_map, 2)})
        bc.say(f"{mask}: grey {rows[-1]['mse_grey']:.4f}, rounds {rows[-1]['mse_rounds']:.4f}, "
               f"inpaint {rows[-1]['mse_inpaint']:.4f}")
    rec.update(model=str(args.model), model_fingerprint=model.fingerprint(), model_config=cfg.to_dict(),
               source=src.description, n_images=len(images), seed=args.seed, rounds=ROUNDS,
               inpaint_steps=INPAINT_STEPS, inpaint_lr=INPAINT_LR, rows=rows)
    rec["wall_s"] = round(time.perf_counter() - t0, 1)
    return rec


def markdown(rec: dict) -> str:
    m = rec["model_config"]
    lines = [f"# Inpainting: {rec['source']}", ""] + bc.header_lines(rec) + [
        "",
        f"Model `{rec['model']}` (fingerprint `{rec['model_fingerprint']}`): latent {m['latent_dim']}, β {m['beta']}, "
        f"{m['image_size']}×{m['image_size']}. {rec['n_images']} images drawn with seed {rec['seed']}. Mean squared "
        "error of the hidden pixels (values in [0, 1]) against the originals; lower is better.",
        "",
        "- grey: the hidden part left at mid-grey (no model).",
        f"- rounds: from mid-grey, {rec['rounds']} rounds of encode to μ, decode, put the known pixels back.",
        f"- inpaint (what `cvae show` draws): the code z minimising −log p(known pixels | z) + ‖z‖²/2, "
        f"{rec['inpaint_steps']} Adam steps of size {rec['inpaint_lr']} from μ of the grey-filled image; decoded.",
        "",
    ]
    lines += bc.md_table(["mask", "hidden pixels", "grey", "rounds", "inpaint", "rounds / inpaint", "s (rounds, inpaint)"],
                         [[r["mask"], r["hidden_pixels"], f"{r['mse_grey']:.4f}", f"{r['mse_rounds']:.4f}",
                           f"{r['mse_inpaint']:.4f}", f"{r['mse_rounds'] / r['mse_inpaint']:.1f}×",
                           f"{r['seconds_rounds']:.1f}, {r['seconds_inpaint']:.1f}"] for r in rec["rows"]])
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="run directory, model file or store that carries its model")
    p.add_argument("--source", required=True, help="images to fill (e.g. fashion-mnist:test)")
    p.add_argument("--name", required=True, help="results go to benchmarks/results/inpainting_<name>.{md,json}")
    p.add_argument("--n", type=int, default=500, help="images (default 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="results path without suffix")
    args = p.parse_args(argv)
    rec = run(args, argv)
    stem = bc.results_stem(f"inpainting_{args.name}", False, args.out)
    json_path, md_path = bc.write_results(stem, rec, markdown(rec))
    bc.say(f"wrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
