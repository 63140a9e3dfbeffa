"""Probes: plain functions over feature arrays that measure how useful features are.

Each returns a result record (a dataclass with ``to_dict()`` and ``summary()``) and
prints nothing. Hyper-parameters and preprocessing are chosen on training rows only;
test labels are used for the final score and nothing else. Data too small for a probe
raise :class:`DataTooSmall` (a ``ConfigError``) saying what is short and the minimum.
The suite, ``cvae probe`` and the report find probes through :mod:`.registry`.
"""

from ._common import PREPROCESSINGS, DataTooSmall, FeaturePrep
from .anomaly import AnomalyResult, AnomalyScorer, OneClassResult, anomaly_probe, anomaly_scores, one_class_protocol
from .cluster import ClusterProbeResult, cluster_accuracy, cluster_probe
from .fewshot import FewShotResult, draw_labelled, fewshot_curve
from .knn import KnnProbeResult, knn_probe
from .linear import LinearProbeResult, linear_probe
from .registry import (FewShotMethod, ProbeContext, ProbeSpec, fewshot_methods, get_fewshot_method, get_probe,
                       probe_names, register_fewshot_method, register_probe, unregister_fewshot_method,
                       unregister_probe)
from .suite import ProbeData, ProbeRun, load_probe_data, probe_stores, run_probes
from ._builtin import TASKS  # importing it registers the built-in probes (after suite, which it uses)

__all__ = [
    "PREPROCESSINGS", "FeaturePrep", "DataTooSmall",
    "linear_probe", "LinearProbeResult",
    "knn_probe", "KnnProbeResult",
    "cluster_probe", "cluster_accuracy", "ClusterProbeResult",
    "fewshot_curve", "draw_labelled", "FewShotResult",
    "anomaly_probe", "anomaly_scores", "one_class_protocol", "AnomalyScorer", "AnomalyResult", "OneClassResult",
    "TASKS", "ProbeData", "ProbeRun", "load_probe_data", "probe_stores", "run_probes",
    "ProbeSpec", "ProbeContext", "register_probe", "unregister_probe", "get_probe", "probe_names",
    "FewShotMethod", "register_fewshot_method", "unregister_fewshot_method", "get_fewshot_method",
    "fewshot_methods",
]
