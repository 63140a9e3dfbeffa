"""The ``cvae`` command group. Each command lives in its own module and only parses and delegates."""

import click

from cvae_features._version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cvae")
def cli():
    """Unsupervised image features from a convolutional VAE.

    Train a VAE on a folder of images, extract embeddings to an HDF5 feature
    store and measure them with scikit-learn probes.
    """


# Commands register below, one module each.
