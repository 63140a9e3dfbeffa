"""Probes: plain functions over feature arrays that measure how useful features are.

Each returns a result record (a dataclass with ``to_dict()`` and ``summary()``) and
prints nothing. Hyper-parameters and preprocessing are chosen on training rows only;
test labels are used for the final score and nothing else. Data too small for a probe
raise :class:`DataTooSmall` (a ``ConfigError``) saying what is short and the minimum.
"""

from ._common import PREPROCESSINGS, DataTooSmall, FeaturePrep
from .anomaly import AnomalyResult, AnomalyScorer, OneClassResult, anomaly_probe, anomaly_scores, one_class_protocol
from .cluster import ClusterProbeResult, cluster_accuracy, cluster_probe
from .fewshot import FewShotResult, draw_labelled, fewshot_curve
from .knn import KnnProbeResult, knn_probe
from .linear import LinearProbeResult, linear_probe
from .suite import TASKS, ProbeData, ProbeRun, load_probe_data, probe_stores, run_probes

__all__ = [
    "PREPROCESSINGS", "FeaturePrep", "DataTooSmall",
    "linear_probe", "LinearProbeResult",
    "knn_probe", "KnnProbeResult",
    "cluster_probe", "cluster_accuracy", "ClusterProbeResult",
    "fewshot_curve", "draw_labelled", "FewShotResult",
    "anomaly_probe", "anomaly_scores", "one_class_protocol", "AnomalyScorer", "AnomalyResult", "OneClassResult",
    "TASKS", "ProbeData", "ProbeRun", "load_probe_data", "probe_stores", "run_probes",
]
