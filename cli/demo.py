"""``cvae demo``: the whole pipeline on the embedded ``digits`` data set."""

import click

from ._common import echo_json, library_errors


@click.command("demo")
@click.option("-o", "--output", "out_dir", default="cvae-demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the model, the stores, the report and the model views (replaced if it exists).")
@click.option("--epochs", default=None, type=click.IntRange(min=1), help="Training epochs (default: the demo's).")
@click.option("--seeds", default=5, show_default=True, type=click.IntRange(1, 100),
              help="Few-label draws per labels-per-class value.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print paths, notes and timings as JSON after the table.")
@library_errors
def demo(out_dir, epochs, seeds, no_progress, as_json):
    """Train, extract, probe and report on digits, VAE features beside raw pixels (about a minute on a CPU)."""
    import dataclasses

    from cvae_features.demo import DEMO_TRAINING, run_demo

    train_config = DEMO_TRAINING if epochs is None else dataclasses.replace(DEMO_TRAINING, epochs=epochs)
    result = run_demo(out_dir, train_config=train_config, seeds=seeds, progress=not no_progress,
                      on_step=lambda message: click.echo(f"• {message}", err=True))
    click.echo(result.table)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"report: {result.report_dir}/   model views: {result.show_dir}/index.html", err=True)
    if as_json:
        echo_json(result.to_dict())
