"""Result records -> a terminal table, JSON, CSV and PNG plots.

``results`` is either a list of probe result records (one feature store) or a dict
``{store_label: [records]}`` (several stores, shown side by side). Records are the
dataclasses returned by :mod:`cvae_features.probes` (``to_dict()``, ``summary()``).
Table rows and CSV rows come from each record's ``summary()``; the lines under the table
and the plots from the record's probe registry entry (``table_lines``, ``plots``).
Nothing here prints; the functions return strings or write files.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path


from ._json import dumps, to_builtin
from .plots import feature_map, file_label, plot_confusion, plot_feature_map, plot_fewshot, plot_roc
from .probes.registry import probe_for_record

DEFAULT_LABEL = "features"


def _by_store(results) -> dict:
    if isinstance(results, dict):
        return {str(k): list(v) for k, v in results.items()}
    return {DEFAULT_LABEL: list(results)}


def summary_rows(results) -> list[dict]:
    """One dict per (store, probe, metric): ``store``, ``probe``, ``metric``, ``value``, ``std`` (None if no mean)."""
    rows = []
    for store, records in _by_store(results).items():
        for rec in records:
            for metric, value in rec.summary().items():
                mean, std = value if isinstance(value, tuple) else (value, None)
                rows.append({"store": store, "probe": rec.probe, "metric": metric,
                             "value": None if mean is None else float(mean),
                             "std": None if std is None else float(std)})
    return rows


def _cell(value, std, digits: int) -> str:
    if value is None:
        return "-"
    text = f"{value:.{digits}f}"
    return text if std is None else f"{text} ± {std:.{digits}f}"


def probe_lines(results) -> list[str]:
    """The lines each record's probe entry puts under the table (``table_lines``, e.g. the anomaly normal class)."""
    by_store = _by_store(results)
    lines = []
    for store, records in by_store.items():
        where = f" ({store})" if len(by_store) > 1 else ""
        for rec in records:
            spec = probe_for_record(rec.probe)
            if spec is not None and spec.table_lines is not None:
                lines += spec.table_lines(rec, where)
    return lines


def footer_lines(skipped=None, warnings=None) -> list[str]:
    """``skipped: <store> <task>: <reason>`` and ``warning: ...`` lines for the end of a text report."""
    lines = [f"skipped: {s['store'] + ' ' if s.get('store') else ''}{s['task']}: {s['reason']}"
             for s in skipped or ()]
    return lines + [f"warning: {w}" for w in warnings or ()]


def format_table(results, *, title: str | None = None, digits: int = 4, footer=()) -> str:
    """A plain-text table: one row per probe metric, one column per feature store.

    Under the table come the probes' own lines (:func:`probe_lines`, e.g. the anomaly normal
    class of each store that has one) and then the lines of ``footer`` (see :func:`footer_lines`).

    Returns
    -------
    str
        Lines joined by newlines (no trailing newline); an empty-results table says so.
    """
    by_store = _by_store(results)
    stores = list(by_store)
    cells: dict = {}
    order: list = []
    for row in summary_rows(by_store):
        key = (row["probe"], row["metric"])
        if key not in cells:
            cells[key] = {}
            order.append(key)
        cells[key][row["store"]] = _cell(row["value"], row["std"], digits)
    header = ["probe", "metric", *stores]
    body = [[probe, metric, *(cells[(probe, metric)].get(s, "-") for s in stores)] for probe, metric in order]
    if not body:
        body = [["(no results)", "", *("" for _ in stores)]]
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]

    def line(row):
        left = [str(c).ljust(w) for c, w in zip(row[:2], widths[:2])]
        right = [str(c).rjust(w) for c, w in zip(row[2:], widths[2:])]
        return "  ".join(left + right).rstrip()

    out = [title] if title else []
    out += [line(header), "  ".join("-" * w for w in widths)]
    prev = None
    for row in body:
        # print the probe name once per block of its metrics
        shown = row if row[0] != prev else ["", *row[1:]]
        prev = row[0]
        out.append(line(shown))
    out += probe_lines(by_store) + list(footer)
    return "\n".join(out)


def to_json(results, *, meta: dict | None = None, skipped=None, warnings=None) -> dict:
    """All records as plain data.

    Returns
    -------
    dict
        ``{"meta": ..., "stores": {label: [record.to_dict(), ...]}, "summary": rows,
        "skipped": [{"store", "task", "reason"}, ...], "warnings": [str, ...]}``.
    """
    by_store = _by_store(results)
    return {"meta": to_builtin(meta or {}),
            "stores": {s: [rec.to_dict() for rec in recs] for s, recs in by_store.items()},
            "summary": summary_rows(by_store),
            "skipped": to_builtin(list(skipped or [])),
            "warnings": [str(w) for w in warnings or []]}


def write_json(results, path, *, meta: dict | None = None, skipped=None, warnings=None) -> Path:
    """Write :func:`to_json` to ``path``; returns the path."""
    path = Path(path)
    path.write_text(dumps(to_json(results, meta=meta, skipped=skipped, warnings=warnings), indent=2) + "\n")
    return path


def write_csv(results, path) -> Path:
    """Write :func:`summary_rows` as CSV (columns store, probe, metric, value, std); returns the path."""
    path = Path(path)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["store", "probe", "metric", "value", "std"])
        writer.writeheader()
        writer.writerows(summary_rows(results))
    return path


# --------------------------------------------------------------------------- plots

@dataclass(frozen=True)
class ReportContext:
    """What a probe's ``plots`` hook may use besides its records: class names and test-row keys per store."""

    label_names: dict = field(default_factory=dict)
    test_keys: dict = field(default_factory=dict)

    def names_for(self, store: str):
        """The class names of ``store`` (list or None)."""
        return self.label_names.get(store)

    def keys_for(self, store: str):
        """The keys of ``store``'s test rows (list or None)."""
        return self.test_keys.get(store)


def write_report(results, out_dir, *, meta: dict | None = None, label_names=None, feature_maps: dict | None = None,
                 map_method: str = "pca", test_keys: dict | None = None, skipped=None, warnings=None,
                 seed: int = 0) -> list[Path]:
    """Write ``report.json``, ``results.csv``, ``report.txt``, the plots and per-row anomaly scores into ``out_dir``.

    Files: the ``plots`` of each probe's registry entry (built-in: ``confusion_<store>.png``
    (linear), ``fewshot.png``, ``roc_<store>.png`` (anomaly with test labels) and
    ``anomaly_scores_<store>.csv`` (one row per test row: key, each score, its flag at the
    calibrated threshold, is_anomaly)) and ``map_<store>.png`` (feature maps).

    Parameters
    ----------
    results : list or dict of records
    out_dir : path
        Created when missing.
    label_names : list of str or dict of store label -> list
        Class names for the confusion matrix and the feature map.
    feature_maps : dict of store label -> (X, y)
        Features (and labels or None) to draw as a 2-D map per store.
    test_keys : dict of store label -> list of str
        Row keys of the test rows, written next to the per-row anomaly scores.
    skipped : list of dict or None
        Probes that could not run (``store``, ``task``, ``reason``): in report.json and report.txt.
    warnings : list of str or None
        What looked wrong about the stores: in report.json and report.txt.

    Returns
    -------
    list of Path
        The files written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_store = _by_store(results)
    names = label_names if isinstance(label_names, dict) else {s: label_names for s in by_store}
    written = [write_json(by_store, out / "report.json", meta=meta, skipped=skipped, warnings=warnings),
               write_csv(by_store, out / "results.csv")]
    (out / "report.txt").write_text(format_table(by_store, footer=footer_lines(skipped, warnings)) + "\n")
    written.append(out / "report.txt")
    context = ReportContext(label_names=dict(names), test_keys=dict(test_keys or {}))
    by_probe: dict = {}  # probe name -> (registry entry, [(store, record)]), in the order the records come
    for store, records in by_store.items():
        for rec in records:
            spec = probe_for_record(rec.probe)
            if spec is not None and spec.plots is not None:
                by_probe.setdefault(spec.name, (spec, []))[1].append((store, rec))
    for spec, items in by_probe.values():
        written += spec.plots(items, out, context)
    for store, (X, y) in (feature_maps or {}).items():
        written.append(plot_feature_map(X, y, out / f"map_{file_label(store)}.png", method=map_method,
                                        label_names=names.get(store), seed=seed, title=f"{store} ({map_method})"))
    return written


__all__ = ["summary_rows", "probe_lines", "footer_lines", "format_table", "to_json", "write_json", "write_csv",
           "write_report", "ReportContext", "plot_confusion", "plot_fewshot", "plot_roc", "feature_map",
           "plot_feature_map", "file_label"]
