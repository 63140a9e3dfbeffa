"""The ``cvae`` command line (installed as the package ``cvae_cli``)."""
