"""``cvae join OUT.h5 PART.h5...``: parse options, call the library, print."""

from __future__ import annotations

import click

from ._common import echo_json, library_errors


@click.command("join")
@click.argument("out", type=click.Path(dir_okay=False))
@click.argument("parts", nargs=-1, required=True, type=click.Path())
@click.option("--copy", is_flag=True,
              help="Write a self-contained store (rows copied) instead of virtual datasets over the parts.")
@click.option("--overwrite", is_flag=True, help="Replace OUT when it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@library_errors(interrupted="interrupted: nothing was written (OUT is moved into place only when complete)")
def join_command(out, parts, copy, overwrite, as_json):
    """Join the stores PARTS (files, or folders of .h5 stores), usually the shards of one extraction
    (cvae extract --shard I/N), into OUT: one store for every reader.

    By default OUT holds HDF5 virtual datasets over the parts (nothing is copied; keep the parts, at the same
    place relative to OUT); --copy makes a self-contained file. Refused: parts of another model, feature kind,
    width or preprocessing, a shard missing or given twice, keys in two parts, incomplete parts.
    """
    from cvae_features.join import join_stores

    result = join_stores(out, parts, copy=copy, overwrite=overwrite)
    if as_json:
        echo_json(result.to_dict())
        return
    how = "rows copied" if result.mode == "copy" else "virtual datasets over the parts; keep them beside it"
    click.echo(f"joined {len(result.parts)} stores: {result.n_rows:,} rows, {result.n_skipped:,} skipped files "
               f"-> {result.path} ({how})")
