"""``cvae extract SOURCE -o STORE.h5`` and ``cvae info STORE``: parse options, call the library, print."""

from __future__ import annotations

import click

from ._common import echo_json, library_errors

_SHOWN_SKIPPED = 5
_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _one_line(text) -> str:
    """``text`` on one printable line: backslash, newline, CR and tab as ``\\\\ \\n \\r \\t``, any other
    unprintable character (control, undecodable file-name byte) as ``\\xNN`` / ``\\uNNNN``, like ``repr``."""
    text = str(text)
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(_ESCAPES.get(c) or (c if c.isprintable() else repr(c)[1:-1]) for c in text)


def _skip_line(key, reason) -> str:
    return f"  skipped {_one_line(key)}: {_one_line(reason)}"


def _count(n: int, one: str, many: str = "") -> str:
    return f"{n:,} {one if n == 1 else (many or one + 's')}"


def _duration(seconds: float) -> str:
    if seconds != seconds:  # NaN: no estimate
        return "unknown time"
    if seconds < 90:
        return f"about {max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"


def _announce_training(plan) -> None:
    m, t = plan.model_config, plan.train_config
    epochs = f"{t.epochs} epoch{'s' * (t.epochs != 1)}"
    click.echo(f"no --model given: training a VAE first (latent {m.latent_dim}, {epochs}, input "
               f"{m.image_size}x{m.image_size}x{m.channels}) on the {plan.n_images:,} listed images (those that cannot be "
               f"decoded are left out) into {plan.run_dir}/ "
               f"({_duration(plan.estimated_seconds)}; --model RUN_DIR reuses a trained model, --epochs N "
               "changes the length)", err=True)


@click.command("extract")
@click.argument("source")
@click.option("-o", "--output", "store", required=True, type=click.Path(dir_okay=False),
              help="The feature store to write (.h5).")
@click.option("--model", default=None, metavar="PATH",
              help="A run directory, model file or store carrying a model (vae); a raw/pca store whose "
                   "preprocessing and basis to reuse (raw, pca). Default: train a VAE on SOURCE first.")
@click.option("--features", metavar="KIND", default=None,
              help="A registered feature kind. vae (default): the VAE's posterior mean; raw: resized pixels in "
                   "[0, 1]; pca: their PCA.")
@click.option("--dim", type=int, default=None,
              help="pca: number of components; vae: latent width of the auto-trained model (default 256).")
@click.option("--epochs", type=int, default=None,
              help="Epochs of the auto-trained model (default: as many images seen as the default epochs on 60k images, 5 to 60 epochs).")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Images per batch.")
@click.option("--workers", type=int, default=None,
              help="Decoding processes (default: one per core); with --engine ray, actors.")
@click.option("--resume", is_flag=True, help="Finish an interrupted store (same model).")
@click.option("--update", is_flag=True, help="Add the images of SOURCE that the store does not hold yet.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store.")
@click.option("--shard", default=None, metavar="I/N",
              help="Only the keys of shard I (from 0) of N, chosen by a hash of each key (stable when the folder "
                   "is listed again); needs --model. Run the N shards anywhere (a job array), each resumable.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: worker processes on this machine; ray: a Ray Data actor pool (pip install "
                   "\"cvae-features[ray]\"), --workers N actors (default one per CPU of the cluster). This process "
                   "writes the store either way, the same store.")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="With --engine ray: the Ray cluster's head, HOST:PORT (GCS port, 6379 by default) or auto. "
                   "Default: RAY_ADDRESS, a Ray started on this machine with ray start, else a local Ray for this run.")
@click.option("--max-bad", type=int, default=None, metavar="N",
              help="Stop once more than N files could not be decoded (rows written are kept).")
@click.option("--compression", type=click.Choice(["gzip", "lzf", "none"]), default="none", show_default=True,
              help="Compression of the per-row datasets.")
@click.option("--scores", is_flag=True,
              help="vae: also store the per-image reconstruction error and negative ELBO (anomaly scores; "
                   "costs a decoder pass, several times the encoder).")
@click.option("--logvar", is_flag=True, help="vae: also store the posterior log-variance.")
@click.option("--with-weights", is_flag=True,
              help="Carry the model weights in the store even when --model was given.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--data-dir", type=click.Path(), default=None, help="Where built-in data sets are looked for.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@library_errors(interrupted="interrupted: the rows written so far are kept; rerun the same command with --resume "
                             "to finish (an interrupted training goes on from its last checkpoint)")
def extract_command(source, store, model, features, dim, epochs, batch_size, workers, resume, update, overwrite,
                    shard, engine, ray_address, max_bad, compression, scores, logvar, with_weights, device, data_dir,
                    no_progress, as_json):
    """Write features of every image in SOURCE (a folder, a .csv manifest or a data set such as digits) to STORE."""
    from cvae_features.extraction import extract

    result = extract(
        source, store, model=model, features=features, dim=dim,
        train_config={"epochs": epochs} if epochs is not None else None, batch_size=batch_size, workers=workers,
        resume=resume, update=update, overwrite=overwrite, max_bad=max_bad, compression=compression,
        scores=scores, logvar=logvar, carry_weights=True if with_weights else None, device=device,
        data_dir=data_dir, progress=not no_progress, on_training=_announce_training, shard=shard,
        engine=engine, ray_address=ray_address)
    if as_json:
        echo_json(result.to_dict())
        return
    trained = f" (model trained on {result.n_train_images:,} images in {result.train_seconds:.0f} s, kept in the " \
        f"store; run dir {result.run_dir})" if result.trained else ""
    click.echo(f"{result.n_new:,} rows written ({result.n_rows:,} in store, dim {result.dim}, {result.feature_kind}), "
               f"{result.n_new_skipped:,} skipped, {result.images_per_s:,.0f} images/s -> {result.path}{trained}")
    if result.n_changed:
        click.echo(f"  {_count(result.n_changed, 'changed file')} re-extracted (size or modification time differ "
                   "from when they were extracted)")
    if result.n_removed:
        click.echo(f"  {_count(result.n_removed, 'row whose file is gone', 'rows whose files are gone')} from "
                   "the source: kept in the store")
    if result.n_new_skipped:
        for key, reason in result.skipped[:_SHOWN_SKIPPED]:
            click.echo(_skip_line(key, reason))
        more = result.n_new_skipped - min(len(result.skipped), _SHOWN_SKIPPED)
        if more > 0:
            click.echo(f"  ... and {more:,} more (cvae info {result.path} --skipped lists them all)")
    if not result.complete:
        click.echo(f"incomplete: rerun with --resume to finish {result.path}")


@click.command("info")
@click.argument("store", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option("--skipped", "list_skipped", is_flag=True, help="List every skipped file with its reason.")
@library_errors
def info_command(store, as_json, list_skipped):
    """Describe a feature store: rows, width, feature kind, labels, model, preprocessing, completeness."""
    from cvae_features.store import FeatureStore

    with FeatureStore(store) as s:
        summary = s.summary()
        skipped = s.skipped if list_skipped else None
    if as_json:
        if skipped is not None:
            summary["skipped"] = skipped.values.tolist()
        echo_json(summary)
        return
    click.echo(f"{summary['path']}: cvae feature store, format {summary['format_version']}, written by "
               f"cvae-features {summary['tool_version']} ({summary['created']}, updated {summary['updated']})")
    click.echo(f"source:      {summary['source']}")
    plan = summary["plan"]
    state = "complete" if summary["complete"] else \
        f"INCOMPLETE: {plan['pending']:,} images pending (finish with: cvae extract SOURCE -o {store} --resume)"
    click.echo(f"rows:        {summary['n_rows']:,} x {summary['dim']} ({summary['feature_kind']} features), {state}")
    if summary["has_labels"]:
        counts = ", ".join(f"{name} ({n:,})" for name, n in summary["label_counts"].items())
        click.echo(f"labels:      {len(summary['label_names'])} classes: {counts}")
    else:
        click.echo("labels:      none")
    click.echo(f"skipped:     {summary['n_skipped']:,} files" +
               ("" if list_skipped or not summary["n_skipped"] else " (--skipped lists them)"))
    if summary["extras"]:
        click.echo(f"extras:      {', '.join(summary['extras'])}")
    cfg = summary["model_config"]
    if summary["feature_kind"] == "vae" and cfg:
        carried = "weights carried (usable as --model)" if summary["has_model"] else "fingerprint only"
        click.echo(f"model:       {summary['model_fingerprint']}: latent {cfg['latent_dim']}, input "
                   f"{cfg['image_size']}x{cfg['image_size']}x{cfg['channels']}, {cfg['likelihood']}, "
                   f"beta {cfg['beta']}; {carried}")
    elif summary["feature_kind"] == "pca":
        click.echo(f"model:       pca basis {summary['model_fingerprint']} (usable as --model for new data)")
    pre = summary["preprocess"]
    click.echo(f"preprocess:  {pre['size']}x{pre['size']}, {pre['channels']} channel(s), resize {pre['resize']}")
    click.echo(f"compression: {summary['compression']}")
    joined = summary["joined"]
    if joined:
        how = "copied from" if joined["mode"] == "copy" else "virtual over (keep them beside it)"
        shown = ", ".join(joined["parts"][:3]) + (f" and {len(joined['parts']) - 3} more" if len(joined["parts"]) > 3
                                                  else "")
        click.echo(f"joined:      {len(joined['parts'])} parts, {how}: {shown}")
    if skipped is not None:
        for key, reason in skipped.values.tolist():
            click.echo(_skip_line(key, reason))
