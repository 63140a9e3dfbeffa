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
