"""The probes' registries: task name -> :class:`ProbeSpec`, few-label method name -> :class:`FewShotMethod`.

A new probe is one :func:`register_probe` call: the suite (:func:`~cvae_features.probes.suite.run_probes`),
``cvae probe --task`` and the report (table, JSON, CSV, plots) all read the registry.
A new few-label method is one :func:`register_fewshot_method` call: :func:`~cvae_features.probes.fewshot_curve`
runs every registered method by default. The built-in entries register themselves when
:mod:`cvae_features.probes` is imported (tasks in ``_builtin.py``, methods in ``fewshot.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..errors import ConfigError

_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


@dataclass
class ProbeContext:
    """The options of one :func:`run_probes` call, handed to every probe's ``run`` and ``check``.

    ``labels_per_class``, ``seeds`` (few-label), ``normal_class``, ``fpr`` (anomaly),
    ``n_clusters`` and ``cluster_methods`` (cluster), ``fewshot_methods`` (few-label) are the suite's options;
    a probe reads the ones it needs.
    ``notes`` collects one line per thing a probe skipped or changed (see :meth:`note`).
    """

    seed: int = 0
    labels_per_class: Optional[tuple] = None
    seeds: int = 5
    normal_class: Optional[str] = None
    fpr: float = 0.05
    n_clusters: Optional[int] = None
    cluster_methods: Optional[tuple] = None
    fewshot_methods: Optional[tuple] = None
    notes: list = field(default_factory=list)

    def note(self, text: str) -> None:
        """Record a line for the user (printed as ``note: ...`` and kept in report.json)."""
        self.notes.append(text)


@dataclass(frozen=True)
class ProbeSpec:
    """One probe as the suite, the CLI and the report know it.

    Attributes
    ----------
    name : str
        The task name (``cvae probe --task NAME``).
    run : callable
        ``run(data, ctx) -> record``: ``data`` a :class:`~cvae_features.probes.suite.ProbeData`,
        ``ctx`` a :class:`ProbeContext`; the record has ``probe``, ``to_dict()`` and ``summary()``
        (see :class:`~cvae_features.probes._common.ResultRecord`). Raise ``DataTooSmall`` to be skipped.
    needs_labels : bool
        Skipped (with a note) unless both TRAIN and TEST hold labels.
    description : str
        One line, shown in ``cvae probe --help``.
    records : tuple of str
        The ``probe`` names of the records ``run`` returns (default: ``(name,)``); the report
        finds the entry of a record through them.
    check : callable or None
        ``check(data, ctx)``: refuse bad options (ConfigError) before any probe runs.
    plots : callable or None
        ``plots(items, out_dir, context) -> list of Path``: the report's files for this probe;
        ``items`` is a list of ``(store_label, record)``, ``context`` a
        :class:`~cvae_features.report.ReportContext`.
    table_lines : callable or None
        ``table_lines(record, where) -> list of str``: lines under the text table (``where`` is
        ``" (store)"`` when several stores are shown, else ``""``).
    """

    name: str
    run: Callable
    needs_labels: bool
    description: str
    records: tuple = ()
    check: Optional[Callable] = None
    plots: Optional[Callable] = None
    table_lines: Optional[Callable] = None

    def __post_init__(self):
        if not self.records:
            object.__setattr__(self, "records", (self.name,))


@dataclass(frozen=True)
class FewShotMethod:
    """One few-label method of :func:`~cvae_features.probes.fewshot_curve`.

    ``predict(Z_lab, y_lab, Z_unl, Z_test, params) -> ndarray of shape (n_test,)``: the labelled
    rows ``Z_lab`` (n_lab, d) with labels ``y_lab``, the unlabelled training rows ``Z_unl``
    (None unless ``uses_unlabelled``) and the test rows ``Z_test``, all preprocessed; ``params``
    is the dict of ``fewshot_curve``'s settings (``C``, ``max_iter``, ``knn_neighbors``,
    ``spreading_neighbors``, ``spreading_alpha``, ``n_jobs``) and ``seed``, the seed of the draw
    (for methods that are random themselves). ``default``: run when no methods are named
    (False for methods too slow to run on every probe).
    """

    name: str
    predict: Callable
    uses_unlabelled: bool
    description: str
    default: bool = True


_PROBES: dict = {}
_FEWSHOT: dict = {}


def _check_entry(kind: str, name, description, table: dict, replace: bool) -> None:
    if not isinstance(name, str) or not _NAME.match(name) or name == "all":
        raise ConfigError(f"{kind} name: expected lowercase letters, digits, '-' or '_' (not 'all'), got {name!r}")
    if not isinstance(description, str) or not description.strip() or "\n" in description:
        raise ConfigError(f"{kind} {name!r}: expected a one-line description, got {description!r}")
    if name in table and not replace:
        raise ConfigError(f"{kind} {name!r} is registered already; unregister it first or pass replace=True")


def register_probe(name: str, run: Optional[Callable] = None, *, needs_labels: bool, description: str,
                   records=(), check=None, plots=None, table_lines=None, replace: bool = False):
    """Register a probe (see :class:`ProbeSpec`); returns the spec, or a decorator when ``run`` is left out.

    ``register_probe("norm", needs_labels=False, description="...")`` decorates a ``run`` function.
    A name registered already is refused unless ``replace=True``.
    """
    if run is None:
        def decorate(func):
            register_probe(name, func, needs_labels=needs_labels, description=description, records=records,
                           check=check, plots=plots, table_lines=table_lines, replace=replace)
            return func

        return decorate
    _check_entry("probe", name, description, _PROBES, replace)
    if not callable(run):
        raise ConfigError(f"probe {name!r}: expected a callable run(data, ctx), got {run!r}")
    spec = ProbeSpec(name, run, bool(needs_labels), description, tuple(records), check, plots, table_lines)
    _PROBES[name] = spec
    return spec


def unregister_probe(name: str) -> ProbeSpec:
    """Remove a probe from the registry; returns its spec."""
    get_probe(name)
    return _PROBES.pop(name)


def get_probe(name: str) -> ProbeSpec:
    """The spec of a registered probe; ConfigError naming the registered ones otherwise."""
    try:
        return _PROBES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"probe: expected one of {', '.join(_PROBES)}, got {name!r}") from None


def probe_names() -> tuple:
    """The registered task names, in registration order (the order ``all`` runs them in)."""
    return tuple(_PROBES)


def probe_for_record(record_probe: str) -> Optional[ProbeSpec]:
    """The spec whose ``records`` include a record's ``probe`` name, or None."""
    return next((s for s in _PROBES.values() if record_probe in s.records), None)


def register_fewshot_method(name: str, predict: Optional[Callable] = None, *, uses_unlabelled: bool,
                            description: str, default: bool = True, replace: bool = False):
    """Register a few-label method (see :class:`FewShotMethod`); returns it, or a decorator without ``predict``."""
    if predict is None:
        def decorate(func):
            register_fewshot_method(name, func, uses_unlabelled=uses_unlabelled, description=description,
                                    default=default, replace=replace)
            return func

        return decorate
    _check_entry("few-label method", name, description, _FEWSHOT, replace)
    if not callable(predict):
        raise ConfigError(f"few-label method {name!r}: expected a callable predict, got {predict!r}")
    method = FewShotMethod(name, predict, bool(uses_unlabelled), description, bool(default))
    _FEWSHOT[name] = method
    return method


def unregister_fewshot_method(name: str) -> FewShotMethod:
    """Remove a few-label method from the registry; returns it."""
    get_fewshot_method(name)
    return _FEWSHOT.pop(name)


def get_fewshot_method(name: str) -> FewShotMethod:
    """A registered few-label method; ConfigError naming the registered ones otherwise."""
    try:
        return _FEWSHOT[name]
    except (KeyError, TypeError):
        raise ConfigError(f"methods: expected one of {', '.join(_FEWSHOT)}, got {name!r}") from None


def fewshot_methods(default_only: bool = False) -> tuple:
    """The registered few-label method names, in registration order (``default_only``: those run when
    none are named)."""
    return tuple(name for name, m in _FEWSHOT.items() if m.default or not default_only)
