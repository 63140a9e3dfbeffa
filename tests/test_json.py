"""Strict JSON everywhere: one converter (cvae_features._json), and every ``--json`` output parses without NaN."""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cvae_cli.main import cli
from cvae_features._json import dumps, to_builtin
from cvae_features.probes import register_probe, unregister_probe
from cvae_features.probes._common import ResultRecord
from cvae_features.store import StoreWriter


def _refuse(name):
    raise ValueError(f"not JSON: {name}")


def strict_loads(text: str):
    """json.loads that rejects NaN, Infinity and -Infinity (which Python's json accepts by default)."""
    return json.loads(text, parse_constant=_refuse)


def test_strict_parser_rejects_what_plain_json_dumps_lets_through():
    with pytest.raises(ValueError, match="not JSON: NaN"):
        strict_loads(json.dumps({"x": float("nan")}))


@dataclass
class _Point:
    where: Path
    value: float


class _Record:
    def to_dict(self):
        return {"kept": np.float32(0.5), "bad": np.float64("-inf")}


def test_converter_on_non_finite_numpy_paths_dataclasses_and_nesting():
    value = {
        "nan": float("nan"), "inf": math.inf, "-inf": -math.inf, "f32_nan": np.float32("nan"),
        "i64": np.int64(7), "b": np.bool_(True), "f": np.float64(1.5), 3: "int key",
        "arr": np.array([[1.0, np.nan], [np.inf, 2.0]]), "ints": np.arange(3, dtype=np.int16),
        "nested": [(np.float32(2.0), {"deep": [np.nan, Path("/tmp/x.h5")]})],
        "point": _Point(Path("run/model.pt"), float("inf")), "record": _Record(), "none": None, "text": "NaN",
    }
    out = to_builtin(value)
    assert out == {
        "nan": None, "inf": None, "-inf": None, "f32_nan": None, "i64": 7, "b": True, "f": 1.5, "3": "int key",
        "arr": [[1.0, None], [None, 2.0]], "ints": [0, 1, 2],
        "nested": [[2.0, {"deep": [None, "/tmp/x.h5"]}]],
        "point": {"where": "run/model.pt", "value": None}, "record": {"kept": 0.5, "bad": None},
        "none": None, "text": "NaN",
    }
    assert type(out["i64"]) is int and type(out["b"]) is bool and type(out["f"]) is float
    assert strict_loads(dumps(value, indent=2)) == out


def test_dumps_never_writes_invalid_json():
    with pytest.raises(TypeError):
        dumps({"x": object()})  # an unknown object is an error, never a str() or a NaN
    assert dumps([np.nan, 1], sort_keys=True) == "[null, 1]"


# --------------------------------------------------------------------------- every --json of the CLI

@dataclass
class _NormSpread(ResultRecord):
    probe = "norm-spread"
    norm_cv: float  # std / mean of the test rows' norms: 0 / 0 = NaN when every row is zero (a collapsed encoder)

    def summary(self):
        return {"norm_cv": self.norm_cv}


def _norm_spread(data, ctx):
    norms = np.linalg.norm(data.X_test, axis=1)
    with np.errstate(invalid="ignore"):
        return _NormSpread(float(norms.std() / norms.mean()))


@pytest.fixture
def norm_spread():
    register_probe("norm-spread", _norm_spread, needs_labels=False, description="spread of the row norms")
    yield
    unregister_probe("norm-spread")


def _zero_store(path):
    keys = [f"img/{i:03d}.png" for i in range(40)]
    with StoreWriter.create(path, feature_kind="raw", dim=3, source="generated", plan_keys=keys,
                            preprocess={"size": 8, "channels": 1, "resize": "crop"}, label_names=[]) as w:
        w.write_batch(np.arange(40), np.zeros((40, 3), np.float32), np.full(40, -1))
    return path


def _json_of(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return strict_loads(result.stdout)


# PCA of all-zero features (the report's feature map) divides 0 by 0 for its explained-variance ratio
@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")
def test_probe_json_writes_a_nan_metric_as_null(norm_spread, tmp_path):
    store = _zero_store(tmp_path / "zero.h5")
    with np.errstate(invalid="ignore"):
        assert math.isnan(_norm_spread(type("D", (), {"X_test": np.zeros((2, 3))}), None).norm_cv)
    data = _json_of("probe", store, "--task", "norm-spread,cluster", "--clusters", "2", "--json",
                    "-o", tmp_path / "rep")
    cluster, rec = data["stores"]["zero"]  # registration order: the built-in cluster first
    assert rec == {"probe": "norm-spread", "norm_cv": None}
    assert {"store": "zero", "probe": "norm-spread", "metric": "norm_cv", "value": None, "std": None} \
        in data["summary"]
    assert cluster["methods"]["kmeans"]["silhouette"] is None  # every row in one place
    saved = strict_loads((tmp_path / "rep" / "report.json").read_text())
    assert saved["stores"] == data["stores"]


def test_every_json_output_is_strict(class_folder, tmp_path):
    folder, _ = class_folder
    run = tmp_path / "run"
    trained = _json_of("train", folder, "-o", run, "--epochs", "1", "--latent-dim", "2", "--val-fraction", "0",
                       "--batch-size", "4", "--no-progress", "--json")
    assert trained["epochs_run"] == 1 and trained["best_val_loss"] is None and trained["n_train"] == 8
    for name in ("config.json", "history.json"):
        strict_loads((run / name).read_text())

    shown = _json_of("show", run, "-o", tmp_path / "show", "--n", "2", "--json")
    assert shown["n_images"] == 2 and shown["out_dir"] == str(tmp_path / "show")
    assert strict_loads((tmp_path / "show" / "show.json").read_text())["index"] == "index.html"

    store = tmp_path / "f.h5"
    extracted = _json_of("extract", folder, "-o", store, "--model", run, "--workers", "0", "--no-progress",
                         "--json")
    assert extracted["n_rows"] == 8 and extracted["path"] == str(store) and extracted["run_dir"] is None
    info = _json_of("info", store, "--json", "--skipped")
    assert info["n_rows"] == 8 and info["skipped"] == [] and info["label_names"] == ["circle", "square"]
