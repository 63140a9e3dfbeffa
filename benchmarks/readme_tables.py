"""The README's result tables, made from the committed result files (so the numbers are theirs).

    python benchmarks/readme_tables.py            # print every table
    python benchmarks/readme_tables.py --write    # replace the tables in README.md

Each table sits in README.md between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``;
``tests/test_readme.py`` checks that what is there equals what this script makes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as bc  # noqa: E402
from fashion_mnist_m2 import test_table as m2_table  # noqa: E402  (the M2 benchmark's own table)
from fashion_mnist_tuning import CANDIDATES, METRICS, choose, load_records  # noqa: E402  (the tuning rule)
from one_class import SCORES  # noqa: E402  (the one-class benchmark's own column names)
from mutation import COUNTS as MUTATION_COUNTS, tally  # noqa: E402  (the mutation run's own score)
from cvae_features.augment import AUTO, resolve_augment  # noqa: E402

README = bc.ROOT / "README.md"


def _load(name: str) -> dict:
    path = bc.RESULTS / f"{name}.json"
    if not path.exists():
        raise SystemExit(f"{path}: no such results file (run its benchmark first)")
    rec = json.loads(path.read_text())
    if rec.get("arguments", {}).get("quick") or "quick" in rec.get("benchmark", ""):
        raise SystemExit(f"{path}: a --quick run; the README shows full runs only")
    return rec


def _target(value, target, digits=0) -> str:
    if target is None:
        return ""
    if value is None:
        return f"≥ {target:.{digits}f}"
    return f"≥ {target:.{digits}f} ({'met' if 100 * value >= target - 1e-9 else 'missed'})"


def _caption(rec: dict, what: str) -> str:
    m, t = rec["model_config"], rec["train_config"]
    aug = t.get("augment")
    aug_text = "" if aug is None else f", augmentation {aug}"
    if aug == AUTO:  # what "auto" was at the run's image size
        resolved = resolve_augment(aug, int(m.get("image_size", 0)))
        aug_text += f" ({resolved.spec()})" if resolved.active else ""
    return (f"{what}: latent {m['latent_dim']}, β {m['beta']}, {t['epochs']} epochs{aug_text}; wall time "
            f"{rec['wall_s'] / 60:.0f} min; commit `{(rec.get('commit') or '?')[:7]}`.")


def fashion_mnist() -> str:
    rec = _load("fashion_mnist")
    rows = {(r["probe"], r["metric"]): r for r in rec["table"]}
    dim = rec["model_config"]["latent_dim"]

    def cell(r, key):
        std = r.get(key + "_std")
        return bc.pct(r[key]) if std is None else bc.pct_std(r[key], std)

    out = [_caption(rec, "Shipped defaults"), "",
           f"| probe | VAE μ ({dim}) | PCA ({dim}) | raw pixels | anchor (BENCHMARKS.md) | target for VAE μ |",
           "|---|---|---|---|---|---|"]
    for label, key in (("linear", ("linear", "test accuracy")), ("k-NN", ("k-NN", "test accuracy"))):
        r = rows[key]
        out.append(f"| {label} | {cell(r, 'vae')} | {cell(r, 'pca')} | {cell(r, 'raw')} | {r['anchor']} | "
                   f"{_target(r['vae'], r['target'])} |")
    for metric in ("ACC", "NMI"):
        r = rows[("k-means k=10", metric)]
        out.append(f"| k-means {metric} | {cell(r, 'vae')} | {cell(r, 'pca')} | {cell(r, 'raw')} | {r['anchor']} | "
                   f"{_target(r['vae'], r['target'])} |")
    for r in rec["table"]:  # the N2D recipe over seeds (results from before it have no such rows)
        if r["probe"].startswith("UMAP + GMM") and r["metric"] in ("ACC", "NMI"):
            seeds = r["probe"].rsplit(", ", 1)[-1]
            out.append(f"| UMAP + GMM {r['metric']} ({seeds}) | {cell(r, 'vae')} | {cell(r, 'pca')} | {cell(r, 'raw')} "
                       f"| {r['anchor']} | {_target(r['vae'], r['target'])} |")
    for method, label in (("label_spreading", "label spreading"), ("logistic", "logistic regression")):
        key = ("few labels", f"{method} @ 10/class")
        if key not in rows:
            raise SystemExit(f"fashion_mnist.json: no few-label row {key[1]!r} (run with 10 labels per class)")
        r = rows[key]
        out.append(f"| 10 labels per class, {label} | {cell(r, 'vae')} | {cell(r, 'pca')} | {cell(r, 'raw')} | "
                   f"{r['anchor']} | {_target(r['vae'], r['target'], 1)} |")
    return "\n".join(out)


def one_class(name: str) -> str:
    rec = _load(name)
    mean, primary = rec["mean_auroc"], rec["primary_score"]
    out = [_caption(rec, "One VAE per normal class"), "", "| score | mean AUROC |", "|---|---|"]
    for key, (title, family) in SCORES.items():
        label = f"{title} (primary, fixed before the run)" if key == primary else title
        label += " — baseline" if family == "baseline" else ""
        value = bc.pct(mean[key])
        out.append(f"| {label} | {'**' + value + '**' if key == primary else value} |")
    for anchor, value in rec["anchors"].items():
        out.append(f"| {anchor} (anchor) | {value:.1f} |")
    if rec.get("target") is not None:
        out.append(f"| target for the primary score | {_target(mean[primary], rec['target'], 1)} |")
    return "\n".join(out)


def fashion_mnist_tuning() -> str:
    recs = load_records()
    if not recs:
        raise SystemExit("benchmarks/results/fashion_mnist_tuning/: no tuning records "
                         "(run benchmarks/fashion_mnist_tuning.py)")
    recs.sort(key=lambda r: (r["name"] not in CANDIDATES, r["train_config"]["epochs"],
                             -METRICS["linear"](r["validation"])))
    cands, best = choose(recs)
    chosen = best["name"] if best else None
    out = ["| setting | role | latent | β | convs/level, BN | augment | epochs | seed | train min | linear | k-NN "
           "| k-means ACC / NMI | label spreading @10 |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        v, m = r["validation"], r["model_config"]
        km = v["cluster"]["l2"]
        role = ("**chosen**" if r["name"] == chosen else "candidate") if r in cands else "later check"
        out.append(f"| `{r['name']}` | {role} | {m['latent_dim']} | {m['beta']} | {m['convs_per_level']}, "
                   f"{'BN' if m['batch_norm'] else 'no BN'} | {_augment(r)} | {r['train_config']['epochs']} | "
                   f"{r['train_config']['seed']} | "
                   f"{r['train_s'] / 60:.0f} | {bc.pct(v['linear']['accuracy'])} | {bc.pct(v['knn']['accuracy'])} | "
                   f"{bc.pct(km['acc'])} / {bc.pct(km['nmi'])} | {bc.pct(v['fewshot10']['label_spreading']['mean'])} |")
    return "\n".join(out)


def _augment(rec) -> str:
    """A tuning row's input augmentation (rows recorded before it existed had none)."""
    spec = rec["train_config"].get("augment")
    return f"`{spec}`" if spec else "none"


def inpainting(name: str) -> str:
    rec = _load(name)
    out = [f"{rec['n_images']} images of `{rec['source'].split(' ')[0]}`; mean squared error of the hidden pixels "
           "(values in [0, 1]), lower is better:", "",
           "| hidden region | grey (no model) | encode/decode rounds | `cvae show` inpainting |", "|---|---|---|---|"]
    out += [f"| {r['mask']} | {r['mse_grey']:.3f} | {r['mse_rounds']:.3f} | {r['mse_inpaint']:.3f} |"
            for r in rec["rows"]]
    return "\n".join(out)


def _met(flag) -> str:
    return "met" if flag else "missed"


def train_speed() -> str:
    rec = _load("train_speed")
    st = rec["setup"]
    return (f"- **Training** (latent {st['model_config']['latent_dim']}, batch {st['batch_size']}, {st['n_images']:,} "
            f"images, {st['rounds']} rounds; commit `{(rec.get('commit') or '?')[:7]}`): `cvae train`'s loop runs at a "
            f"median **{rec['median_ratio']:.3f}×** the images/s of a minimal hand-written PyTorch loop with the same "
            f"model, batch size and in-memory data (target ≥ {rec['target_ratio']}: {_met(rec['target_met'])}); final "
            f"losses differ by {100 * rec['final_loss_relative_difference']:.1f}%.")


def extract_speed() -> str:
    rec = _load("extract_speed")
    ips, lim, r, cfg = rec["images_per_s"]["median"], rec["limit"], rec["ratios"], rec["config"]
    tm = rec["targets_met"]
    met = [tm["end to end >= 0.8 x min(decode, encoder)"], tm["end to end >= 3 x reference loop"],
           tm["peak memory for 5x files within 10%"]]
    cores = rec["machine"]["cpu_count"]
    return (f"- **Extraction** ({cfg['n_files']:,} Fashion-MNIST PNGs, latent {cfg['model']['latent_dim']}, "
            f"{cfg['repetitions']} repetitions; commit `{(rec.get('commit') or '?')[:7]}`): `extract()` runs at "
            f"{ips['extract_library']:,.0f} images/s, **{r['library_of_reference']:.2f}×** a plain PIL + "
            f"`DataLoader(num_workers=0)` loop (target 3×: {_met(met[1])}) and {r['library_of_limit']:.2f} of the "
            f"slower of decoding alone ({lim['decode']:,.0f}/s) and the encoder alone ({lim['encoder']:,.0f}/s) "
            f"(target 0.8: {_met(met[0])}). On {cores} cores decoding and encoding share the same cores, so no pipeline "
            f"can pass 1/(1/{lim['decode']:,.0f} + 1/{lim['encoder']:,.0f}) = {lim['shared_cores']:,.0f} images/s; "
            f"extraction reaches {r['library_of_shared_cores']:.2f} of that. Peak memory for "
            f"{cfg['big_files']:,} files is ×{r['pss_big_over_small']:.3f} that for {cfg['n_files']:,} "
            f"(target within 10%: {_met(met[2])}).")


def probe_speed() -> str:
    rec = _load("probe_speed")
    old, new, knn = rec["linear"]["lbfgs"], rec["linear"]["auto"], rec["knn"]
    return (f"- **Probes on wide features** ({rec['n_train']:,} training and {rec['n_test']:,} test rows of "
            f"{rec['columns']:,} columns: Fashion-MNIST at {rec['size']} px, tinted RGB; commit "
            f"`{(rec.get('commit') or '?')[:7]}`): the linear and k-NN probes take {new['wall_s'] + knn['wall_s']:,.0f} s, "
            f"**{rec['speedup']:.1f}×** faster than with scikit-learn's lbfgs ({old['wall_s'] + knn['wall_s']:,.0f} s; "
            f"target 4×: {_met(rec['speedup'] >= 4)}); the linear probe alone {rec['linear_speedup']:.1f}×, "
            f"choosing {new['preprocessing']} C={new['C']:g} as before ({old['preprocessing']} C={old['C']:g}; "
            f"the same choice: {'yes' if rec['same_choice'] else 'no'}), test accuracy {100 * new['accuracy']:.2f} "
            f"against {100 * old['accuracy']:.2f}.")


def demo() -> str:
    rec = _load("demo")
    rows = {(r["store"], r["probe"], r["metric"]): r for r in rec["report"]["summary"]}  # = results.csv
    dim = rec["model_config"]["latent_dim"]
    n_test = rec["report"]["meta"]["runs"]["vae"]["n_test"]

    def cell(probe, metric, fmt="{:.3f}"):
        out = []
        for store in ("vae", "raw"):
            r = rows.get((store, probe, metric))
            if r is None:
                raise SystemExit(f"demo.json: no {store} {probe} {metric} row")
            text = fmt.format(r["value"])
            out.append(text if r["std"] is None else f"{text} ± {r['std']:.3f}")
        return out

    table = [("linear accuracy", cell("linear", "accuracy")),
             ("k-NN accuracy", cell("knn", "accuracy")),
             ("k-means ACC / NMI", [f"{a} / {b}" for a, b in zip(cell("cluster", "kmeans_acc"),
                                                                  cell("cluster", "kmeans_nmi"))]),
             ("label spreading, 10 labels per class (5 seeds)", cell("fewshot", "label_spreading@10")),
             ("one-class mean AUROC (latent k-NN distance)", cell("one_class", "knn_mean_auroc"))]
    out = [f"`cvae demo` took {rec['wall_s']:.0f} s here ({rec['machine']['cpu_count']} CPU cores; commit `{(rec.get('commit') or '?')[:7]}`). "
           f"Some of the rows it printed (test split, {n_test} images):", "",
           f"| probe | VAE μ ({dim}) | raw pixels |", "|---|---|---|"]
    out += [f"| {label} | {vae} | {raw} |" for label, (vae, raw) in table]
    return "\n".join(out)


def copy_detection() -> str:
    rec = _load("copy_detection")
    a, dim, r = rec["arguments"], rec["model_config"]["latent_dim"], rec["recall"]
    d, ix = rec["duplicates_at_default"], rec["index"]
    probe = next(row for row in ix["nprobe"] if row["nprobe"] == rec["default_nprobe"])
    tr = rec["training"]
    training = "" if a["trained_here"] else f" plus {tr['seconds'] / 60:.0f} min of training in an earlier run"
    out = [f"{a['n_originals']:,} `fashion-mnist:test` originals, one altered copy each per alteration; a VAE "
           f"(latent {dim}) trained for {tr['epochs']} epochs without labels; wall time {rec['wall_s'] / 60:.0f} min"
           f"{training}; commit `{(rec.get('commit') or '?')[:7]}`.", "",
           f"| copy detection, recall@1 / @10 (%) | VAE μ ({dim}) | PCA ({dim}) | raw pixels |", "|---|---|---|---|"]
    for alt in list(rec["alterations"]) + ["all"]:
        out.append(f"| {alt if alt != 'all' else 'all five'} | " + " | ".join(
            f"{bc.pct(r[k][alt]['recall@1'])} / {bc.pct(r[k][alt]['recall@10'])}" for k in ("vae", "pca", "raw")) + " |")
    out.append(f"| `duplicates` at {rec['default_threshold']}: pairwise precision / recall | " + " | ".join(
        f"{bc.pct(d[k]['precision'])} / {bc.pct(d[k]['recall'])}" for k in ("vae", "pca", "raw")) + " |")
    out += ["", f"Approximate index on {ix['n_vectors']:,} vectors of width {ix['dim']} (tiled μ plus noise): built in "
            f"{ix['build_s']:.0f} s, {ix['index_bytes'] / 2**20:,.0f} MiB; at the default nprobe {rec['default_nprobe']} "
            f"recall@10 against exact search {probe['recall@10']:.3f} at {probe['queries_per_s']:,.0f} queries/s "
            f"(exact: {ix['exact_queries_per_s']:,.0f} queries/s)."]
    return "\n".join(out)


def fashion_mnist_m2() -> str:
    rec = _load("fashion_mnist_m2")
    chosen = rec["settings"]["chosen"]
    kept = next(g for g in rec["settings"]["grid"] if g["config"] == chosen)
    out = [f"Seeds {', '.join(map(str, rec['curves']['vae']['seeds']))}; M2 settings kept on validation "
           f"({', '.join(f'{k}={v}' for k, v in kept['change'].items()) or 'defaults'}: validation "
           f"{bc.pct(kept['val_accuracy'])}, label spreading {bc.pct(rec['settings']['references']['label_spreading']['val_accuracy'])}); "
           f"wall time {rec['wall_s'] / 60:.0f} min; commit `{(rec.get('commit') or '?')[:7]}`.", ""]
    return "\n".join(out + bc.md_table(*m2_table(rec)))


def fashion_mnist_vade() -> str:
    from fashion_mnist_vade import METRICS as VADE_METRICS, NAMES as VADE_NAMES

    rec = _load("fashion_mnist_vade")
    s, m = rec["summary"], rec["seeds"][0]["model_config"]
    out = [f"conv-vade, latent {m['latent_dim']}, β {m['beta']}, {m['n_clusters']} components (fixed in advance), "
           f"{rec['seeds'][0]['training']['epochs_run']} epochs, {len(rec['seeds'])} seeds; test rows, % "
           f"(mean ± std); wall time {rec['wall_s'] / 60:.0f} min; commit `{(rec.get('commit') or '?')[:7]}`.", ""]
    rows = [[VADE_NAMES[meth]] + [bc.pct_std(v[k]["mean"], v[k]["std"]) for k in VADE_METRICS]
            for meth, v in s["test"].items()]
    return "\n".join(out + bc.md_table(["method (on the conv-vade model's μ)", "ACC", "NMI", "ARI"], rows))


def mutation() -> str:
    rec = _load("mutation")
    groups = rec["groups"]
    total = Counter()
    for g in groups.values():
        total.update({k: g[k] for k in MUTATION_COUNTS})
    t = tally(total)
    out = [f"{len(groups)} groups, {total['generated']:,} mutants: {t['caught']:,} killed by the tests, "
           f"{total['equivalent']:,} equivalent (reason recorded for each), {t['alive']:,} alive; "
           f"**{100 * t['score']:.1f} %** "
           f"of the non-equivalent mutants killed (target ≥ {100 * rec['target']:.0f} %). mutmut "
           f"{rec['mutmut_version']}; last run at commit `{(rec.get('commit') or '?')[:7]}`.", ""]
    rows = [[name, ", ".join(f"`{Path(f).name}`" for f in g["per_file"]), f"{g['generated']:,}",
             f"{tally(g)['caught']:,}", f"{g['equivalent']:,}", f"{tally(g)['alive']:,}",
             f"{100 * g['score']:.1f}" if g["score"] is not None else ""]
            for name, g in groups.items()]
    return "\n".join(out + bc.md_table(["group", "modules", "mutants", "killed", "equivalent", "alive", "score %"],
                                       rows))


TABLES = {
    "copy_detection": copy_detection,
    "demo": demo,
    "fashion_mnist": fashion_mnist,
    "fashion_mnist_tuning": fashion_mnist_tuning,
    "fashion_mnist_m2": fashion_mnist_m2,
    "fashion_mnist_vade": fashion_mnist_vade,
    "inpainting_fashion_mnist": lambda: inpainting("inpainting_fashion_mnist"),
    "one_class_fashion_mnist": lambda: one_class("one_class_fashion_mnist"),
    "one_class_digits": lambda: one_class("one_class_digits"),
    "train_speed": train_speed,
    "extract_speed": extract_speed,
    "probe_speed": probe_speed,
    "mutation": mutation,
}


def block(name: str, body: str) -> str:
    return f"<!-- results:{name} -->\n{body}\n<!-- /results:{name} -->"


def find_block(text: str, name: str):
    m = re.search(rf"<!-- results:{re.escape(name)} -->\n.*?\n<!-- /results:{re.escape(name)} -->", text, re.S)
    return m


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="replace the tables in README.md")
    args = p.parse_args(argv)
    text = README.read_text()
    for name, make in TABLES.items():
        new = block(name, make())
        if not args.write:
            print(new + "\n")
            continue
        m = find_block(text, name)
        if m is None:
            bc.say(f"README.md has no <!-- results:{name} --> block; not written")
            continue
        text = text[:m.start()] + new + text[m.end():]
    if args.write:
        README.write_text(text)
        bc.say("README.md tables written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
