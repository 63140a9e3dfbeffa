"""Run several probes on one (train, test) pair of feature stores: what ``cvae probe`` does.

:func:`load_probe_data` reads and checks the stores (or splits one store when no test
store is given); :func:`run_probes` runs the requested tasks and returns the records
plus notes on what was skipped and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, StoreError
from ._common import DataTooSmall, stratified_split
from .registry import ProbeContext, get_probe, probe_names

DEFAULT_LABELS_PER_CLASS = (1, 5, 10, 100)
INDEX_PREFIX = "index:"  # --normal-class index:N picks a class by its id; a bare value is always a name


@dataclass
class ProbeData:
    """Arrays for one probe run. ``split`` describes how test rows were made (None: a separate test store).

    ``warnings`` holds what looks wrong about the pair but does not stop the run (class names
    that differ between the stores, test rows that are also training rows).
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    label_names: list
    keys_test: list
    extras_train: dict = field(default_factory=dict)
    extras_test: dict = field(default_factory=dict)
    split: dict | None = None
    sources: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    @property
    def has_train_labels(self) -> bool:
        return bool((self.y_train >= 0).any())

    @property
    def has_test_labels(self) -> bool:
        return bool((self.y_test >= 0).any())


def parse_tasks(spec) -> tuple:
    """``'all'`` or a comma list (or sequence) of registered task names -> tuple in registration order.

    ConfigError naming the registered tasks otherwise.
    """
    tasks = probe_names()
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items or items == ["all"]:
        return tasks
    bad = [s for s in items if s not in tasks]
    if bad:
        raise ConfigError(f"--task: expected 'all' or some of {','.join(tasks)}, got {','.join(bad)}")
    return tuple(t for t in tasks if t in items)


def read_store_rows(path, role: str) -> dict:
    """The rows of a complete, non-empty store as arrays: X, y, keys, extras (recon_error, neg_elbo) and facts.

    ``role`` names the store in messages (``"TRAIN"``, ``"store"``). StoreError when the store is
    incomplete (finish it with ``--resume``) or holds no rows.
    """
    from ..store import FeatureStore

    with FeatureStore(path) as store:
        if not store.is_complete:
            raise StoreError(f"{role} {path}: the store is incomplete ({store.n_pending} planned rows pending); "
                             "finish it with `cvae extract ... --resume` first")
        if store.n_rows == 0:
            raise StoreError(f"{role} {path}: the store holds no rows")
        return {"path": str(path), "X": np.asarray(store.features, dtype=np.float32),
                "y": np.asarray(store.labels, dtype=np.int64), "names": list(store.label_names),
                "keys": list(store.keys), "kind": store.feature_kind, "dim": store.dim,
                "fingerprint": store.model_fingerprint,
                "extras": {n: store.extra(n) for n in ("recon_error", "neg_elbo") if store.extra(n) is not None}}


def _align_labels(train_names: list, test_names: list, y_test: np.ndarray) -> tuple[list, np.ndarray]:
    """Express the test labels in the training store's label ids (matched by name)."""
    names = list(train_names)
    mapping = np.empty(len(test_names), dtype=np.int64)
    for i, name in enumerate(test_names):
        if name not in names:
            names.append(name)  # a class the training rows never saw: kept, it can only be misclassified
        mapping[i] = names.index(name)
    out = y_test.copy()
    known = y_test >= 0
    out[known] = mapping[y_test[known]]
    return names, out


def _same_file(a, b) -> bool:
    import os

    try:
        return os.path.samefile(a, b)
    except OSError:  # a missing file is reported when it is read
        return False


def _shared_rows(train: dict, test: dict) -> int:
    """How many TEST rows are TRAIN rows too: the same key and exactly the same features."""
    index = {key: i for i, key in enumerate(train["keys"])}
    pairs = [(j, index[key]) for j, key in enumerate(test["keys"]) if key in index]
    if not pairs:
        return 0
    tj, ti = (np.asarray(p) for p in zip(*pairs))
    return int(np.all(test["X"][tj] == train["X"][ti], axis=1).sum())


def _present_names(names: list, y: np.ndarray) -> list:
    return [names[i] if i < len(names) else str(i) for i in np.unique(y[y >= 0]).tolist()]


def _class_name_warning(train: dict, test: dict) -> str | None:
    """A warning when the class names found in the TEST rows differ from those in the TRAIN rows."""
    tr, te = _present_names(train["names"], train["y"]), _present_names(test["names"], test["y"])
    if not tr or not te:
        return None
    only_test, only_train = [n for n in te if n not in tr], [n for n in tr if n not in te]
    if len(only_test) == len(te):
        return (f"TEST class names {te} share none with TRAIN's {tr}: every labelled test row counts as "
                "misclassified (are these stores meant to go together?)")
    if only_test or only_train:
        parts = ([f"only in TEST {only_test} (those rows can only be misclassified)"] if only_test else []) + \
                ([f"only in TRAIN {only_train}"] if only_train else [])
        return f"TEST and TRAIN class names differ: {'; '.join(parts)}"
    return None


def load_probe_data(train_path, test_path=None, *, test_fraction: float = 0.2, seed: int = 0) -> ProbeData:
    """Read the stores for a probe run.

    Parameters
    ----------
    train_path : path
        The training store.
    test_path : path or None
        The test store; it must hold features of the same kind, width and model, and must not be
        the training store (the same file, or rows that are all training rows by key and features).
        None: a stratified seeded ``test_fraction`` of the training store becomes the test rows.

    Raises
    ------
    StoreError
        For an incomplete or empty store, a test store that does not match the training store,
        or a test store that is the training store again.
    """
    if test_path is not None and _same_file(train_path, test_path):
        raise StoreError(f"TEST {test_path} is the TRAIN store itself, so the scores would measure memorisation; "
                         "give a separate test store or leave --test out to split TRAIN")
    train = read_store_rows(train_path, "TRAIN")
    if test_path is None:
        if not 0 < test_fraction < 1:
            raise ConfigError(f"test_fraction: expected a number in (0, 1), got {test_fraction}")
        fit, held = stratified_split(train["y"], test_fraction, seed)
        if fit.size == 0 or held.size == 0:
            raise StoreError(f"TRAIN {train_path}: {train['y'].size} row(s) are too few to split off test rows")
        split = {"from": str(train_path), "test_fraction": float(test_fraction), "seed": int(seed),
                 "stratified": bool((train["y"] >= 0).any()), "n_train": int(fit.size), "n_test": int(held.size)}
        return ProbeData(X_train=train["X"][fit], y_train=train["y"][fit], X_test=train["X"][held],
                         y_test=train["y"][held], label_names=train["names"],
                         keys_test=[train["keys"][i] for i in held],
                         extras_train={n: a[fit] for n, a in train["extras"].items()},
                         extras_test={n: a[held] for n, a in train["extras"].items()},
                         split=split, sources={"train": str(train_path), "test": None})
    test = read_store_rows(test_path, "TEST")
    for what in ("kind", "dim", "fingerprint"):
        if train[what] != test[what]:
            label = {"kind": "feature kind", "dim": "feature width", "fingerprint": "model fingerprint"}[what]
            raise StoreError(f"TEST {test_path}: {label} {test[what]!r} differs from TRAIN's {train[what]!r}; "
                             "probe stores made by the same model")
    shared = _shared_rows(train, test)
    n_test = len(test["keys"])
    if shared == n_test:
        raise StoreError(f"TEST {test_path}: all {n_test} rows are TRAIN rows too (same keys and features), so the "
                         "scores would measure memorisation; give a separate test store or leave --test out")
    warnings = [f"{shared} of {n_test} TEST rows are TRAIN rows too (same key and features); "
                "their scores flatter the features"] if shared else []
    if (train["y"] >= 0).any() and (test["y"] >= 0).any():
        warning = _class_name_warning(train, test)
        if warning:
            warnings.append(warning)
    names, y_test = _align_labels(train["names"], test["names"], test["y"])
    common = sorted(set(train["extras"]) & set(test["extras"]))
    return ProbeData(X_train=train["X"], y_train=train["y"], X_test=test["X"], y_test=y_test, label_names=names,
                     keys_test=test["keys"], extras_train={n: train["extras"][n] for n in common},
                     extras_test={n: test["extras"][n] for n in common},
                     sources={"train": str(train_path), "test": str(test_path)}, warnings=warnings)


def class_names(label_names: list, y: np.ndarray) -> list:
    """The class names by id: ``label_names``, or the ids as text for a store that names no class."""
    ids = y[y >= 0]
    n = max(len(label_names), int(ids.max()) + 1 if ids.size else 0)
    return [label_names[i] if i < len(label_names) else str(i) for i in range(n)]


def resolve_class(spec, label_names: list, y: np.ndarray) -> int:
    """A class given by name, or by id as ``index:N``, -> its id; ConfigError naming the choices otherwise.

    A bare value is only ever a name: with classes named "1", "2", "3", ``0`` is an error and
    ``1`` is the class named "1" (id 0); ``index:0`` is that class too.
    """
    spec = str(spec)
    names = class_names(label_names, y)
    if not names:
        raise ConfigError(f"--normal-class: the stores hold no class labels, so there is no class {spec!r} to pick")
    if spec in names:
        return names.index(spec)
    listed = ", ".join(repr(n) for n in names)
    if spec.startswith(INDEX_PREFIX):
        digits = spec[len(INDEX_PREFIX):].strip()
        if digits.isdigit() and int(digits) < len(names):
            return int(digits)
        raise ConfigError(f"--normal-class: {spec!r} is not an index of a class; expected index:0 .. "
                          f"index:{len(names) - 1} ({listed})")
    raise ConfigError(f"--normal-class: expected one of the class names {listed} or {INDEX_PREFIX}N, got {spec!r}")


def run_probes(data: ProbeData, tasks="all", *, labels_per_class=None, seeds=5, normal_class=None,
               fpr: float = 0.05, n_clusters: int | None = None, cluster_methods=None, fewshot_methods=None,
               seed: int = 0, on_task=None) -> tuple[list, list, list]:
    """Run the requested probes on ``data``, each through its registry entry (see :mod:`.registry`).

    A probe whose data are too small (:class:`DataTooSmall`: too few rows or classes for what
    it fits) is skipped with the reason and the others still run; any other error stops the run.
    A probe that needs labels is skipped with a note when TRAIN or TEST has none. Every probe's
    ``check`` runs before the first probe, so bad options are refused before any work.

    Parameters
    ----------
    tasks : 'all', or a comma list or sequence of registered task names (see :func:`probe_names`)
    labels_per_class : sequence of int or None
        None: (1, 5, 10, 100) less the values a class cannot supply (noted). Values given
        explicitly must all be feasible (ConfigError otherwise).
    seeds : int
        Few-label seeds 0..seeds-1.
    normal_class : str or None
        Anomaly task: the normal class, by name, or by id written ``index:N``; test rows of
        other classes are anomalies. A bare number is a name, never an id.
        With an unlabelled training store every training row is normal and the name picks the
        normal class among the test labels. None: with labels on both sides, the one-class
        protocol over every class; otherwise all training rows are normal and no AUROC is measured.
    n_clusters : int or None
        Clusters; default the number of classes (10 when there are no labels).
    cluster_methods : sequence of str or None
        The cluster task's methods (see :func:`~cvae_features.probes.cluster_probe`); None: its default.
    fewshot_methods : sequence of str or None
        The few-label task's methods (see :func:`~cvae_features.probes.fewshot_curve`); None: those
        registered to run by default.
    on_task : callable or None
        Called with each task name before the task runs (progress display).

    Returns
    -------
    records : list of result records
    notes : list of str
        One line per task that was skipped or changed, and why.
    skipped : list of dict
        ``{"task": name, "reason": text}`` for every task that did not run.
    """
    specs = [get_probe(t) for t in parse_tasks(tasks)]
    ctx = ProbeContext(seed=seed, labels_per_class=labels_per_class, seeds=seeds, normal_class=normal_class,
                       fpr=fpr, n_clusters=n_clusters,
                       cluster_methods=None if cluster_methods is None else tuple(cluster_methods),
                       fewshot_methods=None if fewshot_methods is None else tuple(fewshot_methods))
    records, skipped = [], []
    labelled = data.has_train_labels and data.has_test_labels
    if not labelled:
        where = "TRAIN" if not data.has_train_labels else "TEST"
        needs = [s.name for s in specs if s.needs_labels]
        if needs:
            ctx.note(f"{', '.join(needs)}: skipped, these tasks need labels and {where} has none")
            skipped += [{"task": t, "reason": f"needs labels and {where} has none"} for t in needs]
    for spec in specs:
        if spec.check is not None:
            spec.check(data, ctx)

    for spec in specs:
        if on_task is not None:
            on_task(spec.name)
        if spec.needs_labels and not labelled:
            continue
        try:
            records.append(spec.run(data, ctx))
        except DataTooSmall as err:
            skipped.append({"task": spec.name, "reason": str(err)})
            ctx.note(f"{spec.name}: skipped, {err}")
    return records, ctx.notes, skipped


@dataclass
class ProbeRun:
    """Probes run on one or more labelled store pairs (``label -> records``), ready for the report.

    ``skipped`` lists ``{"store", "task", "reason"}`` for every probe that could not run;
    ``warnings`` what looked wrong about a store pair (see :class:`ProbeData`).
    """

    results: dict
    notes: list
    data: dict
    meta: dict
    skipped: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    @property
    def n_records(self) -> int:
        """How many probes ran, over every store pair."""
        return sum(len(records) for records in self.results.values())

    def report_inputs(self) -> dict:
        """Keyword arguments for :func:`cvae_features.report.write_report` (maps, label names, test keys,
        skipped probes and warnings)."""
        return {
            "feature_maps": {label: (d.X_test, d.y_test if d.has_test_labels else None)
                             for label, d in self.data.items()},
            "label_names": {label: d.label_names for label, d in self.data.items()},
            "test_keys": {label: d.keys_test for label, d in self.data.items()},
            "skipped": self.skipped,
            "warnings": self.warnings,
        }


def probe_stores(pairs, tasks="all", *, test_fraction: float = 0.2, seed: int = 0, on_task=None,
                 **probe_options) -> ProbeRun:
    """Run the same probes on each ``(label, train_path, test_path_or_None)`` store pair.

    ``probe_options`` go to :func:`run_probes`; ``on_task(label, task)`` is called before each task.
    Notes and warnings are prefixed with the pair's label when there is more than one pair.
    A run in which no probe could run is returned as it is (``n_records == 0``); the caller decides.
    """
    tasks = parse_tasks(tasks)
    results, notes, datas, runs, skipped, warnings = {}, [], {}, {}, [], []
    for label, train_path, test_path in pairs:
        data = load_probe_data(train_path, test_path, test_fraction=test_fraction, seed=seed)
        callback = None if on_task is None else (lambda task, label=label: on_task(label, task))
        records, more, skips = run_probes(data, tasks, seed=seed, on_task=callback, **probe_options)
        results[label] = records
        datas[label] = data
        prefix = f"{label}: " if len(pairs) > 1 else ""
        notes += [prefix + n for n in more]
        warnings += [prefix + w for w in data.warnings]
        skipped += [{"store": label, **s} for s in skips]
        runs[label] = {"sources": data.sources, "split": data.split, "n_train": int(data.X_train.shape[0]),
                       "n_test": int(data.X_test.shape[0]), "dim": int(data.X_train.shape[1])}
    meta = {"tasks": list(tasks), "seed": seed, "runs": runs, "notes": notes}
    return ProbeRun(results, notes, datas, meta, skipped=skipped, warnings=warnings)
