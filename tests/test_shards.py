"""Extraction in shards: disjoint, covering, stable under relisting, resumable as their own shard."""

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cvae_cli.main import cli
from cvae_features.data import open_source
from cvae_features.data.sources import shard_of_key, shard_rows
from cvae_features.errors import ConfigError, StoreError
from cvae_features.extraction import extract
from cvae_features.store import FeatureStore


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for i in range(40):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / f"c{i % 2}" / f"{i:03d}.png")
    (root / "c1" / "broken.png").write_bytes(b"not a png")
    return root


@pytest.fixture
def raw_reference(tmp_path, folder):
    """A raw store whose preprocessing every shard reuses (the --model of raw features)."""
    return extract(folder, tmp_path / "ref.h5", features="raw", workers=0, progress=False).path


def test_the_shard_rule_is_a_hash_of_the_key_alone():
    keys = [f"img/{i:05d}.png" for i in range(3000)]
    counts = np.bincount([shard_of_key(k, 4) for k in keys], minlength=4)
    assert counts.sum() == 3000 and counts.min() > 650  # about a quarter each
    assert shard_rows(keys, 2, 4).tolist() == [i for i, k in enumerate(keys) if shard_of_key(k, 4) == 2]
    # listing again with other files around never moves a key: its shard is a function of the key alone
    more = sorted(keys[::3] + [f"new/{i}.png" for i in range(500)])
    for s in range(4):
        assert {more[i] for i in shard_rows(more, s, 4)} & set(keys) == {keys[i] for i in shard_rows(keys, s, 4)
                                                                         if i % 3 == 0}
    import hashlib

    assert shard_of_key("a.png", 7) == int.from_bytes(hashlib.sha256(b"a.png").digest()[:8], "big") % 7


def test_shards_are_disjoint_and_cover_the_source(tmp_path, folder, raw_reference):
    seen_rows, seen_skips = [], []
    for i in range(3):
        res = extract(folder, tmp_path / f"part-{i}.h5", model=raw_reference, shard=f"{i}/3", workers=0,
                      progress=False)
        with FeatureStore(res.path) as s:
            assert s.shard == (i, 3) and s.is_complete and s.source_spec == str(folder.resolve())
            assert all(shard_of_key(k, 3) == i for k in s.keys + s.skipped["key"].tolist())
            seen_rows += s.keys
            seen_skips += s.skipped["key"].tolist()
    with FeatureStore(raw_reference) as whole:
        assert sorted(seen_rows) == sorted(whole.keys) and len(set(seen_rows)) == len(seen_rows)
        assert seen_skips == ["c1/broken.png"]


def test_a_shard_resumes_and_updates_as_its_own_shard(tmp_path, folder, raw_reference):
    path = tmp_path / "part.h5"

    def stop(progress):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract(folder, path, model=raw_reference, shard="1/2", batch_size=4, workers=0, callback=stop,
                progress=False)
    done = extract(folder, path, model=raw_reference, resume=True, workers=0, progress=False)  # shard from the store
    with FeatureStore(done.path) as s:
        assert s.shard == (1, 2) and s.is_complete
        keys = set(s.keys)
    whole = extract(folder, tmp_path / "direct.h5", model=raw_reference, shard=(1, 2), workers=0, progress=False)
    with FeatureStore(whole.path) as s:
        assert set(s.keys) == keys
    with pytest.raises(StoreError, match=r"holds shard 1/2, not shard 0/2: --resume and --update continue"):
        extract(folder, path, model=raw_reference, update=True, shard="0/2", workers=0, progress=False)
    for i in range(40, 60):  # new files: each goes to the shard its key hashes to
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(folder / "c0" / f"{i:03d}.png")
    added = extract(folder, path, model=raw_reference, update=True, workers=0, progress=False)
    new_in_shard = [k for k in open_source(folder).keys if k.startswith("c0/0") and int(k[3:6]) >= 40
                    and shard_of_key(k, 2) == 1]
    assert added.n_new == len(new_in_shard) > 0


def test_shard_bad_input_is_one_line(tmp_path, folder, raw_reference):
    runner = CliRunner()
    model = ["--model", str(raw_reference)]
    for args, message in ((["--shard", "3/2"], "invalid shard='3/2': I must be from 0 to N-1"),
                          (["--shard", "x"], "invalid shard='x': expected I/N"),
                          (["--shard", "0/2"], "--shard 0/2 needs --model: every shard must use the same model"),
                          (["--shard", "0/2", *model, "--epochs", "3"],
                           "train_config/model_config (--epochs) shape the model trained when no model is given")):
        out = runner.invoke(cli, ["extract", str(folder), "-o", str(tmp_path / "p.h5"), "--no-progress", *args])
        assert out.exit_code == 1 and message in out.output and "Traceback" not in out.output, out.output
    assert not (tmp_path / "p.h5").exists()
    with pytest.raises(ConfigError, match="invalid shard=\\(1, 1\\)"):
        extract(folder, tmp_path / "q.h5", shard=(1, 1))


def test_what_the_walk_left_out_is_recorded_by_exactly_one_shard(tmp_path, folder, raw_reference):
    import os

    outside = tmp_path / "outside"
    outside.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(outside / "x.png")
    os.symlink(outside, folder / "c0" / "elsewhere")  # a folder link leading out of SOURCE: never followed
    skips = []
    for i in range(3):
        res = extract(folder, tmp_path / f"p{i}.h5", model=raw_reference, shard=f"{i}/3", workers=0, progress=False)
        with FeatureStore(res.path) as s:
            skips += s.skipped.values.tolist()
    left_out = [(k, r) for k, r in skips if k.startswith("c0/elsewhere")]
    assert len(left_out) == 1 and "outside" in left_out[0][1], skips


# -- the shards group's survivors (benchmarks/mutation.py): the options, the shard rule's edges, the helpers --------

def test_a_key_that_is_no_utf_8_gets_its_shard_from_its_own_bytes_and_shard_rows_are_int64():
    import hashlib
    import os

    key = os.fsdecode(b"img/\xff\xfe.png")  # a file name that is not UTF-8: a lone surrogate in Python
    digest = hashlib.sha256(b"img/\xff\xfe.png").digest()
    assert [shard_of_key(key, n) for n in (3, 5, 1000)] == [int.from_bytes(digest[:8], "big") % n
                                                            for n in (3, 5, 1000)]
    for keys, index in (([], 0), (["a.png"], 1 - shard_of_key("a.png", 2))):  # no key at all, or none in the shard
        rows = shard_rows(keys, index, 2)
        assert rows.dtype == np.int64 and rows.tolist() == []


def test_shard_settings_at_their_edges():
    from cvae_features.extraction import ExtractOptions

    assert [ExtractOptions(shard=s).shard for s in ("0/1", (0, 1), [2, 3], "2/3", None)] == [(0, 1), (0, 1), (2, 3),
                                                                                          (2, 3), None]
    for shard, message in (("1/1", "here 0 to 0"), ("2/2", "here 0 to 1"), ("-1/2", "here 0 to 1"),
                           ("0/0", "here 0 to 0"), ((0, -3), "here 0 to 0")):
        with pytest.raises(ConfigError) as err:
            ExtractOptions(shard=shard)
        assert str(err.value) == f"invalid shard={shard!r}: I must be from 0 to N-1 (shards are numbered from 0), {message}"


def test_a_whole_store_is_not_continued_as_a_shard_nor_from_another_folder(tmp_path, folder, raw_reference):
    import re

    path = tmp_path / "whole.h5"
    extract(folder, path, model=raw_reference, workers=0, progress=False)
    with pytest.raises(StoreError, match=f"^{re.escape(str(path))} holds the whole source, not shard 0/2: --resume "
                                         "and --update continue"):
        extract(folder, path, model=raw_reference, update=True, shard="0/2", workers=0, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(other / "a.png")
    with pytest.raises(StoreError, match=f"^{re.escape(str(path))} was extracted from {re.escape(str(folder.resolve()))}, "
                                         f"not {re.escape(str(other.resolve()))}: --resume and --update continue"):
        extract(other, path, model=raw_reference, update=True, workers=0, progress=False)
    assert extract(folder, path, model=raw_reference, update=True, workers=0, progress=False).n_new == 0


def test_extract_options_are_checked_at_their_bounds():
    from cvae_features.extraction import ExtractOptions

    ok = ExtractOptions(features="raw", dim=1, batch_size=1, max_bad=0, compression="none", resume=True)
    assert (ok.dim, ok.batch_size, ok.max_bad, ok.compression) == (1, 1, 0, None)
    assert ExtractOptions(dim=np.int64(3), batch_size=np.int32(2), max_bad=np.int64(1), compression="gzip").compression \
        == "gzip"
    for field, bad, words in (("dim", 0, "an integer >= 1"), ("dim", True, "an integer >= 1"),
                              ("dim", 2.0, "an integer >= 1"), ("batch_size", 0, "an integer >= 1"),
                              ("batch_size", True, "an integer >= 1"), ("batch_size", 8.0, "an integer >= 1"),
                              ("max_bad", -1, "an integer >= 0 or None"), ("max_bad", False, "an integer >= 0 or None"),
                              ("max_bad", 1.5, "an integer >= 0 or None")):
        with pytest.raises(ConfigError, match=f"^invalid {field}={bad!r}: expected {words}$"):
            ExtractOptions(**{field: bad})
    with pytest.raises(ConfigError, match="unknown feature kind|features"):
        ExtractOptions(features="nope")
    for modes, words in ((("resume", "update"), "resume and update"), (("update", "overwrite"), "update and overwrite"),
                         (("resume", "update", "overwrite"), "resume and update and overwrite")):
        with pytest.raises(ConfigError, match=f"^{words} exclude each other: pick one$"):
            ExtractOptions(**{m: True for m in modes})
    assert ExtractOptions(update=True).update and ExtractOptions(overwrite=True).overwrite


def test_engine_options_are_checked_for_the_engine_chosen():
    from cvae_features.extraction import ExtractOptions

    assert ExtractOptions(engine="local", workers=0, device="cuda").engine == "local"  # the local engine checks none
    for kw in ({"engine": "ray"}, {"engine": "ray", "workers": 1, "device": "cpu", "ray_address": "auto"},
               {"engine": "ray", "workers": np.int64(3), "device": "auto", "ray_address": "head:6379"}):
        assert ExtractOptions(**kw).engine == "ray"
    for kw, message in (
            ({"engine": "spark"}, "invalid engine='spark': expected 'local' or 'ray'"),
            ({"ray_address": "auto"}, "--ray-address auto needs --engine ray (the local engine runs on this machine)"),
            ({"engine": "ray", "ray_address": "  "}, "invalid ray_address='  ': expected HOST:PORT of a Ray head, or 'auto'"),
            ({"engine": "ray", "ray_address": 6379}, "invalid ray_address=6379: expected HOST:PORT"),
            ({"engine": "ray", "workers": -1}, "invalid workers=-1: expected an integer >= 1 (Ray actors) or None"),
            ({"engine": "ray", "workers": True}, "invalid workers=True: expected an integer >= 1"),
            ({"engine": "ray", "workers": 2.0}, "invalid workers=2.0: expected an integer >= 1"),
            ({"engine": "ray", "workers": 0}, "--engine ray cannot honour --workers 0 (decoding in this process; with "
                                              "--engine ray, --workers N is the number of actors)"),
            ({"engine": "ray", "device": "cuda"}, "--engine ray cannot honour --device cuda (the Ray actors run the "
                                                  "featurizer on CPU; use auto or cpu)"),
            ({"engine": "ray", "workers": 0, "device": "CPU"}, "--engine ray cannot honour --workers 0 (decoding in "
                                                               "this process; with --engine ray, --workers N is the "
                                                               "number of actors) and --device CPU (the Ray actors")):
        with pytest.raises(ConfigError) as err:
            ExtractOptions(**kw)
        assert str(err.value).startswith(message), (kw, str(err.value))


def test_options_merge_overrides_and_refuse_unknown_names_and_other_types(tmp_path):
    from cvae_features.extraction import ExtractOptions, _options

    base = ExtractOptions(workers=0, features="raw")
    assert _options(base, {}) is base and _options(None, {"dim": 3}) == ExtractOptions(dim=3)
    assert _options(base, {"batch_size": 7, "progress": False}) == ExtractOptions(workers=0, features="raw",
                                                                                   batch_size=7, progress=False)
    with pytest.raises(TypeError, match=r"^extract\(\) got unexpected keyword argument\(s\) \['bogus', 'zz'\]; "
                                        r"options are \['batch_size', "):
        extract("digits", tmp_path / "x.h5", zz=1, bogus=2, workers=0)
    with pytest.raises(ConfigError, match="^invalid options of type dict: expected ExtractOptions$"):
        extract("digits", tmp_path / "x.h5", options={"workers": 0})


def test_store_labels_map_known_labels_and_keep_unknown_ones():
    from cvae_features.extraction import _store_labels

    got = _store_labels(np.array([0, -1, 2, 1, 0]), np.array([5, 6, 7]))
    assert got.tolist() == [5, -1, 7, 6, 5] and got.dtype == np.int64
    none = _store_labels(np.array([0, 1, -1]), np.zeros(0, np.int64))  # a source without label names
    assert none.tolist() == [-1, -1, -1] and none.dtype == np.int64


def test_the_helpers_of_a_writer_empty_batch_non_finite_rows_and_the_space_a_rerun_needs(tmp_path):
    from cvae_features.errors import ModelError
    from cvae_features.extraction import _bytes_needed, _check_finite, _empty_batch
    from cvae_features.store import StoreWriter

    keys = [f"k{i}.png" for i in range(4)]
    with StoreWriter.create(tmp_path / "s.h5", feature_kind="vae", dim=3, preprocess={"size": 8, "channels": 1,
                                                                                     "resize": "crop"},
                            source="x", plan_keys=keys, extras=("logvar", "recon_error", "neg_elbo")) as w:
        batch = _empty_batch(w, 3)
        assert sorted(batch) == ["extras", "features", "labels", "plan_index"]
        assert batch["plan_index"] == [] and batch["labels"] == []
        shapes = {name: (a.shape, a.dtype) for name, a in [("features", batch["features"]), *batch["extras"].items()]}
        assert shapes == {"features": ((0, 3), np.float32), "logvar": ((0, 3), np.float32),
                          "recon_error": ((0,), np.float32), "neg_elbo": ((0,), np.float32)}
        w.write_batch(np.arange(2), np.ones((2, 3), np.float32), [-1, -1],
                      {"logvar": np.zeros((2, 3), np.float32), "recon_error": np.zeros(2, np.float32),
                       "neg_elbo": np.zeros(2, np.float32)})
        feats = np.array([[1, 2, 3], [1, np.nan, 3], [np.inf, 0, 0], [0, 0, 0]], np.float32)
        with pytest.raises(ModelError, match=r"^the model gave non-finite features \(NaN or inf\) for k2.png and 1 "
                                             r"more of its batch: .*; nothing of that batch was written \(2 rows kept "
                                             r"in .*s.h5\)$"):
            _check_finite(feats, keys, np.array([3, 2, 1, 0]), w)
        _check_finite(feats[[0, 3]], keys, np.array([0, 1]), w)  # all finite: nothing said
        assert _bytes_needed(w, 10) == pytest.approx(1.2 * w.bytes_per_row() * 10 + 2 ** 20)
        assert w.bytes_per_row() > 12


def test_the_kind_of_features_from_the_store_the_option_or_the_reference(tmp_path, raw_reference):
    from cvae_features.extraction import _resolve_kind

    p = tmp_path / "s.h5"
    assert _resolve_kind(None, None, None, p) == "vae"
    assert _resolve_kind("pca", None, None, p) == "pca"
    assert _resolve_kind(None, raw_reference, None, p) == _resolve_kind(None, str(raw_reference), None, p) == "raw"
    assert _resolve_kind(None, tmp_path / "run", None, p) == "vae"  # a path that is no store: a model's
    assert _resolve_kind(None, object(), None, p) == "vae"  # a model object
    assert _resolve_kind(None, None, {"kind": "pca"}, p) == _resolve_kind("pca", None, {"kind": "pca"}, p) == "pca"
    with pytest.raises(StoreError, match=r"^store .*s.h5 holds pca features, not raw; use --overwrite or another -o$"):
        _resolve_kind("raw", None, {"kind": "pca"}, p)


def test_file_exists_only_for_files_of_a_folder_source_also_dangling_links(tmp_path, folder):
    import os

    from cvae_features.data import ArraySource
    from cvae_features.extraction import _file_exists

    src = open_source(folder)
    os.symlink(tmp_path / "nowhere.png", folder / "c0" / "dangling.png")
    assert _file_exists(src, "c0/000.png") and _file_exists(src, "c0/dangling.png")
    assert not _file_exists(src, "c0/999.png")
    assert not _file_exists(ArraySource(np.zeros((1, 8, 8), np.uint8), keys=["c0/000.png"]), "c0/000.png")


def test_the_records_of_a_run_as_dicts():
    from pathlib import Path

    from cvae_features.extraction import ExtractProgress, ExtractResult

    assert ExtractProgress(1, 2, 3, 4).to_dict() == {"batch": 1, "n_done": 2, "n_skipped": 3, "n_total": 4}
    common = dict(feature_kind="raw", dim=2, n_rows=3, n_skipped=1, n_new=3, n_new_skipped=1, complete=True,
                  seconds=0.5, images_per_s=8.0, model_fingerprint=None, trained=False)
    d = ExtractResult(path=Path("a/s.h5"), run_dir=Path("a/s.run"), skipped=[("k.png", "bad")], **common).to_dict()
    assert (d["path"], d["run_dir"], d["skipped"]) == ("a/s.h5", "a/s.run", [["k.png", "bad"]])
    assert {k: d[k] for k in common} == common
    d = ExtractResult(path=Path("s.h5"), **common).to_dict()
    assert (d["path"], d["run_dir"], d["skipped"]) == ("s.h5", None, [])


class _PidBatch:
    """Raw pixels, noting the process each batch call runs in (a line per call in ``log``)."""

    def __init__(self, log):
        from cvae_features.data import Preprocess
        from cvae_features.featurizers import RawFeaturizer

        self.log, self.raw = log, RawFeaturizer(Preprocess(8, 1)).batch_fn((), "cpu")

    def __call__(self, images):
        import os

        with open(self.log, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        return self.raw(images)


class _Stop(Exception):
    pass


def _where(log, stop=False):
    """A raw featurizer noting the device its batch call is made for (``devices``) and the processes it runs in."""
    from cvae_features.data import Preprocess
    from cvae_features.featurizers import RawFeaturizer

    class Where(RawFeaturizer):
        devices = []

        def batch_fn(self, extras, device):
            self.devices.append(str(device))
            if stop:
                raise _Stop  # before any row: an engine='ray' run never reaches Ray
            return _PidBatch(log)

    return Where(Preprocess(8, 1))


def test_on_a_cpu_the_decoding_workers_encode_on_an_accelerator_this_process_and_ray_encodes_on_its_cpus(
        tmp_path, folder, monkeypatch):
    import os

    import torch

    from cvae_features import extraction

    def pids(log):
        return set(log.read_text().split()) if log.exists() else set()

    me = str(os.getpid())
    for workers, in_this_process in ((2, False), (0, True)):  # workers=0 decodes, and so encodes, here
        feat, log = _where(tmp_path / f"w{workers}.log"), tmp_path / f"w{workers}.log"
        res = extract(folder, tmp_path / f"w{workers}.h5", model=feat, workers=workers, batch_size=8, progress=False)
        assert feat.devices == ["cpu"] and res.n_rows == 40 and res.n_changed == res.n_removed == 0
        assert (pids(log) == {me}) is in_this_process and pids(log)
    monkeypatch.setattr(extraction, "resolve_device", lambda device: torch.device("meta"))  # an accelerator
    feat, log = _where(tmp_path / "acc.log"), tmp_path / "acc.log"
    extract(folder, tmp_path / "acc.h5", model=feat, workers=2, batch_size=8, progress=False)
    assert feat.devices == ["meta"] and pids(log) == {me}  # the workers only decode
    pytest.importorskip("ray", reason="the Ray engine needs Ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    feat = _where(tmp_path / "ray.log", stop=True)
    with pytest.raises(_Stop):  # the Ray actors encode on their CPUs, whatever this machine has
        extract(folder, tmp_path / "ray.h5", model=feat, engine="ray", workers=1, progress=False)
    assert feat.devices == ["cpu"] and not (tmp_path / "ray.h5").exists()


def test_an_address_where_no_ray_answers_is_refused_before_anything_is_written(tmp_path, folder, monkeypatch):
    import socket

    pytest.importorskip("ray", reason="the Ray engine needs Ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(ConfigError, match=f"^cannot reach a Ray cluster at --ray-address {closed}: "):
        extract(folder, tmp_path / "r.h5", features="raw", engine="ray", ray_address=closed, progress=False)
    assert not (tmp_path / "r.h5").exists()


def test_one_image_a_shard_of_one_key_or_none_and_the_timing_of_a_run(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from cvae_features import extraction
    from cvae_features.errors import DataError

    names = [f"{i}.png" for i in range(20)]
    pair = [next(n for n in names if shard_of_key(n, 2) == s) for s in (0, 1)]  # a key in each shard of 2
    root, one = tmp_path / "two", tmp_path / "one"
    for folder_, files in ((root, pair), (one, pair[:1])):
        folder_.mkdir()
        for name in files:
            Image.fromarray(np.full((8, 8), 7, np.uint8)).save(folder_ / name)
    ticks = iter([10.0, 10.5])  # the extraction pass takes half a second
    monkeypatch.setattr(extraction, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    res = extract(one, tmp_path / "one.h5", features="raw", workers=0, progress=False, resume=True)  # starts one
    assert (res.n_rows, res.n_new, res.seconds, res.images_per_s, res.complete) == (1, 1, 0.5, 2.0, True)
    monkeypatch.setattr(extraction, "time", SimpleNamespace(perf_counter=lambda: 3.0))  # a clock that does not move
    ref = extract(root, tmp_path / "ref.h5", features="raw", workers=0, progress=False)
    assert ref.seconds == 0.0 and np.isnan(ref.images_per_s)
    part = extract(root, tmp_path / "p1.h5", model=ref.path, shard="1/2", workers=0, progress=False)
    with FeatureStore(part.path) as s:
        assert s.keys == [pair[1]] and part.n_rows == 1
    with pytest.raises(DataError, match=r"^shard 1/2 of .*one.* holds no images$"):
        extract(one, tmp_path / "p.h5", model=ref.path, shard="1/2", workers=0, progress=False)
    assert not (tmp_path / "p.h5").exists()


def test_a_new_store_left_without_a_row_is_removed_but_a_store_being_continued_is_kept(tmp_path, raw_reference):
    from cvae_features.data import Preprocess
    from cvae_features.errors import DataError
    from cvae_features.featurizers import RawFeaturizer
    from cvae_features.store import StoreWriter

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"not a png")
    undecodable = r"^none of the 1 images of .* could be decoded \(first: x.png: "
    with pytest.raises(DataError, match=undecodable):
        extract(bad, tmp_path / "b.h5", model=raw_reference, workers=0, progress=False)
    assert not (tmp_path / "b.h5").exists()
    fields = RawFeaturizer(Preprocess(8, 1)).store_fields()
    StoreWriter.create(tmp_path / "c.h5", **fields, source="bad", plan_keys=["x.png"]).close()  # nothing written yet
    with pytest.raises(DataError, match=undecodable):
        extract(bad, tmp_path / "c.h5", model=raw_reference, resume=True, workers=0, progress=False)
    with FeatureStore(tmp_path / "c.h5") as s:
        assert (s.n_rows, s.skipped["key"].tolist()) == (0, ["x.png"])


def test_a_built_in_data_set_is_read_from_the_data_dir_given(tmp_path, fake_fashion_dir, monkeypatch):
    from cvae_features.data import builtin

    folder, written = fake_fashion_dir
    monkeypatch.setattr(builtin, "SYSTEM_DATA_DIR", str(tmp_path / "system"))  # nowhere else to find it
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CVAE_DATA", raising=False)
    monkeypatch.setenv("CVAE_NO_DOWNLOAD", "1")
    res = extract("fashion-mnist:test", tmp_path / "f.h5", features="raw", data_dir=folder, workers=0, progress=False)
    with FeatureStore(res.path) as s:
        assert s.n_rows == 10 and s.labels.tolist() == written["test"][1].tolist()


def test_a_full_disk_names_what_is_kept_and_about_how_much_more_space_is_needed(tmp_path, folder, raw_reference,
                                                                                 monkeypatch):
    import shutil

    from cvae_features.errors import StoreNoSpaceError
    from cvae_features.store import StoreWriter

    real = shutil.disk_usage
    for batches, kept in ((1, "the 8 rows written are kept: free space, then finish with --resume"),
                          (0, "nothing was kept: free space, then run again")):
        calls = []

        def usage(path):  # room for the new store and ``batches`` batches, then 1000 bytes
            calls.append(path)
            return real(path) if len(calls) <= 1 + batches else real(path)._replace(free=1000)

        monkeypatch.setattr(shutil, "disk_usage", usage)
        path = tmp_path / f"full{batches}.h5"
        with pytest.raises(StoreNoSpaceError) as err:
            extract(folder, path, model=raw_reference, batch_size=8, workers=0, progress=False)
        monkeypatch.setattr(shutil, "disk_usage", real)
        if batches:
            with StoreWriter.append_to(path) as w:
                per_row = w.bytes_per_row()
        else:
            assert not path.exists()  # a new store without a row is not kept
            with FeatureStore(raw_reference) as s:
                per_row = StoreWriter.create(tmp_path / "probe.h5", feature_kind="raw", dim=s.dim,
                                             preprocess=s.preprocess_dict, source="x", plan_keys=["k"]).bytes_per_row()
        left = 41 - 8 * batches
        assert str(err.value) == (f"no space left on the device of {path}: about "
                                  f"{(1.2 * per_row * left + 2 ** 20) / 1e6:,.1f} MB more are needed for the {left} "
                                  f"images left; {kept}")


def test_an_in_memory_source_without_walk_skips_is_sharded_too(tmp_path, raw_reference):
    from cvae_features.data import ArraySource

    keys = [f"m/{i}" for i in range(12)]
    src = ArraySource(np.arange(12 * 64, dtype=np.uint8).reshape(12, 8, 8), keys=keys)
    assert not hasattr(src, "ignored")
    res = extract(src, tmp_path / "m.h5", model=raw_reference, shard="1/3", workers=0, progress=False)
    with FeatureStore(res.path) as s:
        assert s.keys == [k for k in keys if shard_of_key(k, 3) == 1] and s.n_rows > 0 and s.n_skipped == 0


def test_errors_of_a_run_name_the_store(tmp_path, folder, raw_reference):
    import re

    from cvae_features.errors import DataError

    path = tmp_path / "s.h5"
    with pytest.raises(DataError, match=r"^1 images could not be decoded, more than max_bad=0 \(first: c1/broken.png: "
                                        rf".*\); the \d+ rows written are kept in {re.escape(str(path))}$"):
        extract(folder, path, model=raw_reference, max_bad=0, batch_size=8, workers=0, progress=False)
    cut = tmp_path / "cut.h5"

    def stop(progress):
        raise _Stop

    with pytest.raises(_Stop):  # the first batch written, the rest pending
        extract(folder, cut, model=raw_reference, batch_size=8, callback=stop, workers=0, progress=False)
    with pytest.raises(StoreError, match=rf"^33 images still pending in {re.escape(str(cut))} are not in "):
        extract(open_source(folder).subset([0, 1]), cut, model=raw_reference, resume=True, workers=0, progress=False)


def test_a_run_that_trains_its_model_reports_the_training_and_counts_skips_in_its_speed(tmp_path, folder, monkeypatch):
    from types import SimpleNamespace

    from cvae_features import extraction

    res = extract(folder, tmp_path / "auto.h5", dim=2, train_config={"epochs": 1}, workers=0, progress=False)
    assert res.trained and res.run_dir == tmp_path / "auto.run" and (tmp_path / "auto.run" / "model.pt").exists()
    assert res.train_seconds > 0 and res.n_train_images == 40 and res.model_fingerprint
    with FeatureStore(res.path) as s:
        assert res.model_fingerprint == s.model_fingerprint
    ticks = iter([2.0, 2.5])
    monkeypatch.setattr(extraction, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    again = extract(folder, tmp_path / "again.h5", model=res.path, workers=0, progress=False)
    assert (again.n_new, again.n_new_skipped, again.images_per_s) == (40, 1, 82.0)  # 41 images in 0.5 s
    assert not again.trained and again.run_dir is None and again.train_seconds == 0.0
