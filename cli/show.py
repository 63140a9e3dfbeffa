"""``cvae show``: PNG views of a trained model and an index.html that shows them."""

import click

from ._common import echo_json, library_errors


@click.command("show")
@click.argument("model_path", metavar="RUN_OR_STORE")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder to write the PNG files and index.html into (created).")
@click.option("--source", default=None,
              help="Images to show: a folder, a .csv manifest or a built-in name such as digits:test. "
                   "Default: the source recorded with the run or store.")
@click.option("--n", "n", default=16, show_default=True, type=click.IntRange(2, 256),
              help="Images in the reconstruction grid.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seeds the choice of images and the prior samples.")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False),
              help="Where built-in data sets (fashion-mnist, mnist, cifar10) are stored.")
@click.option("--inpaint-steps", default=100, show_default=True, type=click.IntRange(min=1),
              help="Adam steps on the code in the inpainting view (fewer: faster, a rougher fill).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@library_errors
def show(model_path, out_dir, source, n, seed, data_dir, inpaint_steps, as_json):
    """Look inside a model: reconstructions, prior samples, interpolations,
    latent traversals, inpainting and a 2-D map of the embeddings.

    RUN_OR_STORE is a run directory, a model file or a feature store that
    carries its model. Open OUT/index.html in a browser to see the result.
    """
    from cvae_features.show import show as show_model

    result = show_model(model_path, out_dir, source=source, n=n, seed=seed, data_dir=data_dir,
                        inpaint_steps=inpaint_steps)
    if as_json:
        echo_json(result.to_dict())
        return
    click.echo(f"wrote {len(result.files)} images and index.html to {result.out_dir}/")
    for path in result.files.values():
        click.echo(f"  {path.name}")
    click.echo(f"open {result.index}")
