"""The built-in probes as registry entries: how the suite runs each one on a ProbeData, and what the report draws.

Registration order is the order ``--task all`` runs them in. The report's helpers are
imported inside the hooks from cvae_features.plots (the report imports the registry, not the other way round).
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ._common import DataTooSmall
from .registry import probe_names, register_probe
from .suite import DEFAULT_LABELS_PER_CLASS, ProbeData, class_names, resolve_class


# --------------------------------------------------------------------------- linear, knn

def _run_linear(data: ProbeData, ctx):
    from .linear import linear_probe

    return linear_probe(data.X_train, data.y_train, data.X_test, data.y_test, seed=ctx.seed)


def _plot_linear(items, out, context):
    from ..plots import file_label, plot_confusion

    return [plot_confusion(rec, out / f"confusion_{file_label(store)}.png", label_names=context.names_for(store),
                           title=f"{store}: linear probe, accuracy {rec.accuracy:.3f}") for store, rec in items]


def _run_knn(data: ProbeData, ctx):
    from .knn import knn_probe

    return knn_probe(data.X_train, data.y_train, data.X_test, data.y_test, seed=ctx.seed)


# --------------------------------------------------------------------------- cluster

def _cluster_methods(ctx) -> tuple:
    from .cluster import DEFAULT_METHODS

    return ctx.cluster_methods if ctx.cluster_methods is not None else DEFAULT_METHODS


def _check_cluster(data: ProbeData, ctx):
    from .cluster import check_methods

    if "prior" in check_methods(_cluster_methods(ctx), "cluster methods"):
        _store_prior(data)


def _store_prior(data: ProbeData):
    """The mixture prior of the model that made the stores' features (the 'prior' cluster method's clusters).

    ConfigError (one line) when the features come from no store, the store carries no model, or its
    model's prior is not a mixture.
    """
    from ..errors import ModelError
    from ..resolve import resolve_model

    path = data.sources.get("train")
    if path is None:
        raise ConfigError("cluster method 'prior': the features come from no store, so there is no model whose "
                          "mixture prior could assign them")
    try:
        model = resolve_model(path).model
    except ModelError as err:
        raise ConfigError(f"cluster method 'prior' needs the store's model (conv-vade): {err}") from None
    prior = getattr(model, "prior", None)
    if not callable(getattr(prior, "assign", None)):
        raise ConfigError(f"cluster method 'prior': {path} was made by a {type(model).arch} model, whose prior "
                          f"({type(prior).__name__}) has no clusters; it needs a mixture-prior model (conv-vade)")
    return prior


def _run_cluster(data: ProbeData, ctx):
    from .cluster import cluster_probe

    y = data.y_test if data.has_test_labels else None
    k = ctx.n_clusters if ctx.n_clusters is not None else (None if y is not None else 10)
    if y is None and ctx.n_clusters is None:
        ctx.note("cluster: no test labels, so 10 clusters and no ACC/NMI/ARI (set the count with --clusters)")
    try:
        methods = _cluster_methods(ctx)
        return cluster_probe(data.X_test, y, n_clusters=k, methods=methods, seed=ctx.seed,
                             prior=_store_prior(data) if "prior" in methods else None)
    except DataTooSmall as err:
        raise DataTooSmall(f"on the test rows, {err}") from None


# --------------------------------------------------------------------------- fewshot

def _feasible_labels_per_class(y_train: np.ndarray, requested) -> tuple[tuple, list]:
    counts = np.bincount(y_train[y_train >= 0])
    smallest = int(counts[counts > 0].min())
    if requested is not None:
        return tuple(requested), []
    ks = tuple(k for k in DEFAULT_LABELS_PER_CLASS if k <= smallest)
    dropped = [k for k in DEFAULT_LABELS_PER_CLASS if k > smallest]
    rows = "1 row" if smallest == 1 else f"{smallest} rows"
    notes = [f"fewshot: left out {dropped} labels per class (the smallest training class has {rows})"] \
        if dropped else []
    return ks, notes


def _run_fewshot(data: ProbeData, ctx):
    from .fewshot import fewshot_curve

    ks, notes = _feasible_labels_per_class(data.y_train, ctx.labels_per_class)
    for note in notes:
        ctx.note(note)
    if not ks:  # cannot happen with the defaults (1 label a class is always there); kept as a guard
        raise DataTooSmall("a class has too few training rows for any labels-per-class value")
    return fewshot_curve(data.X_train, data.y_train, data.X_test, data.y_test, labels_per_class=ks,
                         seeds=ctx.seeds, methods=ctx.fewshot_methods)


def _check_fewshot(data: ProbeData, ctx):
    from ._common import check_choices
    from .registry import fewshot_methods

    if ctx.fewshot_methods is not None:
        check_choices("few-label methods", ctx.fewshot_methods, fewshot_methods())


def _plot_fewshot(items, out, context):
    from ..plots import plot_fewshot

    by_store = dict(items)
    return [plot_fewshot(by_store if len(by_store) > 1 else next(iter(by_store.values())), out / "fewshot.png")]


# --------------------------------------------------------------------------- anomaly

def _normal_class(data: ProbeData, spec) -> tuple[int, str]:
    """``--normal-class`` -> (id, name), checked against the rows that must hold it."""
    # an unlabelled TRAIN store is all normal (a folder of good images); the name then picks the
    # normal class among the TEST labels
    side, where = (data.y_train, "TRAIN") if data.has_train_labels else (data.y_test, "TEST")
    c = resolve_class(spec, data.label_names, side)
    name = class_names(data.label_names, side)[c]
    if not np.any(side == c):
        raise ConfigError(f"--normal-class: {where} has no rows of class {name!r}"
                          + (" (it occurs only in TEST)" if where == "TRAIN" else ""))
    return c, name


def _check_anomaly(data: ProbeData, ctx) -> None:
    if ctx.normal_class is not None:
        _normal_class(data, ctx.normal_class)


def _run_anomaly(data: ProbeData, ctx):
    from .anomaly import anomaly_probe, one_class_protocol

    extra_test, fpr, seed = data.extras_test, ctx.fpr, ctx.seed
    if ctx.normal_class is not None:
        c, name = _normal_class(data, ctx.normal_class)
        normal = data.y_train == c if data.has_train_labels else np.ones(data.y_train.size, dtype=bool)
        is_anomaly = None
        if data.has_test_labels:
            if (data.y_test >= 0).all():
                is_anomaly = (data.y_test != c).astype(np.int64)
                if is_anomaly.min() == is_anomaly.max():
                    ctx.note(f"anomaly: every test row is {'an anomaly' if is_anomaly[0] else 'normal'} "
                             f"(normal class {name!r}), so no AUROC/AUPR")
            else:
                ctx.note("anomaly: some test rows have no label, so no AUROC/AUPR")
        try:
            return anomaly_probe(data.X_train[normal], data.X_test, is_anomaly,
                                 extra_normal={n: a[normal] for n, a in data.extras_train.items()},
                                 extra_test=extra_test, fpr=fpr, normal_class=name, seed=seed)
        except DataTooSmall as err:
            raise DataTooSmall(f"normal class {name!r}: {err}") from None
    if data.has_train_labels and data.has_test_labels:
        if extra_test:
            # a store's per-row scores come from one model trained on every class; the protocol
            # needs a model trained on the normal class alone, so they would measure nothing here
            ctx.note(f"anomaly: {', '.join(sorted(extra_test))} left out of the one-class protocol "
                     "(the model saw every class); use --normal-class to score them")
        return one_class_protocol(data.X_train, data.y_train, data.X_test, data.y_test,
                                  label_names=class_names(data.label_names, data.y_train), seed=seed)
    if data.has_test_labels:
        ctx.note("anomaly: every training row counts as normal; name the normal test class with "
                 "--normal-class to measure AUROC")
    else:
        ctx.note("anomaly: no labels, so every training row counts as normal and no AUROC is measured")
    return anomaly_probe(data.X_train, data.X_test, None, extra_normal=data.extras_train,
                         extra_test=extra_test, fpr=fpr, seed=seed)


def _plot_anomaly(items, out, context):
    from ..plots import file_label, plot_roc

    written = []
    for store, rec in items:
        if rec.probe != "anomaly":  # the one-class protocol has no per-row scores to write
            continue
        slug = file_label(store)
        path = out / f"anomaly_scores_{slug}.csv"
        rec.scores_frame(keys=context.keys_for(store)).to_csv(path, index=False)
        written.append(path)
        if any(s.get("roc") for s in rec.scores.values()):
            written.append(plot_roc(rec, out / f"roc_{slug}.png", title=f"{store}: anomaly scores"))
    return written


def _anomaly_lines(rec, where: str) -> list:
    name = getattr(rec, "normal_class", None)
    if rec.probe != "anomaly" or name is None:
        return []
    return [f"anomaly{where}: normal class {name!r}; test rows of every other class are anomalies"]


# --------------------------------------------------------------------------- the entries

register_probe("linear", _run_linear, needs_labels=True, plots=_plot_linear,
               description="logistic regression")
register_probe("knn", _run_knn, needs_labels=True, description="k-NN classifier")
register_probe("cluster", _run_cluster, needs_labels=False, check=_check_cluster,
               description="k-means and GMM clusters of the test rows (or a conv-vade model's own)")
register_probe("fewshot", _run_fewshot, needs_labels=True, plots=_plot_fewshot, check=_check_fewshot,
               description="accuracy with few labels per class")
register_probe("anomaly", _run_anomaly, needs_labels=False, records=("anomaly", "one_class"),
               check=_check_anomaly, plots=_plot_anomaly, table_lines=_anomaly_lines,
               description="anomaly scores and their AUROC")

#: The built-in task names; :func:`~cvae_features.probes.registry.probe_names` lists every registered one.
TASKS = probe_names()
