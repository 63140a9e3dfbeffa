"""Helpers shared by the commands: library errors become one clean line, JSON output."""

from __future__ import annotations

import functools
import os
import sys
import time

import click

from cvae_features.errors import CvaeError, LostProcessError


#: set by ``cvae train --nproc`` for the processes it starts; LOST_EXIT: the exit status of one that lost the
#: others (the launcher then names the process that was stopped)
LAUNCHED, LOST_EXIT = "CVAE_NPROC_LAUNCHER", 75


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
            if isinstance(err, LostProcessError):  # every survivor says it (rank 0 may be the one that is gone)
                if os.environ.get(LAUNCHED):
                    sys.exit(LOST_EXIT)  # `cvae train --nproc` reports which process was stopped, in one line
            elif os.environ.get("RANK", "0") != "0":  # one process of a data-parallel run: rank 0 says it
                time.sleep(2.0)  # every process meets the same error at once; the launcher stops the others
                sys.exit(1)      # when the first one exits, so give rank 0 the time to print it
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


def output_file(path):
    """``path`` for a file to write after the work, refused at once (one line) when its folder is missing."""
    from pathlib import Path

    if path is None:
        return None
    path = Path(path)
    if not path.parent.is_dir():
        raise click.ClickException(f"cannot write {path}: folder {path.parent} does not exist (create it first)")
    if path.is_dir():
        raise click.ClickException(f"cannot write {path}: it is a folder; expected a file name such as out.csv")
    return path


def write_csv(frame, path) -> None:
    """A result table as CSV (keys that are not valid UTF-8 are written escaped, never refused)."""
    frame.to_csv(path, index=False, errors="backslashreplace")


def report_sheets(sheets) -> None:
    """Say what ``write_sheets`` wrote, and warn (stderr) about images that could not be read back."""
    click.echo(f"wrote {len(sheets.files)} contact sheet(s) and {sheets.index.name} to {sheets.out_dir}/")
    if sheets.missing:
        click.echo(f"warning: {len(sheets.missing)} image(s) could not be read back and are blank "
                   f"(e.g. {next(iter(sheets.missing))}: {next(iter(sheets.missing.values()))})", err=True)


def sheet_options(what: str):
    """``--sheets DIR`` (contact sheets of ``what``), ``--source`` (where moved images are now) and ``--data-dir``."""
    def decorate(func):
        for option in reversed((
            click.option("--sheets", "sheets", default=None, type=click.Path(file_okay=False), metavar="DIR",
                         help=f"Write PNG contact sheets of {what} and index.html here (created)."),
            click.option("--source", default=None,
                         help="With --sheets: where the store's images are now, if they moved since the extraction."),
            click.option("--data-dir", default=None, type=click.Path(file_okay=False),
                         help="Where built-in data sets (fashion-mnist, mnist, cifar10) are stored."))):
            func = option(func)
        return func
    return decorate
