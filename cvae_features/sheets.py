"""Images of a store's rows, read back from the store's own source, and contact sheets of them.

A feature store records where its images came from (``source_spec``: an absolute folder or
manifest path, or a built-in name such as ``digits:test``), a key per row (a relative POSIX
path, or ``name:split/00012``) and the preprocessing that turned each file into a model input.
:class:`StoreImages` reopens that source and decodes the rows of given keys exactly as the model
saw them; :func:`write_sheets` lays them out as PNG grids with a static ``index.html`` (relative
links, inline CSS, no scripts), so the folder can be zipped and opened anywhere.
``cvae cluster --sheets`` and ``cvae outliers --sheets`` use it; :mod:`.show` shares the grid
writer and the parsing of recorded sources.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ._version import __version__
from .errors import CvaeError, SourceNotFoundError

PAGE_CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em}p.caption{color:#555;margin:.3em 0 .8em}
img{image-rendering:pixelated;max-width:100%;border:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:.2em .6em;text-align:left}
code{background:#f4f4f4;padding:0 .2em}"""


# ----------------------------------------------------------------------------- the recorded source

def find_key(meta, names: Sequence[str]):
    """First value under one of ``names`` in a nested dict (breadth first), or None."""
    queue = [meta]
    while queue:
        d = queue.pop(0)
        if not isinstance(d, dict):
            continue
        for name in names:
            if d.get(name) not in (None, "", {}):
                return d[name]
        queue.extend(v for v in d.values() if isinstance(v, dict))
    return None


def recorded_specs(meta: dict) -> List[str]:
    """Specs to try, best first, for the source recorded in a run's config.json or a store's attributes.

    A recorded ``spec`` is exact; a human description such as ``"folder /data/x (1,204 images, 3 classes)"``
    or ``"digits:all (1,797 images ...)"`` still names the path or data set, so it is parsed as a fallback.
    """
    found = []
    for value in (find_key(meta, ("source_spec", "spec")), find_key(meta, ("source",)),
                  find_key(meta, ("source_description", "description"))):
        if isinstance(value, dict):
            value = find_key(value, ("spec", "path", "description"))
        if isinstance(value, str) and value.strip():
            found.append(value.strip())
    from .data import BUILTIN_DATASETS

    specs = []
    for text in found:
        match = _DESCRIBED_PATH.match(text)
        if match:
            specs.append(match.group(1))
        first = text.split()[0]  # the first word, up to any white space
        if first.split(":", 1)[0].lower() in BUILTIN_DATASETS:
            specs.append(first)
        specs.append(text)
    return list(dict.fromkeys(specs))  # unique, order kept


_DESCRIBED_PATH = re.compile(r"^(?:\d[\d,]* of )?(?:folder|manifest)\s+(.+?)\s+\(")


class StoreImages:
    """The images behind a store's keys, decoded with the store's preprocessing.

    Use :meth:`open`; it fails at once (one line) when the source cannot be opened, before any
    work that needs the images is done.

    Attributes
    ----------
    source : ImageSource
    preprocess : Preprocess
        The store's: what the model saw (size, channels, resize policy).
    missing : dict of str to str
        Keys asked for that could not be shown, with the reason (no longer in the source, no
        longer decodable).
    """

    def __init__(self, source, preprocess):
        self.source = source
        self.preprocess = preprocess
        self._row = {key: i for i, key in enumerate(source.keys)}
        self._cache: Dict[str, Optional[np.ndarray]] = {}
        self.missing: Dict[str, str] = {}

    @classmethod
    def open(cls, store, *, source=None, data_dir=None) -> "StoreImages":
        """Reopen the source of ``store`` (a :class:`~cvae_features.store.FeatureStore`).

        Parameters
        ----------
        store : FeatureStore
        source : str or path or None
            Where the images are now (a moved folder); None: the source the store recorded.
        data_dir : path or None
            Where built-in data sets live. Built-ins are never downloaded for a sheet.

        Raises
        ------
        SourceNotFoundError
            The recorded (or given) source cannot be opened: the message names it and the reason.
        """
        from .data import open_source

        specs = [str(source)] if source is not None else recorded_specs(store.attrs)
        if not specs:
            raise SourceNotFoundError(f"store {store.path} records no image source to read images back from "
                                      "(it was extracted from arrays in memory); pass --source")
        first_error = None
        for spec in specs:
            try:
                return cls(open_source(spec, data_dir=data_dir, download=False), store.preprocess)
            except CvaeError as err:
                first_error = first_error or err
        where = "the given source" if source is not None else f"the source recorded in {store.path}"
        raise SourceNotFoundError(f"cannot open {where} to draw contact sheets: {first_error}; pass --source "
                                  "with where the images are now, or leave out --sheets") from None

    def get(self, keys: Sequence[str]) -> List[Optional[np.ndarray]]:
        """uint8 arrays of shape (C, S, S) for ``keys``, None where a key cannot be shown (see :attr:`missing`)."""
        from .errors import DecodeError

        out = []
        for key in keys:
            if key not in self._cache:
                i = self._row.get(key)
                image = None
                if i is None:
                    self.missing[key] = "no longer in the source"
                else:
                    try:
                        image = self.source.load(i, self.preprocess)
                    except DecodeError as err:
                        self.missing[key] = str(err)
                self._cache[key] = image
            out.append(self._cache[key])
        return out


# ----------------------------------------------------------------------------- grids

def pad_row(imgs, cols) -> list:
    """``imgs`` followed by None (a blank cell) up to ``cols`` cells."""
    return list(imgs) + [None] * (cols - len(imgs))


def save_grid(rows, row_labels, path: Path, scale: int, pad: int = 2) -> Path:
    """Write a grid of uint8 (C, S, S) images (None = blank) upscaled by nearest neighbour, labels on the left."""
    from PIL import Image, ImageDraw, ImageFont

    first = next(img for row in rows for img in row if img is not None)
    channels, size = first.shape[0], first.shape[-1]
    cell = size * scale
    ncols = max(len(r) for r in rows)
    font = ImageFont.load_default()
    label_w = 0
    if any(row_labels):
        probe = ImageDraw.Draw(Image.new("L", (1, 1)))
        label_w = max(probe.textbbox((0, 0), s, font=font)[2] for s in row_labels) + 2 * pad
    width = label_w + pad + ncols * (cell + pad)
    height = pad + len(rows) * (cell + pad)
    mode = "L" if channels == 1 else "RGB"
    canvas = np.full((height, width, channels), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        y = pad + r * (cell + pad)
        for c, img in enumerate(row):
            if img is None:
                continue
            x = label_w + pad + c * (cell + pad)
            arr = np.asarray(img).transpose(1, 2, 0)
            canvas[y:y + cell, x:x + cell] = arr.repeat(scale, axis=0).repeat(scale, axis=1)
    image = Image.fromarray(canvas[:, :, 0] if channels == 1 else canvas, mode=mode)
    if label_w:
        draw = ImageDraw.Draw(image)
        for r, text in enumerate(row_labels):
            top = pad + r * (cell + pad) + cell // 2 - 6
            draw.text((pad, top), text, fill=0 if channels == 1 else (0, 0, 0), font=font)
    image.save(path, format="PNG")
    return path


# ----------------------------------------------------------------------------- contact sheets

@dataclass
class Sheet:
    """One contact sheet: rows of keys, each row with a short label, shown under a heading.

    ``rows`` is a list of ``(label, keys)``; ``listed`` (optional) is a list of ``(key, note)``
    written under the picture as a table, so the exact file names are one copy away.
    """

    name: str
    heading: str
    caption: str
    rows: List[Tuple[str, List[str]]]
    listed: List[Tuple[str, str]] = field(default_factory=list)


@dataclass
class SheetsResult:
    """What :func:`write_sheets` wrote: ``index`` (the HTML page), ``files`` (sheet name -> PNG),
    ``skipped`` (sheets without a single image to show) and ``missing`` (key -> why it is blank)."""

    out_dir: Path
    index: Path
    files: Dict[str, Path]
    skipped: List[str]
    missing: Dict[str, str]

    def to_dict(self) -> dict:
        return {"out_dir": str(self.out_dir), "index": str(self.index),
                "files": {k: str(v) for k, v in self.files.items()}, "skipped": list(self.skipped),
                "missing": dict(self.missing)}


def write_sheets(out_dir, sheets: Sequence[Sheet], images: StoreImages, *, title: str, intro: str = "") -> SheetsResult:
    """Write one PNG per sheet (``<name>.png``) and an ``index.html`` that shows them in order.

    Cells whose image cannot be shown are blank (listed in ``missing``); a sheet with no image
    at all is left out of the page (listed in ``skipped``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = images.preprocess.size
    scale = max(1, math.ceil(64 / size))
    files: Dict[str, Path] = {}
    skipped: List[str] = []
    esc = html.escape
    parts = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
             f"<title>{esc(title)}</title>", f"<style>{PAGE_CSS}</style></head><body>",
             f"<h1>{esc(title)}</h1>"]
    if intro:
        parts.append(f"<p>{esc(intro)} Written by cvae-features {esc(__version__)}.</p>")
    for sheet in sheets:
        cols = max((len(keys) for _, keys in sheet.rows), default=0)
        grid = [pad_row(images.get(keys), cols) for _, keys in sheet.rows]
        if not any(img is not None for row in grid for img in row):
            skipped.append(sheet.name)
            continue
        path = save_grid(grid, [label for label, _ in sheet.rows], out_dir / f"{sheet.name}.png", scale)
        files[sheet.name] = path
        parts.append(f"<h2 id=\"{esc(sheet.name)}\">{esc(sheet.heading)}</h2>")
        parts.append(f"<p class=\"caption\">{esc(sheet.caption)}</p>")
        parts.append(f"<img src=\"{esc(path.name)}\" alt=\"{esc(sheet.heading)}\">")
        if sheet.listed:
            parts.append("<table>" + "".join(f"<tr><td><code>{esc(key)}</code></td><td>{esc(note)}</td></tr>"
                                             for key, note in sheet.listed) + "</table>")
    if images.missing:
        parts.append(f"<p class=\"caption\">{len(images.missing)} image(s) could not be shown (blank cells), "
                     "for example <code>" + esc(next(iter(images.missing))) + "</code>: "
                     + esc(next(iter(images.missing.values()))) + ".</p>")
    parts.append("</body></html>")
    index = out_dir / "index.html"
    index.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return SheetsResult(out_dir=out_dir, index=index, files=files, skipped=skipped, missing=dict(images.missing))


__all__ = ["StoreImages", "Sheet", "SheetsResult", "write_sheets", "save_grid", "pad_row", "recorded_specs",
           "find_key", "PAGE_CSS"]
