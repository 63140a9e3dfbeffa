"""Run several probes on one (train, test) pair of feature stores: what ``cvae probe`` does.

:func:`load_probe_data` reads and checks the stores (or splits one store when no test
store is given); :func:`run_probes` runs the requested tasks and returns the records
plus notes on what was skipped and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, StoreError
from ._common import stratified_split

TASKS = ("linear", "knn", "cluster", "fewshot", "anomaly")
NEEDS_LABELS = ("linear", "knn", "fewshot")
DEFAULT_LABELS_PER_CLASS = (1, 5, 10, 100)


@dataclass
class ProbeData:
    """Arrays for one probe run. ``split`` describes how test rows were made (None: a separate test store)."""

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

    @property
    def has_train_labels(self) -> bool:
        return bool((self.y_train >= 0).any())

    @property
    def has_test_labels(self) -> bool:
        return bool((self.y_test >= 0).any())


def parse_tasks(spec) -> tuple:
    """``'all'`` or a comma list (or sequence) of task names -> tuple in canonical order; ConfigError otherwise."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items or items == ["all"]:
        return TASKS
    bad = [s for s in items if s not in TASKS]
    if bad:
        raise ConfigError(f"--task: expected 'all' or some of {','.join(TASKS)}, got {','.join(bad)}")
    return tuple(t for t in TASKS if t in items)


def _read_store(path, role: str):
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


def load_probe_data(train_path, test_path=None, *, test_fraction: float = 0.2, seed: int = 0) -> ProbeData:
    """Read the stores for a probe run.

    Parameters
    ----------
    train_path : path
        The training store.
    test_path : path or None
        The test store; it must hold features of the same kind, width and model.
        None: a stratified seeded ``test_fraction`` of the training store becomes the test rows.

    Raises
    ------
    StoreError
        For an incomplete or empty store, or a test store that does not match the training store.
    """
    train = _read_store(train_path, "TRAIN")
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
    test = _read_store(test_path, "TEST")
    for what in ("kind", "dim", "fingerprint"):
        if train[what] != test[what]:
            label = {"kind": "feature kind", "dim": "feature width", "fingerprint": "model fingerprint"}[what]
            raise StoreError(f"TEST {test_path}: {label} {test[what]!r} differs from TRAIN's {train[what]!r}; "
                             "probe stores made by the same model")
    names, y_test = _align_labels(train["names"], test["names"], test["y"])
    common = sorted(set(train["extras"]) & set(test["extras"]))
    return ProbeData(X_train=train["X"], y_train=train["y"], X_test=test["X"], y_test=y_test, label_names=names,
                     keys_test=test["keys"], extras_train={n: train["extras"][n] for n in common},
                     extras_test={n: test["extras"][n] for n in common},
                     sources={"train": str(train_path), "test": str(test_path)})


def resolve_class(name, label_names: list, y: np.ndarray) -> int:
    """A class given by name (or by its integer id) -> its id; ConfigError naming the choices otherwise."""
    name = str(name)
    if name in label_names:
        return label_names.index(name)
    if name.lstrip("-").isdigit() and int(name) in set(np.unique(y[y >= 0]).tolist()):
        return int(name)
    raise ConfigError(f"--normal-class: expected one of {label_names or sorted(set(y[y >= 0].tolist()))}, got {name!r}")


def _feasible_labels_per_class(y_train: np.ndarray, requested) -> tuple[tuple, list]:
    counts = np.bincount(y_train[y_train >= 0])
    smallest = int(counts[counts > 0].min())
    if requested is not None:
        return tuple(requested), []
    ks = tuple(k for k in DEFAULT_LABELS_PER_CLASS if k <= smallest)
    dropped = [k for k in DEFAULT_LABELS_PER_CLASS if k > smallest]
    notes = [f"fewshot: left out {dropped} labels per class (the smallest training class has {smallest} rows)"] \
        if dropped else []
    return ks, notes


def run_probes(data: ProbeData, tasks=TASKS, *, labels_per_class=None, seeds=5, normal_class=None,
               fpr: float = 0.05, n_clusters: int | None = None, seed: int = 0, on_task=None) -> tuple[list, list]:
    """Run the requested probes on ``data``.

    Parameters
    ----------
    tasks : sequence of task names (see :data:`TASKS`)
    labels_per_class : sequence of int or None
        None: (1, 5, 10, 100) less the values a class cannot supply (noted).
    seeds : int
        Few-label seeds 0..seeds-1.
    normal_class : str, int or None
        Anomaly task: the normal class (name or id); test rows of other classes are anomalies.
        With an unlabelled training store every training row is normal and the name picks the
        normal class among the test labels. None: with labels on both sides, the one-class
        protocol over every class; otherwise all training rows are normal and no AUROC is measured.
    n_clusters : int or None
        Clusters; default the number of classes (10 when there are no labels).
    on_task : callable or None
        Called with each task name before the task runs (progress display).

    Returns
    -------
    records : list of result records
    notes : list of str
        One line per task that was skipped or changed, and why.
    """
    from .anomaly import anomaly_probe, one_class_protocol
    from .cluster import cluster_probe
    from .fewshot import fewshot_curve
    from .knn import knn_probe
    from .linear import linear_probe

    tasks = parse_tasks(tasks)
    records, notes = [], []
    labelled = data.has_train_labels and data.has_test_labels
    if not labelled:
        where = "TRAIN" if not data.has_train_labels else "TEST"
        needs = [t for t in tasks if t in NEEDS_LABELS]
        if needs:
            notes.append(f"{', '.join(needs)}: skipped, these tasks need labels and {where} has none")
    for task in tasks:
        if on_task is not None:
            on_task(task)
        if task in NEEDS_LABELS and not labelled:
            continue
        if task == "linear":
            records.append(linear_probe(data.X_train, data.y_train, data.X_test, data.y_test, seed=seed))
        elif task == "knn":
            records.append(knn_probe(data.X_train, data.y_train, data.X_test, data.y_test, seed=seed))
        elif task == "fewshot":
            ks, more = _feasible_labels_per_class(data.y_train, labels_per_class)
            notes += more
            if not ks:
                notes.append("fewshot: skipped, a class has too few training rows for any labels-per-class value")
                continue
            records.append(fewshot_curve(data.X_train, data.y_train, data.X_test, data.y_test,
                                         labels_per_class=ks, seeds=seeds))
        elif task == "cluster":
            y = data.y_test if data.has_test_labels else None
            k = n_clusters if n_clusters is not None else (None if y is not None else 10)
            if y is None and n_clusters is None:
                notes.append("cluster: no test labels, so 10 clusters and no ACC/NMI/ARI "
                             "(set the count with --clusters)")
            records.append(cluster_probe(data.X_test, y, n_clusters=k, seed=seed))
        elif task == "anomaly":
            records.append(_anomaly(data, normal_class, fpr, seed, notes, anomaly_probe, one_class_protocol))
    return records, notes


def _anomaly(data: ProbeData, normal_class, fpr, seed, notes, anomaly_probe, one_class_protocol):
    extra_test = data.extras_test
    if normal_class is not None:
        if data.has_train_labels:
            c = resolve_class(normal_class, data.label_names, data.y_train)
            normal = data.y_train == c
        else:
            # an unlabelled TRAIN store is all normal (a folder of good images); the name picks the
            # normal class among the TEST labels
            c = resolve_class(normal_class, data.label_names, data.y_test)
            normal = np.ones(data.y_train.size, dtype=bool)
        is_anomaly = None
        if data.has_test_labels:
            if (data.y_test >= 0).all():
                is_anomaly = (data.y_test != c).astype(np.int64)
            else:
                notes.append("anomaly: some test rows have no label, so no AUROC/AUPR")
        return anomaly_probe(data.X_train[normal], data.X_test, is_anomaly,
                             extra_normal={n: a[normal] for n, a in data.extras_train.items()},
                             extra_test=extra_test, fpr=fpr, seed=seed)
    if data.has_train_labels and data.has_test_labels:
        if extra_test:
            # a store's per-row scores come from one model trained on every class; the protocol
            # needs a model trained on the normal class alone, so they would measure nothing here
            notes.append(f"anomaly: {', '.join(sorted(extra_test))} left out of the one-class protocol "
                         "(the model saw every class); use --normal-class to score them")
        return one_class_protocol(data.X_train, data.y_train, data.X_test, data.y_test, seed=seed)
    if data.has_test_labels:
        notes.append("anomaly: every training row counts as normal; name the normal test class with "
                     "--normal-class to measure AUROC")
    else:
        notes.append("anomaly: no labels, so every training row counts as normal and no AUROC is measured")
    return anomaly_probe(data.X_train, data.X_test, None, extra_normal=data.extras_train,
                         extra_test=extra_test, fpr=fpr, seed=seed)


@dataclass
class ProbeRun:
    """Probes run on one or more labelled store pairs (``label -> records``), ready for the report."""

    results: dict
    notes: list
    data: dict
    meta: dict

    def report_inputs(self) -> dict:
        """Keyword arguments for :func:`cvae_features.report.write_report` (maps, label names, test keys)."""
        return {
            "feature_maps": {label: (d.X_test, d.y_test if d.has_test_labels else None)
                             for label, d in self.data.items()},
            "label_names": {label: d.label_names for label, d in self.data.items()},
            "test_keys": {label: d.keys_test for label, d in self.data.items()},
        }


def probe_stores(pairs, tasks=TASKS, *, test_fraction: float = 0.2, seed: int = 0, on_task=None,
                 **probe_options) -> ProbeRun:
    """Run the same probes on each ``(label, train_path, test_path_or_None)`` store pair.

    ``probe_options`` go to :func:`run_probes`; ``on_task(label, task)`` is called before each task.
    Notes are prefixed with the pair's label when there is more than one pair.
    """
    tasks = parse_tasks(tasks)
    results, notes, datas, runs = {}, [], {}, {}
    for label, train_path, test_path in pairs:
        data = load_probe_data(train_path, test_path, test_fraction=test_fraction, seed=seed)
        callback = None if on_task is None else (lambda task, label=label: on_task(label, task))
        records, more = run_probes(data, tasks, seed=seed, on_task=callback, **probe_options)
        results[label] = records
        datas[label] = data
        notes += [f"{label}: {n}" if len(pairs) > 1 else n for n in more]
        runs[label] = {"sources": data.sources, "split": data.split, "n_train": int(data.X_train.shape[0]),
                       "n_test": int(data.X_test.shape[0]), "dim": int(data.X_train.shape[1])}
    return ProbeRun(results, notes, datas, {"tasks": list(tasks), "seed": seed, "runs": runs, "notes": notes})
