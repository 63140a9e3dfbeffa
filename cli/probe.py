"""``cvae probe``: measure feature stores with the probes and report a table, JSON, CSV and plots."""

from pathlib import Path

import click

from ._common import echo_json, library_errors


def _name_list(ctx, param, value):
    """A comma-separated option as a tuple of its non-empty names (None when not given)."""
    return None if value is None else tuple(v.strip() for v in value.split(",") if v.strip())


def _int_list(ctx, param, value):
    if value is None:
        return None
    try:
        items = tuple(int(v) for v in _name_list(ctx, param, value))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 1,5,10,100, got {value!r}") from None
    if not items or min(items) < 1:
        raise click.BadParameter(f"expected positive integers, got {value!r}")
    return items


def task_help() -> str:
    """The --task help, from the probe registry (so a registered probe is listed)."""
    from cvae_features.probes import get_probe, probe_names

    listed = ", ".join(f"{n} ({get_probe(n).description})" for n in probe_names())
    return f"Comma list of {listed}, or 'all'."


class _TaskOption(click.Option):
    """--task, whose help lists the probes registered when the help is shown."""

    def get_help_record(self, ctx):
        self.help = task_help()
        return super().get_help_record(ctx)


class _UsageLine(click.ClickException):
    """A usage mistake told in one line (``Error: ...``) with click's usage exit code 2."""

    exit_code = 2


def _labels(train_path, compare_path):
    a, b = Path(train_path), Path(compare_path) if compare_path else None
    if b is None:
        return a.stem, None
    if a.stem != b.stem:
        return a.stem, b.stem
    return str(a), str(b)


@click.command("probe")
@click.argument("train", metavar="TRAIN.h5")
@click.option("--test", "test_path", default=None, metavar="TEST.h5",
              help="Test store (same model). Default: a stratified seeded split of TRAIN (see --test-fraction).")
@click.option("--task", "task", cls=_TaskOption, default="all", show_default=True, metavar="TASK,...",
              help="Comma list of tasks, or 'all' (listed in --help).")
@click.option("--compare", "compare_path", default=None, metavar="OTHER.h5",
              help="A second training store measured the same way and shown side by side.")
@click.option("--compare-test", "compare_test", default=None, metavar="OTHER_TEST.h5",
              help="Test store for --compare (needs --compare; default: a split of OTHER.h5).")
@click.option("--labels-per-class", "labels_per_class", default=None, callback=_int_list, metavar="K,K,...",
              help="Few-label sizes; each must fit every training class (an error otherwise). "
                   "Default: 1,5,10,100 less the sizes a class cannot supply.")
@click.option("--seeds", default=5, show_default=True, type=click.IntRange(1, 100),
              help="Few-label draws per size (seeds 0..N-1).")
@click.option("--normal-class", "normal_class", default=None, metavar="NAME|index:N",
              help="Anomaly task: the normal class; other test classes are anomalies. A class name "
                   "(a bare number is a name too: with classes '1','2','3', '1' is the class named '1'), "
                   "or index:N for the class with id N (its place in the store's class list). "
                   "Default: the one-class protocol over every class (labelled stores).")
@click.option("--fpr", default=0.05, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="False-positive rate at which anomaly thresholds are calibrated on held-out normal rows.")
@click.option("--clusters", "n_clusters", default=None, type=click.IntRange(min=2),
              help="Clusters for the cluster task. Default: the number of classes (10 without labels).")
@click.option("--cluster-methods", "cluster_methods", default=None, metavar="M,M,...",
              callback=_name_list,
              help="Cluster task methods: kmeans, gmm, umap-gmm (UMAP + full GMM, the N2D recipe; needs "
                   "the umap extra), prior (the clusters of the store's conv-vade model: argmax of its "
                   "mixture prior's p(c | mu)). Default: kmeans,gmm.")
@click.option("--fewshot-methods", "fewshot_methods", default=None, metavar="M,M,...",
              callback=_name_list,
              help="Few-label task methods: logistic, knn, label_spreading, self_training, m2 (Kingma's "
                   "semi-supervised VAE on the features; about a minute per draw on 2 cores), or any "
                   "registered one. Default: all but m2.")
@click.option("--test-fraction", "test_fraction", default=0.2, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Share of TRAIN held out as test rows when --test is not given.")
@click.option("--map", "map_method", default="pca", show_default=True, type=click.Choice(["pca", "tsne"]),
              help="2-D map of the test features drawn with -o.")
@click.option("--json", "as_json", is_flag=True, help="Print every result record as JSON instead of the table.")
@click.option("-o", "--output", "out_dir", default=None, type=click.Path(file_okay=False), metavar="REPORT_DIR",
              help="Write report.json, results.csv, report.txt and PNG plots here (created).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seeds the train/test split, the hyper-parameter selection splits and clustering.")
@library_errors
def probe(train, test_path, task, compare_path, compare_test, labels_per_class, seeds, normal_class, fpr,
          n_clusters, cluster_methods, fewshot_methods, test_fraction, map_method, as_json, out_dir, seed):
    """Measure the features in TRAIN.h5 (and --test TEST.h5) with scikit-learn probes.

    Hyper-parameters and preprocessing are chosen on training rows only; test
    labels are used for the final scores. Stores without labels get the
    unsupervised parts only (clustering, anomaly scores without AUROC).

    A probe the data are too small for is skipped with one line saying what is
    short and the minimum (also under "skipped" in the JSON and report); the
    command fails only when no probe could run. TEST must not be TRAIN again
    (same file, or every row the same key and features): that is refused.
    Class names that differ between TRAIN and TEST are warned about (stderr,
    "warnings" in the JSON and report).
    """
    from cvae_features import report
    from cvae_features.probes import probe_stores
    from cvae_features.probes.suite import parse_tasks
    from tqdm import tqdm

    if compare_test and not compare_path:
        raise _UsageLine("--compare-test needs --compare OTHER.h5 (the store it is the test store of)")
    tasks = parse_tasks(task)
    label_a, label_b = _labels(train, compare_path)
    pairs = [(label_a, train, test_path)] + ([(label_b, compare_path, compare_test)] if compare_path else [])
    # the bar shows on a terminal only (disable=None), so piped --json output stays clean
    bar = tqdm(total=len(pairs) * len(tasks), unit="task", disable=None, leave=False)
    started = []

    def on_task(label, name):
        if started:  # the task announced before this one has finished
            bar.update(1)
        started.append(name)
        bar.set_description(f"{label}: {name}")

    run = probe_stores(pairs, tasks, test_fraction=test_fraction, seed=seed, on_task=on_task,
                       labels_per_class=labels_per_class, seeds=seeds, normal_class=normal_class, fpr=fpr,
                       n_clusters=n_clusters, cluster_methods=cluster_methods, fewshot_methods=fewshot_methods)
    bar.close()
    if run.n_records == 0:
        reasons = "; ".join(f"{s['store'] + ' ' if len(pairs) > 1 else ''}{s['task']}: {s['reason']}"
                            for s in run.skipped)
        raise click.ClickException(f"no probe could run: {reasons}")

    if as_json:
        echo_json(report.to_json(run.results, meta=run.meta, skipped=run.skipped, warnings=run.warnings))
    else:
        for label, info in run.meta["runs"].items():
            how = (f"split {info['split']['n_train']}/{info['split']['n_test']} of {info['sources']['train']}"
                   if info["split"] else f"{info['sources']['train']} -> {info['sources']['test']}")
            click.echo(f"{label}: {info['n_train']} train / {info['n_test']} test rows, dim {info['dim']} ({how})")
        click.echo(report.format_table(run.results))
    for note in run.notes:
        click.echo(f"note: {note}", err=True)
    for warning in run.warnings:
        click.echo(f"warning: {warning}", err=True)
    if out_dir:
        written = report.write_report(run.results, out_dir, meta=run.meta, map_method=map_method, seed=seed,
                                      **run.report_inputs())
        click.echo(f"wrote {len(written)} files to {out_dir}/", err=as_json)
