"""The ``cvae`` command group. Each command lives in its own module and only parses and delegates."""

import click

from cvae_features._version import __version__

from .cluster import cluster
from .demo import demo
from .extract import extract_command, info_command
from .join import join_command
from .neighbors import duplicates_command, neighbors_command
from .outliers import outliers
from .probe import probe
from .show import show
from .train import train_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cvae")
def cli():
    """Unsupervised image features from a convolutional VAE.

    Train a VAE on a folder of images, extract embeddings to an HDF5 feature
    store and measure them with scikit-learn probes.
    """


for _command in (train_command, extract_command, join_command, info_command, probe, cluster, outliers, neighbors_command,
                 duplicates_command, show, demo):
    cli.add_command(_command)


if __name__ == "__main__":  # python -m cvae_cli.main
    cli()
