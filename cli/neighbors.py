"""``cvae neighbors`` (similar images) and ``cvae duplicates`` (near-identical groups) over a feature store."""

import click

from ._common import echo_json, library_errors
from .extract import _one_line

_SEARCH = click.Choice(["auto", "exact", "approximate"])
_SEARCH_HELP = ("exact (blocked matrix products) or approximate (a faiss index kept beside the store as "
                "STORE.index, built on first use; needs cvae-features[index]); auto: exact up to 50,000 rows.")
_NPROBE_HELP = "Lists the approximate index probes per query (more: slower, closer to exact). Default: 16."
_REBUILD_HELP = "Refuse an index that no longer matches the store instead of rebuilding it."


def _notes(notes) -> None:
    for note in notes:
        click.echo(f"note: {note}", err=True)


@click.command("neighbors")
@click.argument("store", metavar="STORE.h5")
@click.argument("queries", nargs=-1, required=True, metavar="QUERY...")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(min=1),
              help="Neighbours per query (more than the store holds: all of them, with a note).")
@click.option("--model", default=None, metavar="RUN_DIR|MODEL|STORE",
              help="The model that wrote STORE, to embed image files when STORE carries no weights "
                   "(it must have the store's fingerprint).")
@click.option("--search", default="auto", show_default=True, type=_SEARCH, help=_SEARCH_HELP)
@click.option("--nprobe", default=None, type=click.IntRange(min=1), help=_NPROBE_HELP)
@click.option("--no-rebuild", "no_rebuild", is_flag=True, help=_REBUILD_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the neighbours as JSON.")
@library_errors
def neighbors_command(store, queries, k, model, search, nprobe, no_rebuild, as_json):
    """The images of STORE.h5 most similar to each QUERY.

    A QUERY is a key of the store (as `cvae info` and the probes name rows;
    its own row is left out) or an image file, embedded with the store's own
    featurizer. Distance: cosine distance 1 - cos between feature rows (0 =
    same direction; identical images give 0).
    """
    from cvae_features.neighbors import store_neighbors

    result = store_neighbors(store, queries, k, model=model, search=search, nprobe=nprobe, rebuild=not no_rebuild)
    _notes(result.notes)
    if as_json:
        echo_json(result.to_dict())
        return
    click.echo(f"{result.k} nearest by cosine distance ({result.search} search)")
    for q in result.queries:
        click.echo(f"{_one_line(q['query'])} ({'key in the store' if q['kind'] == 'key' else 'image file'}):")
        rows = result.table[result.table["query"] == q["query"]]
        for rank, key, distance in zip(rows["rank"], rows["key"], rows["distance"]):
            click.echo(f"  {rank:>4}  {distance:.4f}  {_one_line(key)}")


@click.command("duplicates")
@click.argument("store", metavar="STORE.h5")
@click.option("--threshold", default=None, type=click.FloatRange(0, 2),
              help="Cosine distance under which two images are duplicates. Default: 0.01 (chosen on "
                   "Fashion-MNIST altered copies: benchmarks/results/copy_detection.md).")
@click.option("-o", "--output", "out_csv", default=None, type=click.Path(dir_okay=False), metavar="DUPS.csv",
              help="Write the groups as CSV: group, key, row, distance (to the group's first member).")
@click.option("--search", default="auto", show_default=True, type=_SEARCH, help=_SEARCH_HELP)
@click.option("--nprobe", default=None, type=click.IntRange(min=1), help=_NPROBE_HELP)
@click.option("--no-rebuild", "no_rebuild", is_flag=True, help=_REBUILD_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the groups as JSON.")
@library_errors
def duplicates_command(store, threshold, out_csv, search, nprobe, no_rebuild, as_json):
    """Groups of near-identical images in STORE.h5.

    Two images whose cosine distance is at most the threshold are
    duplicates; groups join them transitively (connected components), so a
    member can lie farther than the threshold from the group's first member.
    """
    from cvae_features.neighbors import DEFAULT_THRESHOLD, store_duplicates

    result = store_duplicates(store, DEFAULT_THRESHOLD if threshold is None else threshold, search=search,
                              nprobe=nprobe, rebuild=not no_rebuild)
    _notes(result.notes)
    if out_csv:
        try:
            result.table.to_csv(out_csv, index=False)
        except OSError as err:
            raise click.ClickException(f"cannot write {out_csv}: {err.strerror or err}") from None
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(f"{result.n_groups} groups, {len(result.table)} of {result.n_rows} images, within cosine "
                   f"distance {result.threshold:g} ({result.search} search)")
        if not out_csv:
            for group, key, distance in zip(result.table["group"], result.table["key"], result.table["distance"]):
                click.echo(f"  {group:>5}  {distance:.4f}  {_one_line(key)}")
    if out_csv:
        click.echo(f"wrote {out_csv}", err=as_json)
