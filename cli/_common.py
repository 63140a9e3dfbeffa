"""Helpers shared by the commands: library errors become one clean line, JSON output."""

from __future__ import annotations

import functools
import os
import sys

import click

from cvae_features.errors import CvaeError


def library_errors(func=None, *, interrupted: str = "interrupted: stopped before the end; run the command again"):
    """Run a command body; a ``CvaeError`` becomes a one-line message and exit code 1, a Ctrl-C the
    line ``interrupted`` (what is true for that command) and exit code 130.

    Use as ``@library_errors`` or ``@library_errors(interrupted="...")``.
    """
    if func is None:
        return functools.partial(library_errors, interrupted=interrupted)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except CvaeError as err:
            if os.environ.get("RANK", "0") != "0":  # one process of a data-parallel run: rank 0 says it
                sys.exit(1)
            raise click.ClickException(str(err)) from None
        except KeyboardInterrupt:
            click.echo(interrupted, err=True)
            sys.exit(130)

    return wrapper


def echo_json(obj) -> None:
    """Print an object as indented, strict JSON on stdout (the library's one converter: non-finite floats
    become null, numpy values, paths and result records become plain data)."""
    from cvae_features._json import dumps

    click.echo(dumps(obj, indent=2))
