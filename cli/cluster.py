"""``cvae cluster``: a group for every image of a store, exemplars, and contact sheets of the groups."""

import click

from ._common import echo_json, library_errors, output_file, report_sheets, sheet_options, write_csv


@click.command("cluster")
@click.argument("store", metavar="STORE.h5")
@click.option("-o", "--output", "out", default=None, metavar="GROUPS.csv",
              help="Write one row per image: key, cluster, distance (to the group's centre), exemplar.")
@click.option("--k", "k", default=None, type=int,
              help="Number of groups (2 .. rows/2). Default: chosen by the silhouette over 2..--max-k.")
@click.option("--max-k", "max_k", default=12, show_default=True, type=int,
              help="Largest number of groups tried when --k is not given.")
@click.option("--method", default="kmeans", show_default=True, type=click.Choice(["kmeans", "gmm"]),
              help="k-means or a diagonal Gaussian mixture (the cluster probe's settings).")
@click.option("--preprocessing", default="l2", show_default=True, type=click.Choice(["l2", "standardize", "none"]),
              help="l2: centre and scale rows to unit norm (cosine geometry, as the cluster probe); a group "
                   "sitting at the data's centre can scatter under it, then try none.")
@sheet_options("each group (exemplars first)")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seeds the clustering, the sample the silhouette is computed on and the sheets' samples.")
@click.option("--json", "as_json", is_flag=True, help="Print the groups, sizes, exemplars and criterion as JSON.")
@library_errors
def cluster(store, out, k, max_k, method, preprocessing, sheets, source, data_dir, seed, as_json):
    """Put every image of STORE.h5 in a group, without labels.

    The features are clustered as by the cluster probe (centred, unit norm;
    k-means or a diagonal GMM). The number of groups is --k or, without it,
    the k in 2..--max-k with the largest silhouette on a seeded sample of up
    to 2,000 rows (every value is printed with --json). An incomplete store
    is refused: finish it with `cvae extract ... --resume` first. --sheets
    reads the images back from the store's source; if that is gone, the
    command stops before any work (pass --source with their new place).
    """
    from cvae_features.groups import group_store

    out = output_file(out)
    result = group_store(store, k=k, method=method, k_range=(2, max_k), preprocessing=preprocessing, sheets=sheets, source=source,
                         data_dir=data_dir, seed=seed)
    if out is not None:
        write_csv(result.frame, out)
    if as_json:
        echo_json(dict(result.to_dict(), csv=None if out is None else str(out)))
        return
    if result.criterion:
        values = {kk: v for kk, v in result.criterion["values"].items() if v is not None}
        runner_up = max((kk for kk in values if kk != result.k), key=lambda kk: values[kk], default=None)
        how = (f"k chosen by the silhouette over {result.criterion['k_range'][0]}..{result.criterion['k_range'][1]} "
               f"on {result.criterion['rows']:,} rows: {values[result.k]:.3f}")
        if runner_up is not None:
            how += f", next best k={runner_up}: {values[runner_up]:.3f}"
    else:
        how = "k as given"
    empty = sum(1 for size in result.sizes if size == 0)
    note = (f"; {empty} of them empty: the {result.method} put no image there, try kmeans or a smaller --k"
            if empty else "")
    click.echo(f"{store}: {result.n_rows:,} images in {result.k} groups ({result.method}; {how}{note})")
    exemplars = result.exemplars()
    for c, size in enumerate(result.sizes):
        click.echo(f"  group {c}: {size:,} image(s); closest to the centre: {', '.join(exemplars.get(c, [])[:3])}")
    if out is not None:
        click.echo(f"wrote {out}")
    if result.sheets is not None:
        report_sheets(result.sheets)

