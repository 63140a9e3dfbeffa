"""``cvae outliers``: every image of a store scored and ranked; the most unusual flagged and shown."""

import click

from ._common import echo_json, library_errors, output_file, report_sheets, sheet_options, write_csv


@click.command("outliers")
@click.argument("store", metavar="STORE.h5")
@click.option("-o", "--output", "out", default=None, metavar="OUTLIERS.csv",
              help="Write one row per image: key, each score, mean_rank, rank, is_outlier.")
@click.option("--top", default=20, show_default=True, type=int,
              help="Most unusual images listed (and shown with --sheets) with their nearest normal images.")
@click.option("--rate", default=0.01, show_default=True, type=float,
              help="Share of images flagged as outliers, in (0, 1): the ceil(rate x rows) best-ranked.")
@click.option("--k", "k", default=5, show_default=True, type=int,
              help="Neighbours of the leave-one-out k-NN distance.")
@click.option("--neighbours", default=6, show_default=True, type=int,
              help="Nearest normal images shown beside each of the --top.")
@sheet_options("the --top images beside their nearest normal images")
@click.option("--json", "as_json", is_flag=True, help="Print the settings and the --top images as JSON.")
@library_errors
def outliers(store, out, top, rate, k, neighbours, sheets, source, data_dir, as_json):
    """Score every image of STORE.h5 against all the others and rank them, without labels.

    Scores: the mean distance in μ to the k nearest other images
    (leave-one-out), the Mahalanobis distance (Ledoit-Wolf covariance) and,
    when the store holds them (`cvae extract --scores`), the reconstruction
    error and negative ELBO. The rank is by the mean of the per-score ranks;
    the ceil(--rate x rows) best-ranked images are flagged. An incomplete store
    is refused: finish it with `cvae extract ... --resume` first. --sheets
    reads the images back from the store's source; if that is gone, the
    command stops before any work (pass --source with their new place).
    """
    from cvae_features.outliers import outlier_store

    out = output_file(out)
    result = outlier_store(store, k=k, rate=rate, top=top, n_neighbours=neighbours, sheets=sheets, source=source,
                           data_dir=data_dir)
    if out is not None:
        write_csv(result.frame, out)
    if as_json:
        echo_json(dict(result.to_dict(), csv=None if out is None else str(out)))
        return
    click.echo(f"{store}: {result.n_rows:,} images scored by {', '.join(result.scores)} (k={result.k}); "
               f"{result.n_flagged} flagged at rate {result.rate:g}")
    f = result.frame.set_index("key")
    for key in result.top[:10]:
        flag = " outlier" if f.at[key, "is_outlier"] else ""
        scores = ", ".join(f"{name} {f.at[key, name]:.4g}" for name in result.scores)
        click.echo(f"  #{int(f.at[key, 'rank'])}{flag}: {key} ({scores})")
    if len(result.top) > 10:
        click.echo(f"  ... {len(result.top) - 10} more with --json or in the CSV")
    if out is not None:
        click.echo(f"wrote {out}")
    if result.sheets is not None:
        report_sheets(result.sheets)
