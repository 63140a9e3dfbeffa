"""Opening a source from a user's spec: a folder, a ``.csv`` manifest or a built-in data set.

Its own module so that the sources (:mod:`.sources`) and the built-in data sets
(:mod:`.builtin`, which are array sources) do not import each other.
"""

import os
from pathlib import Path

from ..errors import ConfigError, DataError, SourceNotFoundError
from ._walk import _raise_if_bad_link
from .builtin import BUILTIN_DATASETS, open_builtin
from .sources import FolderSource, ImageSource, ManifestSource


def open_source(spec, data_dir=None, *, download: bool = True, follow_outside: bool = False,
                skip_unreadable: bool = False) -> ImageSource:
    """Open an image source from a folder, a CSV manifest or a built-in name.

    Parameters
    ----------
    spec : str or os.PathLike or ImageSource
        A folder, a ``.csv`` manifest, or a built-in data set name with an
        optional split: ``digits[:train|:test|:all]``,
        ``fashion-mnist[:train|:test]``, ``mnist[...]``, ``cifar10[...]``.
        An :class:`ImageSource` is returned as is.
    data_dir : str or os.PathLike, optional
        Where to look first for a built-in data set's files.
    download : bool, default=True
        Whether a built-in data set missing locally may be fetched through
        torchvision.
    follow_outside, skip_unreadable : bool, default=False
        For a folder: follow symlinks leading outside it; leave out unreadable
        sub-folders instead of raising (see :class:`FolderSource`).

    Returns
    -------
    ImageSource

    Raises
    ------
    SourceNotFoundError
        A path that does not exist, or a built-in data set with no local copy.
    ConfigError
        An unknown built-in name or split.
    DataError
        A folder or manifest with nothing usable, an unreadable sub-folder, a
        broken symlink or a symlink loop.
    """
    if isinstance(spec, ImageSource):
        return spec
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"source {spec!r}: expected a folder, a .csv manifest or a built-in data set name")
    path = Path(spec).expanduser()
    if path.is_dir():
        return FolderSource(spec, follow_outside=follow_outside, skip_unreadable=skip_unreadable)
    _raise_if_bad_link(path, f"source {spec!r}")
    if path.exists():  # a file (or a named pipe, a device: ManifestSource refuses those in one line)
        if path.suffix.lower() == ".csv":
            return ManifestSource(spec)
        raise DataError(f"source {spec!r} is a file; expected a folder of images or a .csv manifest")
    name = spec.split(":", 1)[0].strip().lower()
    if name in BUILTIN_DATASETS:
        return open_builtin(spec, data_dir=data_dir, download=download)
    if "/" in spec or os.sep in spec or path.suffix:
        raise SourceNotFoundError(f"source {spec!r} does not exist (expected a folder of images or a .csv manifest)")
    raise ConfigError(f"source {spec!r} is neither an existing folder or .csv manifest nor a built-in data set; "
                      f"known data sets: {', '.join(BUILTIN_DATASETS)}")


__all__ = ["open_source"]
