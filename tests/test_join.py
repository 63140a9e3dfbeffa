"""Joined stores (cvae join): the shards of one extraction read as one store, and nothing else is joined."""

import json
import math
import os
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

import cvae_features.join as join_module
from cvae_cli.main import cli
from cvae_features.data.sources import shard_of_key
from cvae_features.errors import ConfigError, ModelError, StoreError
from cvae_features.extraction import extract
from cvae_features.join import expand_parts, join_stores, joined_parts
from cvae_features.resolve import load_model
from cvae_features.store import FeatureStore, StoreWriter, write_joined

from _stores import pca_fields, save_tiny_model

FIXTURES = Path(__file__).parent / "fixtures"


def _images(root, n, start=0, classes=("c0", "c1"), seed=0):
    rng = np.random.default_rng(seed)
    for i in range(start, start + n):
        cls = classes[i % len(classes)]
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / cls / f"{i:03d}.png")
    return root


@pytest.fixture
def folder(tmp_path):
    root = _images(tmp_path / "images", 40)
    (root / "c1" / "broken.png").write_bytes(b"not a png")
    return root


@pytest.fixture
def reference(tmp_path, folder):
    return extract(folder, tmp_path / "ref.h5", features="raw", workers=0, progress=False).path


def _shards(folder, reference, out_dir, n=3, **kw):
    out_dir.mkdir(exist_ok=True)
    return [extract(folder, out_dir / f"part-{i}.h5", model=reference, shard=f"{i}/{n}", workers=0, progress=False,
                    **kw).path for i in range(n)]


PRE = {"size": 8, "channels": 1, "resize": "crop"}


def _made(path, rows, *, skipped=(), names=(), labels=None, extras=(), **fields):
    """A complete store written by hand (raw, 2 features a row unless ``fields`` say otherwise): a row for each key
    of ``rows`` (labels -1 unless given), then the ``skipped`` keys."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = {"feature_kind": "raw", "dim": 2, "preprocess": PRE, "source": f"made {path.name}", **fields}
    n, dim = len(rows), fields["dim"]
    rng = np.random.default_rng(sum(path.name.encode()))
    with StoreWriter.create(path, plan_keys=list(rows) + list(skipped), label_names=names, extras=extras,
                            **fields) as w:
        w.write_batch(np.arange(n), rng.random((n, dim), dtype=np.float32),
                      np.full(n, -1) if labels is None else np.asarray(labels),
                      extras={e: rng.random((n, dim) if e == "logvar" else n, dtype=np.float32) for e in extras},
                      skipped_index=np.arange(n, n + len(skipped)), reasons=[f"cannot decode {k}" for k in skipped])
    return path


def _error(fn, *args, **kw) -> str:
    """The one-line message of the StoreError ``fn`` raises."""
    with pytest.raises(StoreError) as err:
        fn(*args, **kw)
    return str(err.value)


def _by_key(store):
    """{key: (feature row, label name)} and the skipped files of a store."""
    names = store.label_names + [None]
    rows = {k: (f, names[lab]) for k, f, lab in zip(store.keys, store.features, store.labels)}
    return rows, sorted(map(tuple, store.skipped.values.tolist()))


def _same_content(a, b):
    rows_a, skips_a = _by_key(a)
    rows_b, skips_b = _by_key(b)
    assert sorted(rows_a) == sorted(rows_b) and skips_a == skips_b
    for key, (feat, name) in rows_a.items():
        np.testing.assert_array_equal(feat, rows_b[key][0])
        assert name == rows_b[key][1], key


def test_virtual_join_reads_as_the_whole_extraction(tmp_path, folder, reference):
    parts = _shards(folder, reference, tmp_path / "parts")
    res = join_stores(tmp_path / "joined.h5", [parts[2], parts[0], parts[1]])  # any order: shards are sorted
    assert res.mode == "virtual" and res.parts == parts and res.n_rows == 40 and res.n_skipped == 1
    with FeatureStore(res.path) as j, FeatureStore(reference) as whole:
        assert j.n_rows == 40 and j.is_complete and j.plan_status == {"pending": 0, "done": 40, "skipped": 1}
        assert j.shard is None and j.source_spec == str(folder.resolve()) and j.feature_kind == "raw"
        assert j.preprocess_dict == whole.preprocess_dict and j.dim == whole.dim
        assert [j.attrs[k] for k in ("model_config", "model_arch", "model_fingerprint", "compression")] == \
            ["", "", "", "none"] == [whole.attrs[k] for k in ("model_config", "model_arch", "model_fingerprint",
                                                               "compression")]
        assert j._f["features"].is_virtual and j._f["keys"].is_virtual and j._f["labels"].is_virtual
        _same_content(j, whole)
        # rows come shard after shard, each shard's rows in its own order
        expected = []
        for p in parts:
            with FeatureStore(p) as s:
                expected += s.keys
        assert j.keys == expected
        assert j.read_rows(5, 9).tolist() == j.features[5:9].tolist()
        assert j.joined["mode"] == "virtual" and [p["path"] for p in j.joined["parts"]] == \
            ["parts/part-0.h5", "parts/part-1.h5", "parts/part-2.h5"]
        assert [p["shard"] for p in j.joined["parts"]] == ["0/3", "1/3", "2/3"]
    assert joined_parts(res.path) == [p.resolve() for p in parts]


def test_copy_join_is_self_contained_and_equal(tmp_path, folder, reference):
    parts = _shards(folder, reference, tmp_path / "parts")
    virtual = join_stores(tmp_path / "joined.h5", [tmp_path / "parts"]).path  # a folder of parts
    copied = join_stores(tmp_path / "copy.h5", parts, copy=True).path
    with FeatureStore(virtual) as v, FeatureStore(copied) as c:
        assert not c._f["features"].is_virtual and c.joined["mode"] == "copy"
        assert c.keys == v.keys and c.labels.tolist() == v.labels.tolist()
        np.testing.assert_array_equal(c.features, v.features)
        assert c.skipped.equals(v.skipped) and c.is_complete and c.plan_status == v.plan_status
        assert c.plan_entries()["key"].tolist() == v.plan_entries()["key"].tolist()
    shutil.rmtree(tmp_path / "parts")
    with FeatureStore(copied) as c, FeatureStore(reference) as whole:
        _same_content(c, whole)
    with pytest.raises(StoreError, match="part-0.h5 is missing"):
        FeatureStore(virtual)


def test_the_joined_folder_can_move(tmp_path, folder, reference):
    (tmp_path / "run").mkdir()
    parts = _shards(folder, reference, tmp_path / "run" / "parts")
    joined = join_stores(tmp_path / "run" / "joined.h5", parts).path
    with FeatureStore(joined) as j:
        before = j.features.copy()
    shutil.move(tmp_path / "run", tmp_path / "elsewhere")  # a rename keeps the parts' modification times
    shutil.copytree(tmp_path / "elsewhere", tmp_path / "copied", copy_function=shutil.copyfile)  # new times
    with h5py.File(tmp_path / "copied" / "joined.h5", "r") as f:  # the copies are checked by their identity
        recorded = json.loads(f.attrs["joined"])["parts"]
    assert all(os.stat(tmp_path / "copied" / p["path"]).st_mtime_ns != p["mtime_ns"] for p in recorded)
    assert all(os.stat(tmp_path / "elsewhere" / p["path"]).st_mtime_ns == p["mtime_ns"] for p in recorded)
    cwd = os.getcwd()
    os.chdir(folder)  # relative paths resolve against the joined file's folder, not the working directory
    try:
        for where in ("elsewhere", "copied"):
            with FeatureStore(tmp_path / where / "joined.h5") as j:
                np.testing.assert_array_equal(j.features, before)
                assert np.isfinite(j.features).all()
    finally:
        os.chdir(cwd)
    # the copy reads its own parts, not the originals
    os.remove(tmp_path / "elsewhere" / "parts" / "part-1.h5")
    with FeatureStore(tmp_path / "copied" / "joined.h5") as j:
        np.testing.assert_array_equal(j.features, before)


def test_a_missing_or_replaced_part_is_refused_never_read_as_nan(tmp_path, folder, reference):
    parts = _shards(folder, reference, tmp_path / "parts")
    joined = join_stores(tmp_path / "joined.h5", parts).path
    # the part re-extracted in place (the same shard, the same images): another file
    os.replace(parts[1], tmp_path / "kept.h5")
    extract(folder, parts[1], model=reference, shard="1/3", workers=0, progress=False)
    with pytest.raises(StoreError, match=r"part-1.h5 is not the file that was joined \(store_id '[0-9a-f]{32}' then"):
        FeatureStore(joined)
    os.replace(tmp_path / "kept.h5", parts[1])
    with FeatureStore(joined) as j:
        assert np.isfinite(j.features).all()
    # a part grown after the join (an --update of the shard alone) no longer matches
    _images(folder, 6, start=100)
    extract(folder, parts[0], model=reference, update=True, workers=0, progress=False)
    with pytest.raises(StoreError, match=r"part-0.h5 changed since it was joined \(generation 1 then, 2 now\)"):
        FeatureStore(joined)
    # the same through the command line: one line, exit 1, and no probe ran on fill values
    result = CliRunner().invoke(cli, ["probe", str(joined)])
    assert result.exit_code == 1 and "part-0.h5 changed since it was joined" in result.output
    assert "Traceback" not in result.output
    join_stores(joined, parts, overwrite=True)  # joined again: readable
    with FeatureStore(joined) as j:
        new_in_0 = sum(shard_of_key(f"c{i % 2}/{i:03d}.png", 3) == 0 for i in range(100, 106))
        assert 0 < new_in_0 < 6 and j.n_rows == 40 + new_in_0 and np.isfinite(j.features).all()
    os.remove(parts[2])
    assert _error(FeatureStore, joined) == (
        f"{joined}: its part {parts[2]} is missing (moved or deleted since it was joined): put it back or join the "
        f"parts again (cvae join {joined} PARTS... --overwrite)")


def test_what_cannot_be_joined(tmp_path, folder, reference):
    parts = _shards(folder, reference, tmp_path / "parts")
    out = tmp_path / "joined.h5"
    with pytest.raises(StoreError, match=r"shard\(s\) 1/3 missing"):
        join_stores(out, [parts[0], parts[2]])
    with pytest.raises(StoreError, match="is given twice"):
        join_stores(out, parts + [parts[0]])
    copy = tmp_path / "again-0.h5"
    shutil.copy(parts[0], copy)
    with pytest.raises(StoreError, match="are both shard 0/3"):
        join_stores(out, parts + [copy])
    two = _shards(folder, reference, tmp_path / "two", n=2)
    with pytest.raises(StoreError, match="is shard 0/2 but .* is 0/3"):
        join_stores(out, parts + two[:1])
    assert _error(join_stores, out, [parts[0], reference, parts[1]]) == (
        f"{reference} holds a whole source but {parts[0]} one shard: join the shards of one extraction, or whole "
        "stores")
    # another featurizer: pca shards, raw shards of another preprocessing
    pca_ref = extract(folder, tmp_path / "pca.h5", features="pca", dim=4, workers=0, progress=False).path
    pca_part = extract(folder, tmp_path / "pca-1.h5", model=pca_ref, shard="1/3", workers=0, progress=False).path
    with pytest.raises(StoreError, match="another feature kind"):
        join_stores(out, [parts[0], pca_part, parts[2]])
    with FeatureStore(parts[1]) as s:
        fields = dict(feature_kind="raw", dim=s.dim, source=s.source, source_spec=s.source_spec, shard=(1, 3),
                      plan_keys=s.keys[:1])
    for name, pre in (("stretched", {"size": 8, "channels": 1, "resize": "stretch"}),
                      ("wider", {"size": 8, "channels": 3, "resize": "crop"})):
        with StoreWriter.create(tmp_path / f"{name}.h5", preprocess=pre, **dict(fields, dim=fields["dim"] * (
                1 + 2 * (name == "wider")))) as w:
            w.write_batch(np.array([0]), np.zeros((1, w.dim), np.float32), np.array([-1]))
        what = "another preprocessing" if name == "stretched" else "another feature width"
        with pytest.raises(StoreError, match=f"{name}.h5 cannot be joined with .*part-0.h5: {what}"):
            join_stores(out, [parts[0], tmp_path / f"{name}.h5", parts[2]])
    # the same images in two whole stores
    again = extract(folder, tmp_path / "ref2.h5", model=reference, workers=0, progress=False).path
    with pytest.raises(StoreError, match="is in both"):
        join_stores(out, [reference, again])
    # the output
    with pytest.raises(StoreError, match="is one of the parts"):
        join_stores(parts[0], parts, overwrite=True)
    join_stores(out, parts)
    with pytest.raises(StoreError, match="exists: pass --overwrite"):
        join_stores(out, parts)
    with pytest.raises(StoreError, match="is itself a joined store"):
        join_stores(tmp_path / "j2.h5", [out])
    with pytest.raises(ConfigError, match="nothing to join"):
        join_stores(tmp_path / "j3.h5", [])
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="holds no feature store"):
        join_stores(tmp_path / "j3.h5", [tmp_path / "empty"])
    assert not (tmp_path / "j2.h5").exists() and not (tmp_path / "j3.h5").exists()


def test_incomplete_or_open_parts_are_refused(tmp_path, folder, reference):
    parts = _shards(folder, reference, tmp_path / "parts")

    class Stop(Exception):
        pass

    def stop(progress):
        raise Stop

    cut = tmp_path / "cut" / "part-1.h5"
    cut.parent.mkdir()
    with pytest.raises(Stop):
        extract(folder, cut, model=reference, shard="1/3", workers=0, progress=False, batch_size=4, callback=stop)
    with FeatureStore(cut) as s:
        assert s.n_rows == 4 and not s.is_complete
    with pytest.raises(StoreError, match=r"part-1.h5 is incomplete \(\d+ images pending\): finish it with"):
        join_stores(tmp_path / "j.h5", [parts[0], cut, parts[2]])
    with h5py.File(parts[1], "r+") as f:  # what a writer still at work (or killed) leaves set
        f.attrs["open_for_writing"] = 1
    with pytest.raises(StoreError, match="part-1.h5 is still being written"):
        join_stores(tmp_path / "j.h5", parts)
    assert not (tmp_path / "j.h5").exists()


def test_whole_stores_with_other_classes_get_one_label_list(tmp_path):
    a = _images(tmp_path / "a", 6, classes=("ants", "bees"))
    b = _images(tmp_path / "b", 6, start=50, classes=("bees", "wasps"), seed=1)
    ref = extract(a, tmp_path / "ref-a.h5", features="raw", workers=0, progress=False).path
    sa = extract(a, tmp_path / "sa.h5", model=ref, workers=0, progress=False, overwrite=True).path
    sb = extract(b, tmp_path / "sb.h5", model=ref, workers=0, progress=False).path
    for copy in (False, True):
        out = join_stores(tmp_path / f"ab-{copy}.h5", [sa, sb], copy=copy).path
        with FeatureStore(out) as j, FeatureStore(sa) as xa, FeatureStore(sb) as xb:
            assert j.label_names == ["ants", "bees", "wasps"]
            names = [j.label_names[i] for i in j.labels]
            assert names == [xa.label_names[i] for i in xa.labels] + [xb.label_names[i] for i in xb.labels]
            assert names[6:] == ["bees"] * 3 + ["wasps"] * 3 and j.keys == xa.keys + xb.keys
            assert j.source.startswith("2 stores joined: ") and j.source_spec == ""
    with pytest.raises(StoreError, match="joins whole stores of different sources"):
        extract(a, tmp_path / "ab-False.h5", update=True, workers=0, progress=False)


def test_update_and_resume_a_joined_store_through_its_shards(tmp_path, folder, reference):
    parts = _shards(folder, reference, tmp_path / "parts")
    joined = join_stores(tmp_path / "joined.h5", parts).path
    res = extract(folder, joined, resume=True, workers=0, progress=False)
    assert res.n_new == 0 and res.n_rows == 40 and res.complete
    _images(folder, 9, start=200, seed=3)
    (folder / "c1" / "b0.png").write_bytes(b"no png either")  # in shard 0 of 3; broken.png is in shard 1
    assert shard_of_key("c1/b0.png", 3) == 0 and shard_of_key("c1/broken.png", 3) == 1
    (folder / "c0" / "000.png").unlink()  # gone: its row is kept
    # the model reaches every shard (here one of another kind: refused)
    basis = {"mean": np.zeros(64), "components": np.eye(2, 64), "explained_variance": np.ones(2)}
    pca = _made(tmp_path / "pca.h5", ["x"], feature_kind="pca", dim=2, **pca_fields(basis, PRE))
    with pytest.raises(ModelError, match=f"model store {pca} holds pca features: expected a raw store"):
        extract(folder, joined, update=True, model=pca, workers=0, progress=False)
    res = extract(folder, joined, update=True, model=reference, workers=0, progress=False)
    assert res.n_new == 9 and res.n_rows == 49 and res.n_removed == 1 and res.path == joined and res.complete
    # the counts and the skipped files of all shards, the rate over all of them
    assert res.n_new_skipped == 1 and res.n_skipped == 2 and [k for k, _ in res.skipped] == ["c1/b0.png"]
    assert res.images_per_s == pytest.approx(10 / res.seconds) and 0 < res.seconds < 60
    whole = extract(folder, tmp_path / "whole.h5", model=reference, workers=0, progress=False).path
    with FeatureStore(joined) as j, FeatureStore(whole) as w:
        assert j.is_complete and j._f["features"].is_virtual and len(j.joined["parts"]) == 3
        rows, _ = _by_key(j)
        assert set(rows) == set(w.keys) | {"c0/000.png"}
        wrows, _ = _by_key(w)
        for key in w.keys:
            np.testing.assert_array_equal(rows[key][0], wrows[key][0])
    with pytest.raises(StoreError, match="--shard does not apply"):
        extract(folder, joined, update=True, shard="0/3", workers=0, progress=False)
    with pytest.raises(StoreError, match="is a joined store .* not written directly"):
        StoreWriter.append_to(joined)


def test_a_joined_store_of_one_shard_and_a_clock_that_does_not_move(tmp_path, folder, reference, monkeypatch):
    part = extract(folder, tmp_path / "all.h5", model=reference, shard="0/1", workers=0, progress=False).path
    joined = join_stores(tmp_path / "joined.h5", [part])
    assert joined.parts == [part] and joined.n_rows == 40
    with FeatureStore(joined.path) as j:
        assert j.source == f"1 shards joined: {folder.resolve()}" and j.n_rows == 40 and j.is_complete
    (folder / "c0" / "999.png").write_bytes(b"broken too")
    monkeypatch.setattr(time, "perf_counter", lambda: 1000.0)  # no time passes: no rate, and no division by 0
    res = extract(folder, joined.path, resume=True, workers=0, progress=False)
    assert res.n_new == 0 and res.n_rows == 40 and res.seconds == 0 and math.isnan(res.images_per_s)
    res = extract(folder, joined.path, update=True, workers=0, progress=False)
    assert res.n_new_skipped == 1 and res.n_skipped == 2 and res.seconds == 0 and math.isnan(res.images_per_s)


def test_a_joined_store_as_model_and_for_probes(tmp_path, folder):
    run = save_tiny_model(tmp_path / "run", image_size=16, latent_dim=3)
    parts = [extract(folder, tmp_path / f"v-{i}.h5", model=run, shard=f"{i}/2", workers=0, progress=False,
                     carry_weights=True).path for i in range(2)]
    joined = join_stores(tmp_path / "v.h5", parts).path
    assert load_model(joined).fingerprint() == load_model(run).fingerprint()
    again = extract(folder, tmp_path / "again.h5", model=joined, workers=0, progress=False).path
    with FeatureStore(again) as a, FeatureStore(joined) as j:
        assert a.model_fingerprint == j.model_fingerprint
        ra, _ = _by_key(a)
        rj, _ = _by_key(j)
        for key in ra:
            np.testing.assert_allclose(ra[key][0], rj[key][0], atol=1e-6)
    # a probe reads the virtual store exactly as the self-contained copy of the same rows
    copied = join_stores(tmp_path / "copied.h5", parts, copy=True).path
    runs = {}
    for store in (joined, copied):
        result = CliRunner().invoke(cli, ["probe", str(store), "--task", "knn", "--json"])
        assert result.exit_code == 0, result.output
        runs[store.stem] = json.loads(result.stdout)["stores"][store.stem][0]
        runs[store.stem].pop("timings")
    assert runs["v"] == runs["copied"] and runs["v"]["probe"] == "knn" and len(runs["v"]["cv_scores"]) == 16
    result = CliRunner().invoke(cli, ["show", str(joined), "-o", str(tmp_path / "shown"), "--n", "4"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "shown" / "index.html").is_file() and (tmp_path / "shown" / "reconstructions.png").is_file()


def test_cli_join_and_info(tmp_path, folder, reference):
    _shards(folder, reference, tmp_path / "parts", n=2)
    out = tmp_path / "joined.h5"
    r = CliRunner().invoke(cli, ["join", str(out), str(tmp_path / "parts")])
    assert r.exit_code == 0, r.output
    assert f"joined 2 stores: 40 rows, 1 skipped files -> {out}" in r.output
    r = CliRunner().invoke(cli, ["info", str(out)])
    assert r.exit_code == 0
    assert "joined:      2 parts, virtual over (keep them beside it): parts/part-0.h5, parts/part-1.h5\n" in r.output
    r = CliRunner().invoke(cli, ["join", str(out), str(tmp_path / "parts")])
    assert r.exit_code == 1 and r.output.strip().splitlines()[-1] == f"Error: {out} exists: pass --overwrite to replace it"
    r = CliRunner().invoke(cli, ["join", str(out), str(tmp_path / "parts" / "part-0.h5"), "--overwrite"])
    assert r.exit_code == 1 and "shard(s) 1/2 missing" in r.output and "Traceback" not in r.output


def test_joined_fixture_reads_like_the_single_store():
    with FeatureStore(FIXTURES / "joined_v2" / "joined.h5") as j, FeatureStore(FIXTURES / "store_v2.h5") as one:
        assert j.joined["mode"] == "virtual" and [p["path"] for p in j.joined["parts"]] == ["part-0.h5", "part-1.h5"]
        assert sorted(j.keys) == sorted(one.keys) and j.extras == one.extras
        order = [one.keys.index(k) for k in j.keys]
        np.testing.assert_array_equal(j.features, one.features[order])
        np.testing.assert_array_equal(j.labels, one.labels[order])
        for name in one.extras:
            np.testing.assert_array_equal(j.extra(name), one.extra(name)[order])
        assert sorted(map(tuple, j.skipped.values.tolist())) == sorted(map(tuple, one.skipped.values.tolist()))
        assert j.model_fingerprint == one.model_fingerprint == "62fdb7fd422ffc0a" and j.is_complete
    assert load_model(FIXTURES / "joined_v2" / "joined.h5").fingerprint() == "62fdb7fd422ffc0a"


def test_joins_of_vae_shards_keep_the_model_weights_extras_compression_and_plan_identity(tmp_path, folder,
                                                                                          monkeypatch):
    run = save_tiny_model(tmp_path / "run", image_size=16, latent_dim=3)
    (tmp_path / "parts").mkdir()
    parts = [extract(folder, tmp_path / "parts" / f"v-{i}.h5", model=run, shard=f"{i}/2", workers=0, progress=False,
                     carry_weights=True, scores=True, compression="gzip").path for i in range(2)]
    monkeypatch.setattr(join_module, "_CHUNK", 7)  # copied 7 rows at a time
    t0 = time.perf_counter()
    copied = join_stores(tmp_path / "copy.h5", parts, copy=True)
    took = time.perf_counter() - t0
    virtual = join_stores(tmp_path / "virtual.h5", parts)
    assert copied.mode == "copy" and virtual.mode == "virtual" and 0 < copied.seconds <= took
    assert copied.n_rows == virtual.n_rows == 40 and copied.n_skipped == virtual.n_skipped == 1
    same = ("feature_kind", "dim", "preprocess", "model_config", "model_arch", "model_fingerprint", "compression",
            "source_spec", "format", "format_version", "tool_version", "open_for_writing")
    with FeatureStore(parts[0]) as p0, FeatureStore(parts[1]) as p1, FeatureStore(copied.path) as c, \
            FeatureStore(virtual.path) as v:
        assert p0.attrs["compression"] == "gzip" and p0.model_config and p0.extras == ["recon_error", "neg_elbo"]
        stamps = [p0.stamp(), p1.stamp()]
        for j in (c, v):
            assert {k: j.attrs[k] for k in same} == {k: p0.attrs[k] for k in same}
            assert j.model_config == p0.model_config and j.extras == p0.extras and j.shard is None
            assert sorted(j.featurizer_state) == sorted(p0.featurizer_state) != []
            for name, value in p0.featurizer_state.items():
                np.testing.assert_array_equal(j.featurizer_state[name], value)
            assert j.keys == p0.keys + p1.keys and j.labels.tolist() == p0.labels.tolist() + p1.labels.tolist()
            np.testing.assert_array_equal(j.features, np.concatenate([p0.features, p1.features]))
            for name in j.extras:
                np.testing.assert_array_equal(j.extra(name), np.concatenate([p0.extra(name), p1.extra(name)]))
            # the plan with each file's identity (size, modification time): an --update of the copy tells changes
            pd.testing.assert_frame_equal(j.plan_entries(), pd.concat([p0.plan_entries(), p1.plan_entries()],
                                                                      ignore_index=True))
            assert (j.plan_entries()["size"] > 0).all()
            assert j.skipped.values.tolist() == p0.skipped.values.tolist() + p1.skipped.values.tolist() != []
        assert c._f["features"].compression == "gzip" and c._f["recon_error"].compression == "gzip"
        assert c.joined == {"mode": "copy", "parts": [dict(st, path=str(p)) for st, p in zip(stamps, parts)]}
    for store in (copied.path, virtual.path):  # either carries the model
        assert load_model(store).fingerprint() == load_model(run).fingerprint()


def test_a_virtual_join_is_laid_out_as_an_ordinary_store(tmp_path):
    fields = dict(feature_kind="vae", fingerprint="f00d", model_arch="conv-vae", model_config={"latent_dim": 2},
                  state={"w": np.arange(3.0)}, extras=("recon_error", "neg_elbo"), names=["a", "b"])
    a = _made(tmp_path / "a.h5", ["a0", "a1"], skipped=["a-bad"], labels=[1, 0], **fields)
    b = _made(tmp_path / "b.h5", ["b0"], labels=[0], **fields)
    joined = join_stores(tmp_path / "j.h5", [a, b]).path
    names = []
    with h5py.File(a, "r") as fa, h5py.File(joined, "r") as fj:
        fa.visit(names.append)
        # the root attributes of an ordinary store (but the writer's own store_id and generation), and joined
        assert sorted(fj.attrs) == sorted(set(fa.attrs) - {"store_id", "generation"} | {"joined"})
        changed = {"source": "2 stores joined: made a.h5; made b.h5", "n_rows": 3, "n_skipped": 1}
        for name in set(fa.attrs) - {"store_id", "generation", "created", "updated"}:
            assert fj.attrs[name] == changed.get(name, fa.attrs[name]), name
        assert fj.attrs["shard"] == "" and fj.attrs["open_for_writing"] == 0 and fj.attrs["created"]
        # every group and dataset under the same name, with the same encoding, dtype and attributes
        seen = []
        fj.visit(seen.append)
        assert seen == names
        for name in names:
            expected = dict(fa[name].attrs, n_plan=4) if name == "plan" else dict(fa[name].attrs)
            assert dict(fj[name].attrs) == expected, name
            if isinstance(fa[name], h5py.Dataset):
                assert fj[name].dtype == fa[name].dtype, name
        # where a part is missing, HDF5 reads the fill value: never one a store holds
        fills = {"features": np.nan, "labels": -2, "recon_error": np.nan, "neg_elbo": np.nan, "plan/status": -1,
                 "plan/size": -1, "plan/mtime_ns": -1}
        for name, fill in fills.items():
            assert fj[name].is_virtual and np.array_equal(fj[name].fillvalue, fill, equal_nan=True), name
    os.remove(b)
    with h5py.File(joined, "r") as fj:
        assert np.isnan(fj["features"][2]).all() and fj["labels"][2] == -2 and fj["plan/status"][3] == -1


def test_a_key_in_two_parts_is_found_wherever_it_is_and_both_files_named(tmp_path):
    rows = {p: [f"{p}{i:02d}.png" for i in range(10)] for p in "abc"}
    skipped = {p: [f"{p}-bad-{i}.png" for i in range(2)] for p in "abc"}
    assert join_stores(tmp_path / "fine.h5", [_made(tmp_path / "fine" / f"{p}.h5", rows[p], skipped=skipped[p])
                                              for p in "abc"]).n_rows == 30
    # (key, part it is added to, as a row or a skipped file, first or last): every pair of parts, rows and skips
    cases = [("a00.png", "c", "row", 0), ("b09.png", "c", "row", -1), ("a-bad-1.png", "b", "skip", -1),
             ("c05.png", "a", "skip", 0), ("b-bad-0.png", "c", "row", -1), ("c-bad-1.png", "b", "skip", 0),
             ("a09.png", "b", "row", 0), ("c00.png", "b", "skip", -1)]
    for n, (key, into, kind, at) in enumerate(cases):
        r = {p: list(v) for p, v in rows.items()}
        k = {p: list(v) for p, v in skipped.items()}
        target = (r if kind == "row" else k)[into]
        target.insert(len(target) if at == -1 else 0, key)
        files = [_made(tmp_path / str(n) / f"{p}.h5", r[p], skipped=k[p]) for p in "abc"]
        first, second = sorted([key[0], into])
        assert _error(join_stores, tmp_path / f"j{n}.h5", files) == (
            f"{key!r} is in both {tmp_path / str(n) / first}.h5 and {tmp_path / str(n) / second}.h5: parts to join "
            "must not share keys (the same shard extracted twice, or the same images in two stores?)"), key


def test_keys_of_equal_hash_are_told_apart_by_the_keys_themselves(tmp_path, monkeypatch):
    # 64-bit hashes of the keys find the candidates; a collision (two keys, one hash) is no duplicate
    hashes = {"p.png": 5, "q.png": 5, "x.png": 2 ** 63 + 1, "y.png": 2 ** 63 + 2, "r.png": 9}
    monkeypatch.setattr(join_module, "_key_hash", lambda key: hashes[key])
    a = _made(tmp_path / "a.h5", ["p.png", "q.png", "x.png", "y.png"])  # p and q collide in one part
    b = _made(tmp_path / "b.h5", ["r.png"])
    assert join_stores(tmp_path / "ab.h5", [a, b]).n_rows == 5
    c = _made(tmp_path / "c.h5", ["x.png"])  # x twice; y's hash differs from x's in the last bit only
    assert _error(join_stores, tmp_path / "ac.h5", [a, c]).startswith(f"'x.png' is in both {a} and {c}: ")
    d = _made(tmp_path / "d.h5", ["p.png"])  # in a, with a collision beside it
    assert _error(join_stores, tmp_path / "ad.h5", [d, a]).startswith(f"'p.png' is in both {d} and {a}: ")


def test_labels_of_parts_naming_other_classes_or_none(tmp_path):
    a = _made(tmp_path / "a.h5", ["a0", "a1", "a2"], names=["ants", "bees"], labels=[0, -1, 1])
    b = _made(tmp_path / "b.h5", ["b0", "b1"])  # no classes: every label unknown
    c = _made(tmp_path / "c.h5", ["c0", "c1", "c2"], names=["bees", "ñandú"], labels=[1, 0, -1])
    for copy in (False, True):
        out = join_stores(tmp_path / f"abc-{copy}.h5", [a, b, c], copy=copy).path
        with FeatureStore(out) as j:
            assert j.label_names == ["ants", "bees", "ñandú"]
            assert j.labels.tolist() == [0, -1, 1, -1, -1, 2, 1, -1]
            # a real dataset, int64 and chunked as 1-D per-row datasets are (at least 4,096 rows)
            assert not j._f["labels"].is_virtual and j._f["labels"].dtype == np.int64
            assert j._f["labels"].chunks[0] >= 4096
    d = _made(tmp_path / "d.h5", ["d0"])
    with FeatureStore(join_stores(tmp_path / "bd.h5", [b, d]).path) as j:  # no classes anywhere
        assert j.label_names == [] and j.labels.tolist() == [-1, -1, -1] and j._f["labels"].is_virtual


def test_parts_that_do_not_belong_together_are_named_in_one_line(tmp_path):
    vae = dict(feature_kind="vae", fingerprint="aaaa", model_arch="conv-vae")
    a = _made(tmp_path / "a.h5", ["a"], **vae)
    for part, what in ((_made(tmp_path / "b.h5", ["b"], **dict(vae, fingerprint="bbbb")), "model ('bbbb', not 'aaaa')"),
                       (_made(tmp_path / "c.h5", ["c"], **dict(vae, model_arch="other-vae")),
                        "model family ('other-vae', not 'conv-vae')"),
                       (_made(tmp_path / "d.h5", ["d"], extras=("recon_error", "neg_elbo"), **vae),
                        "per-row extras (['recon_error', 'neg_elbo'], not [])")):
        assert _error(join_stores, tmp_path / "j.h5", [a, part]) == f"{part} cannot be joined with {a}: another {what}"
    shards = {i: _made(tmp_path / f"s{i}.h5", [f"s{i}"], shard=(i, 8), source_spec="/data") for i in (0, 3, 6, 7)}
    assert _error(join_stores, tmp_path / "j.h5", [shards[i] for i in (0, 3, 6)]) == (
        "shard(s) 1/8, 2/8, 4/8, 5/8, 7/8 missing: give every shard of the extraction (3 of 8 given)")
    assert _error(join_stores, tmp_path / "j.h5", [shards[7], shards[0]]) == (
        "shard(s) 1/8, 2/8, 3/8, 4/8, 5/8 and 1 more missing: give every shard of the extraction (2 of 8 given)")
    assert _error(join_stores, tmp_path / "j.h5", [shards[6]]) == (
        "shard(s) 0/8, 1/8, 2/8, 3/8, 4/8 and 2 more missing: give every shard of the extraction (1 of 8 given)")


def test_the_source_of_a_joined_store_names_its_parts(tmp_path):
    whole = [_made(tmp_path / f"w{i}.h5", [f"w{i}"], source=f"folder {i}") for i in range(4)]
    for n, listed in ((1, "folder 0"), (3, "folder 0; folder 1; folder 2"),
                      (4, "folder 0; folder 1; folder 2; and 1 more")):
        with FeatureStore(join_stores(tmp_path / f"joined-{n}.h5", whole[:n]).path) as j:
            assert j.source == f"{n} stores joined: {listed}" and j.source_spec == "" and j.shard is None
    for spec, named in (("/data/images", "/data/images"), ("", "half 0 of a data set")):
        shards = [_made(tmp_path / f"s{i}{bool(spec)}.h5", [f"s{i}"], shard=(i, 2), source=f"half {i} of a data set",
                        source_spec=spec) for i in range(2)]
        with FeatureStore(join_stores(tmp_path / f"s{bool(spec)}.h5", shards[::-1]).path) as j:
            assert j.source == f"2 shards joined: {named}" and j.source_spec == spec


def test_folders_of_parts_leave_out_the_output_and_files_that_are_not_stores(tmp_path):
    a = _made(tmp_path / "one" / "a.h5", ["a"])
    b = _made(tmp_path / "two" / "b.h5", ["b"])
    c = _made(tmp_path / "c.h5", ["c"])
    with h5py.File(tmp_path / "one" / "notes.h5", "w") as f:  # HDF5, but no store
        f["x"] = 1
    (tmp_path / "one" / "readme.txt").write_text("parts")
    assert expand_parts([c, tmp_path / "one"]) == [c, a]  # nothing to leave out
    out = tmp_path / "one" / "joined.h5"
    for again in (False, True):  # the second time the output lies in the folder of parts: left out
        res = join_stores(out, [tmp_path / "one", tmp_path / "two", c], overwrite=again)
        assert res.parts == [a, b, c] and res.n_rows == 3
    assert joined_parts(out) == [a.resolve(), b.resolve(), c.resolve()]
    copied = join_stores(tmp_path / "copied.h5", [tmp_path / "two", c], copy=True).path
    assert joined_parts(copied) == [] and joined_parts(a) == []  # not virtual: reads no parts


def test_a_store_of_an_older_writer_joins_alone_and_is_checked_as_it_was_stamped(tmp_path):
    (tmp_path / "run").mkdir()
    old = tmp_path / "run" / "old.h5"
    shutil.copy(FIXTURES / "store_v2.h5", old)  # written before store_id and generation were recorded
    with h5py.File(old, "r+") as f:
        assert "store_id" not in f.attrs and "generation" not in f.attrs
        for name in ("created", "updated", "compression"):  # nor these: each side reads the same default
            del f.attrs[name]
    joined = join_stores(tmp_path / "run" / "joined.h5", [old]).path
    st = os.stat(old)
    with FeatureStore(old) as s, FeatureStore(joined) as j:
        stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "store_id": "", "generation": 0, "created": "",
                 "updated": "", "n_rows": 5, "n_skipped": 2, "n_plan": 7, "shard": "",
                 "model_fingerprint": "62fdb7fd422ffc0a"}
        assert s.stamp() == stamp and j.joined["parts"] == [dict(stamp, path="old.h5")]
        assert j.attrs["compression"] == "none" and j.model_fingerprint == "62fdb7fd422ffc0a"
        _same_content(j, s)
    shutil.copytree(tmp_path / "run", tmp_path / "copied", copy_function=shutil.copyfile)  # new times: stamps decide
    with FeatureStore(tmp_path / "copied" / "joined.h5") as j, FeatureStore(old) as s:
        _same_content(j, s)
    with FeatureStore(join_stores(tmp_path / "copy.h5", [old], copy=True).path) as c, FeatureStore(old) as s:
        _same_content(c, s)
        assert c.model_fingerprint == s.model_fingerprint and c.plan_entries()["key"].tolist() == \
            s.plan_entries()["key"].tolist()
    # a version-1 store has no open_for_writing: it may still be being written (finish it with --resume)
    v1 = tmp_path / "v1.h5"
    shutil.copy(FIXTURES / "store_v1.h5", v1)
    assert _error(join_stores, tmp_path / "j1.h5", [v1]) == (
        f"{v1} is still being written or its writer was stopped (open_for_writing is set): finish it with "
        f"cvae extract SOURCE -o {v1} --resume, then join")


def test_opening_a_joined_store_opens_only_the_parts_touched_since(tmp_path, monkeypatch):
    parts = [_made(tmp_path / f"p{i}.h5", [f"k{i}"]) for i in range(3)]
    joined = join_stores(tmp_path / "j.h5", parts).path
    opened, real = [], h5py.File

    def spy(name, *args, **kw):
        opened.append(Path(name).name)
        return real(name, *args, **kw)

    monkeypatch.setattr(h5py, "File", spy)
    FeatureStore(joined).close()
    assert opened == ["j.h5"]  # same size, same modification time: not opened
    st = os.stat(parts[1])
    os.utime(parts[1], ns=(st.st_atime_ns, st.st_mtime_ns + 1000))  # touched: its own identity decides
    opened.clear()
    with FeatureStore(joined) as j:
        assert j.keys == ["k0", "k1", "k2"]
    assert opened == ["j.h5", "p1.h5"]


def test_a_copy_replaces_the_output_only_when_asked_and_its_errors_come_through(tmp_path, monkeypatch):
    a, b = _made(tmp_path / "a.h5", ["a"]), _made(tmp_path / "b.h5", ["b"])
    out = tmp_path / "out.h5"
    join_stores(out, [a], copy=True)
    res = join_stores(out, [a, b], copy=True, overwrite=True)
    with FeatureStore(out) as c:
        assert res.n_rows == 2 and c.keys == ["a", "b"] and c.joined["mode"] == "copy"
    tmp = tmp_path / ".late.h5.joining"
    real_close = StoreWriter.close

    def another_join_finished_first(self):  # its temporary file (the same name) moved onto the output
        real_close(self)
        if self.path == tmp and tmp.exists():
            tmp.replace(tmp_path / "late.h5")

    monkeypatch.setattr(StoreWriter, "close", another_join_finished_first)
    assert _error(join_stores, tmp_path / "late.h5", [a, b], copy=True) == (
        f"{tmp_path / 'late.h5'} appeared while joining: pass --overwrite to replace it")
    monkeypatch.setattr(StoreWriter, "close", real_close)

    def fails_after_the_file_went(self, *args, **kw):
        tmp.replace(tmp_path / "gone.h5")
        raise StoreError("the disk went away")

    monkeypatch.setattr(StoreWriter, "write_batch", fails_after_the_file_went)
    assert _error(join_stores, tmp_path / "late.h5", [a, b], copy=True, overwrite=True) == "the disk went away"
    assert not tmp.exists()


def test_write_joined_sorts_json_keys_and_writes_int64_labels_and_the_state_as_the_writer(tmp_path):
    a, b = _made(tmp_path / "a.h5", ["a0", "a1"]), _made(tmp_path / "b.h5", ["b0"])
    parts = []
    for p in (a, b):
        with FeatureStore(p) as s:
            parts.append((p, s.stamp()))
    write_joined(tmp_path / "j.h5", parts, attrs={"feature_kind": "raw", "dim": 2, "source": "two",
                                                  "preprocess": {"size": 8, "resize": "crop", "channels": 1}},
                 label_names=["x"], labels=[np.array([0, -1], np.int32), np.array([0], np.int32)],
                 state={"mean": np.zeros(3)})
    with h5py.File(tmp_path / "j.h5", "r") as f:  # JSON attributes hold their keys sorted
        assert f.attrs["preprocess"] == '{"channels": 1, "resize": "crop", "size": 8}'
        assert f.attrs["joined"] == json.dumps(json.loads(f.attrs["joined"]), sort_keys=True)
        assert f["labels"].dtype == np.int64 and f["labels"][:].tolist() == [0, -1, 0]
        assert dict(f["featurizer_state"].attrs) == {"kind": "raw", "fingerprint": "", "encoding-type":
                                                     "featurizer-state", "encoding-version": "1"}
    # a part whose datasets differ from the first's in type: refused, nothing written
    with h5py.File(b, "r+") as f:
        tags = dict(f["features"].attrs)
        rows = f["features"][:]
        del f["features"]
        f.create_dataset("features", data=rows.astype(np.float64), maxshape=(None, 2)).attrs.update(tags)
    assert _error(join_stores, tmp_path / "k.h5", [a, b]) == (
        f"{b}: /features is float64 (2,), the first part's float32 (2,)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "b.h5", "j.h5"]
    # a state entry that is no array of numbers (a foreign store): named
    c = _made(tmp_path / "c.h5", ["c0"], state={"mean": np.zeros(2)})
    with h5py.File(c, "r+") as f:
        f["featurizer_state"].create_dataset("note", data="text").attrs.update(dict(f["featurizer_state/mean"].attrs))
    with pytest.raises(ConfigError, match=r"^featurizer state 'note' has dtype \|S4: expected numbers$"):
        join_stores(tmp_path / "k.h5", [c])
    assert not (tmp_path / "k.h5").exists() and not (tmp_path / ".k.h5.joining").exists()


def test_plan_entries_read_the_committed_plan_and_name_a_damaged_one(tmp_path):
    a = _made(tmp_path / "a.h5", ["a0", "a1"], skipped=["bad"])
    with h5py.File(a, "r+") as f:  # an integer status dataset of another width reads the same
        del f["plan/status"]
        f["plan"].create_dataset("status", data=np.array([1, 1, 2], np.int64)).attrs["encoding-type"] = "array"
    with FeatureStore(a) as s:
        plan = s.plan_entries()
    assert list(plan.columns) == ["key", "status", "size", "mtime_ns"] and plan["status"].dtype == np.int8
    assert plan["key"].tolist() == ["a0", "a1", "bad"] and plan["status"].tolist() == [1, 1, 2]
    assert plan["size"].tolist() == plan["mtime_ns"].tolist() == [-1, -1, -1]
    with h5py.File(a, "r+") as f:
        f["plan"].attrs["encoding-type"] = "something-else"
    with FeatureStore(a) as s:
        assert _error(s.plan_entries) == (f"{a}: element /plan has encoding-type 'something-else', expected "
                                          "'extraction-plan' (damaged or foreign store)")


def test_rows_of_a_virtual_join_read_across_its_parts_are_the_rows_of_a_copy(tmp_path):
    parts = [_made(tmp_path / "parts" / f"p{i}.h5", [f"k{i}-{j}" for j in range(n)], dim=3)
             for i, n in enumerate((5, 7, 1, 4))]
    joined = join_stores(tmp_path / "j.h5", parts).path
    with FeatureStore(join_stores(tmp_path / "c.h5", parts, copy=True).path) as c:
        want = c.features
    assert want.shape == (17, 3) and np.isfinite(want).all()
    with FeatureStore(joined) as j:
        for start, stop in [(0, 17), (0, 5), (4, 6), (3, 14), (12, 13), (13, 17), (16, 100), (-3, 2), (8, 8), (20, 30)]:
            got = j.read_rows(start, stop)
            assert got.dtype == np.float32 and got.shape == (len(want[max(start, 0):stop]), 3)
            assert np.array_equal(got, want[max(start, 0):stop]), (start, stop)
        assert np.array_equal(np.concatenate([rows for _, rows in j.iter_rows(6)]), want)
