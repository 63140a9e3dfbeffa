"""Joined stores (cvae join): the shards of one extraction read as one store, and nothing else is joined."""

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cvae_cli.main import cli
from cvae_features.data.sources import shard_of_key
from cvae_features.errors import ConfigError, StoreError
from cvae_features.extraction import extract
from cvae_features.join import join_stores, joined_parts
from cvae_features.resolve import load_model
from cvae_features.store import FeatureStore, StoreWriter

from _stores import save_tiny_model

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
    with pytest.raises(StoreError, match="part-2.h5 is missing"):
        FeatureStore(joined)


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
    with pytest.raises(StoreError, match="holds a whole source"):
        join_stores(out, parts + [reference])
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
    (folder / "c0" / "000.png").unlink()  # gone: its row is kept
    res = extract(folder, joined, update=True, workers=0, progress=False)
    assert res.n_new == 9 and res.n_rows == 49 and res.n_removed == 1 and res.path == joined
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
