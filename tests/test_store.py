"""The HDF5 feature store: round trip, format attributes, errors, committed rows, the v1 fixture."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from cvae_features.errors import CvaeError, ConfigError, ModelError, StoreError
from cvae_features.model import ConvVAE
from cvae_features.featurizers import pca_fingerprint
from cvae_features.resolve import load_model
from cvae_features.store import FORMAT, FORMAT_VERSION, FeatureStore, StoreWriter, is_store

from _stores import pca_fields, vae_fields

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE = FIXTURES / "store_v1.h5"
FIXTURE_V2 = FIXTURES / "store_v2.h5"


def _load_fixture_module():
    # by path, so it works whether or not tests/ is a package
    import importlib.util

    spec = importlib.util.spec_from_file_location("cvae_store_fixtures", FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fx = _load_fixture_module()
PRE = {"size": 8, "channels": 1, "resize": "crop"}


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    return ConvVAE(image_size=8, channels=1, latent_dim=4, widths=(4,))


def _write(path, n_batches=2, batch=3, carry_weights=True, compression=None, model=None):
    """A vae store with n_batches * batch rows, one skipped file per batch; returns (model, arrays)."""
    model = model or _tiny_model()
    n = n_batches * batch
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(n, 4)).astype(np.float32)
    extras = {"logvar": rng.normal(size=(n, 4)).astype(np.float32),
              "recon_error": rng.uniform(10, 20, n).astype(np.float32),
              "neg_elbo": rng.uniform(20, 30, n).astype(np.float32)}
    labels = np.arange(n, dtype=np.int64) % 3 - 1  # -1, 0, 1, ...
    keys = [f"c{i % 2}/img{i:03d}.png" for i in range(n)]
    bad = [f"bad/{b}.png" for b in range(n_batches)]
    plan = []
    for b in range(n_batches):
        plan += keys[b * batch:(b + 1) * batch] + [bad[b]]
    writer = StoreWriter.create(path, feature_kind="vae", dim=4, preprocess=PRE, source="folder imgs/",
                                plan_keys=plan, label_names=["c0", "c1"], extras=tuple(extras),
                                compression=compression, **vae_fields(model, carry_weights))
    with writer:
        for b in range(n_batches):
            rows = slice(b * batch, (b + 1) * batch)
            start = b * (batch + 1)
            writer.write_batch(np.arange(start, start + batch), feats[rows], labels[rows],
                               extras={k: v[rows] for k, v in extras.items()},
                               skipped_index=[start + batch], reasons=[f"truncated file {b}"])
    return model, dict(features=feats, labels=labels, keys=keys, bad=bad, **extras)


@pytest.mark.parametrize("compression", [None, "gzip", "lzf"])
def test_round_trip_every_field(tmp_path, compression):
    path = tmp_path / "s.h5"
    model, a = _write(path, compression=compression)
    with FeatureStore(path) as s:
        assert s.n_rows == 6 and s.dim == 4 and s.feature_kind == "vae"
        np.testing.assert_array_equal(s.features, a["features"])
        assert s.features.dtype == np.float32 and s.labels.dtype == np.int64
        np.testing.assert_array_equal(s.labels, a["labels"])
        assert s.keys == a["keys"]
        assert s.label_names == ["c0", "c1"] and s.has_labels
        assert s.extras == ["logvar", "recon_error", "neg_elbo"]
        for name in s.extras:
            np.testing.assert_array_equal(s.extra(name), a[name])
        assert s.skipped["key"].tolist() == a["bad"]
        assert s.skipped["reason"].tolist() == ["truncated file 0", "truncated file 1"]
        assert s.n_skipped == 2 and s.is_complete and s.n_pending == 0
        md = s.metadata
        assert md.columns.tolist() == ["key", "label", "label_name"]
        assert md["label"].tolist() == a["labels"].tolist()
        assert md["label_name"].iloc[1] == "c0" and md["label_name"].iloc[2] == "c1"
        assert md["label_name"].isna().iloc[0]  # label -1 has no name
        assert s.label_counts() == {"c0": 2, "c1": 2, "unknown": 2}
        assert s.model_fingerprint == model.fingerprint()
        assert s.model_config == model.config.to_dict()
        assert s.has_model
        loaded = load_model(path)
        assert loaded.fingerprint() == model.fingerprint()
        assert s.preprocess_dict == PRE
        pre = s.preprocess
        assert (pre.size, pre.channels, pre.resize) == (8, 1, "crop")
        attrs = s.attrs
        assert attrs["compression"] == (compression or "none")
        assert attrs["source"] == "folder imgs/" and attrs["tool_version"]
        assert attrs["created"] <= attrs["updated"]
        summary = s.summary()
        json.dumps(summary)  # machine readable as is
        assert summary["n_rows"] == 6 and summary["complete"] and summary["plan"] == {"pending": 0, "done": 6,
                                                                                      "skipped": 2}
        # chunked reads give the same rows
        parts = [rows for _, rows in s.iter_rows(batch_size=4)]
        np.testing.assert_array_equal(np.concatenate(parts), a["features"])
        assert s.pca is None and s.extra("logvar").shape == (6, 4)
    with h5py.File(path, "r") as f:
        assert f["features"].chunks is not None and f["features"].maxshape == (None, 4)
        assert f["features"].compression == compression


def test_load_model_through_model_module(tmp_path):
    from cvae_features.model import load_model

    path = tmp_path / "s.h5"
    model, _ = _write(path)
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(load_model(path).embed(x), model.embed(x))


def test_every_element_carries_an_encoding(tmp_path):
    path = tmp_path / "s.h5"
    _write(path)
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == FORMAT and f.attrs["format_version"] == FORMAT_VERSION
        untagged = []
        f.visititems(lambda name, obj: untagged.append(name) if "encoding-type" not in obj.attrs else None)
        assert untagged == []
        grp = f["featurizer_state"]
        assert grp.attrs["encoding-type"] == "featurizer-state" and grp.attrs["kind"] == "vae"
        assert {name: grp[name].attrs["encoding-type"] for name in grp} == {name: "array" for name in grp}
        assert f.attrs["format_version"] == 2 and f.attrs["model_arch"] == "conv-vae"
        assert int(f.attrs["n_rows"]) == 6


def test_fingerprint_only_store(tmp_path):
    path = tmp_path / "s.h5"
    model, _ = _write(path, carry_weights=False)
    with FeatureStore(path) as s:
        assert s.model_fingerprint == model.fingerprint() and not s.has_model
        with pytest.raises(ModelError, match="carries only the fingerprint"):
            load_model(path)


def test_raw_and_pca_stores(tmp_path):
    mean = np.linspace(0, 1, 64)
    comps = np.eye(2, 64)
    pca = {"mean": mean, "components": comps, "explained_variance": np.array([2.0, 1.0])}
    path = tmp_path / "p.h5"
    with StoreWriter.create(path, feature_kind="pca", dim=2, preprocess=PRE, source="digits",
                            plan_keys=["a", "b"], **pca_fields(pca, PRE)) as w:
        w.write_batch([0, 1], np.ones((2, 2), np.float32), [-1, -1])
    with FeatureStore(path) as s:
        assert s.feature_kind == "pca" and not s.has_labels and s.label_names == []
        np.testing.assert_array_equal(s.pca["components"], comps)
        assert s.model_fingerprint == pca_fingerprint(mean, comps, PRE)
        with pytest.raises(ModelError, match="pca features"):
            load_model(path)
    path = tmp_path / "r.h5"
    with StoreWriter.create(path, feature_kind="raw", dim=64, preprocess=PRE, source="x", plan_keys=["a"]) as w:
        w.write_batch([0], np.zeros((1, 64), np.float32), [0])
    with FeatureStore(path) as s:
        assert s.model_fingerprint is None and s.model_config is None and s.extras == []


def test_writer_validates(tmp_path):
    with pytest.raises(ConfigError, match="feature_kind='no pe'"):
        StoreWriter.create(tmp_path / "a.h5", feature_kind="no pe", dim=2, preprocess=PRE, source="", plan_keys=[])
    with pytest.raises(ConfigError, match="compression='zip'"):
        StoreWriter.create(tmp_path / "a.h5", feature_kind="raw", dim=2, preprocess=PRE, source="", plan_keys=[],
                           compression="zip")
    with StoreWriter.create(tmp_path / "b.h5", feature_kind="raw", dim=2, preprocess=PRE, source="",
                            plan_keys=["a"]) as w:
        with pytest.raises(StoreError, match="expected \\(1, 2\\)"):
            w.write_batch([0], np.zeros((1, 3), np.float32), [0])


# -- errors on opening ------------------------------------------------------------

def test_open_errors(tmp_path):
    with pytest.raises(StoreError, match="feature store not found: .*missing.h5"):
        FeatureStore(tmp_path / "missing.h5")
    with pytest.raises(StoreError, match="is a directory"):
        FeatureStore(tmp_path)
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(StoreError, match="is not an HDF5 file"):
        FeatureStore(text)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(StoreError, match="HDF5 file but not a cvae feature store"):
        FeatureStore(other)
    assert not is_store(other) and not is_store(text)
    # a CvaeError is also a ValueError, one line
    with pytest.raises(ValueError) as info:
        FeatureStore(other)
    assert isinstance(info.value, CvaeError) and "\n" not in str(info.value)


def test_newer_versions_say_upgrade(tmp_path):
    path = tmp_path / "s.h5"
    _write(path)
    assert is_store(path)
    newer = tmp_path / "newer.h5"
    shutil.copy(path, newer)
    with h5py.File(newer, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(StoreError, match=f"format version {FORMAT_VERSION + 1}.*upgrade cvae-features"):
        FeatureStore(newer)
    newer_element = tmp_path / "newer_element.h5"
    shutil.copy(path, newer_element)
    with h5py.File(newer_element, "r+") as f:
        f["features"].attrs["encoding-version"] = "7"
    with pytest.raises(StoreError, match="/features is row-array version 7.*upgrade cvae-features"):
        FeatureStore(newer_element)


# -- committed rows ------------------------------------------------------------------

def test_uncommitted_tail_is_invisible_and_truncated(tmp_path):
    path = tmp_path / "s.h5"
    _, a = _write(path, n_batches=1, batch=3)
    # a writer that died after writing data but before moving the counter: rows exist, uncommitted
    with h5py.File(path, "r+") as f:
        for name in ("features", "keys", "labels", "logvar", "recon_error", "neg_elbo"):
            f[name].resize(5, axis=0)
        f["keys"][3:] = np.array(["late/x.png", "late/y.png"], dtype=object)
    with FeatureStore(path) as s:
        assert s.n_rows == 3 and s.features.shape == (3, 4) and len(s.keys) == 3
        assert s.is_complete
    with StoreWriter.append_to(path) as w:
        assert w.n_rows == 3
        new = w.add_plan(["late/x.png", "late/y.png"])
        np.testing.assert_array_equal(new, [4, 5])
        np.testing.assert_array_equal(w.pending(), [4, 5])
    with h5py.File(path, "r") as f:
        assert f["features"].shape == (3, 4) and f["keys"].shape == (3,)
    with FeatureStore(path) as s:
        assert not s.is_complete and s.n_pending == 2


def test_status_is_recomputed_from_committed_rows(tmp_path):
    path = tmp_path / "s.h5"
    _write(path, n_batches=2, batch=3)
    # stopped after the commit but before the plan status was marked: the rows still count once
    with h5py.File(path, "r+") as f:
        f["plan/status"][4:] = 0
    with FeatureStore(path) as s:
        assert not s.is_complete and s.n_pending == 4
    with StoreWriter.append_to(path) as w:
        assert len(w.pending()) == 0
    with FeatureStore(path) as s:
        assert s.is_complete and s.n_rows == 6


def test_merge_label_names(tmp_path):
    path = tmp_path / "s.h5"
    _write(path)
    with StoreWriter.append_to(path) as w:
        np.testing.assert_array_equal(w.merge_label_names(["c1", "c9", "c0"]), [1, 2, 0])
    with FeatureStore(path) as s:
        assert s.label_names == ["c0", "c1", "c9"]


# -- backwards compatibility ------------------------------------------------------------

def test_fixture_v1_exact_values():
    with FeatureStore(FIXTURE) as s:
        assert s.attrs["format_version"] == 1 and s.attrs["tool_version"] == "0.1.0"
        assert s.feature_kind == "vae" and s.n_rows == 5 and s.dim == 3 and s.is_complete
        assert s.keys == fx.KEYS
        assert s.labels.tolist() == [0, 0, 1, 1, -1] and s.label_names == ["ants", "bees"]
        np.testing.assert_array_equal(s.features, [[0, .125, .25], [1.25, 1.375, 1.5], [2.5, 2.625, 2.75],
                                                   [3.75, 3.875, 4], [5, 5.125, 5.25]])
        np.testing.assert_array_equal(s.extra("recon_error"), [20, 21.5, 23, 24.5, 26])
        np.testing.assert_array_equal(s.extra("neg_elbo"), [21.25, 22.75, 24.25, 25.75, 27.25])
        np.testing.assert_array_equal(s.extra("logvar")[4], [-1, -1.25, -1.5])
        assert s.skipped.values.tolist() == [["ants/broken.png", "cannot identify image file"],
                                             ["bees/empty.jpg", "file is empty"]]
        assert s.preprocess_dict == {"size": 8, "channels": 1, "resize": "crop"}
        assert s.model_config["latent_dim"] == 3 and s.model_config["widths"] == [2]
        assert s.model_fingerprint == "62fdb7fd422ffc0a"
        model = load_model(s.path)
        assert model.fingerprint() == "62fdb7fd422ffc0a"
        assert float(model.to_latent.bias.detach()[0]) == pytest.approx(np.sin(0 + 8) / 4)  # 9th tensor in name order


def test_fixture_v2_same_content_as_v1_plus_the_arch():
    with FeatureStore(FIXTURE) as v1, FeatureStore(FIXTURE_V2) as v2:
        assert v2.attrs["format_version"] == 2 and v2.model_arch == "conv-vae" == v1.model_arch
        assert "featurizer_state" in v2._f and "model" not in v2._f and "model" in v1._f
        np.testing.assert_array_equal(v1.features, v2.features)
        assert v1.keys == v2.keys and v1.labels.tolist() == v2.labels.tolist()
        assert v1.skipped.equals(v2.skipped) and v1.extras == v2.extras
        assert v1.model_fingerprint == v2.model_fingerprint == "62fdb7fd422ffc0a"
        assert v1.featurizer_state.keys() == v2.featurizer_state.keys()
        for name, values in v1.featurizer_state.items():
            np.testing.assert_array_equal(values, v2.featurizer_state[name])
    assert load_model(FIXTURE_V2).fingerprint() == load_model(FIXTURE).fingerprint() == "62fdb7fd422ffc0a"


def test_fixture_regenerates_identically(tmp_path):
    fresh = fx.write_store(tmp_path / "store_v2.h5")
    with FeatureStore(FIXTURE_V2) as old, FeatureStore(fresh) as new:
        np.testing.assert_array_equal(old.features, new.features)
        assert old.keys == new.keys and old.model_fingerprint == new.model_fingerprint
        assert old.skipped.equals(new.skipped)
        for name in old.extras:
            np.testing.assert_array_equal(old.extra(name), new.extra(name))
