"""The training loop's seams: batch dicts with labels and row indices, hooks, a loop that is not the main process."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from cvae_features._train_loop import Loop
from cvae_features.model import ConvVAE, VAEConfig
from cvae_features.training import TrainConfig, TrainHook, train

HISTORY_COLUMNS = ["epoch", "train_loss", "train_recon", "train_kl", "beta", "val_loss", "val_recon", "val_kl",
                   "lr", "images_per_s", "seconds"]
WRITTEN = {"model.pt", "checkpoint.pt", "history.csv", "history.json", "reconstructions.png"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    return (load_digits().images * 255 / 16).round().astype(np.uint8)[:, None]


class _Recorder(TrainHook):
    """Every call, with copies of what the hook was given."""

    def __init__(self, run_dir=None):
        self.run_dir, self.batches, self.epochs, self.ended = run_dir, [], [], []

    def on_batch_end(self, loop, epoch, batch_index, logs):
        batch = {k: v.clone() for k, v in logs["batch"].items()}
        self.batches.append((epoch, batch_index, logs["n_batches"], batch))

    def on_epoch_end(self, loop, row, state, improved, finished):
        on_disk = None
        if self.run_dir is not None:
            on_disk = torch.load(self.run_dir / "checkpoint.pt", weights_only=True)["epoch"]
        same_model = all(torch.equal(v, state["model"][k]) for k, v in loop.model.state_dict().items())
        self.epochs.append({"row": dict(row), "state_epoch": state["epoch"], "improved": improved,
                            "finished": finished, "last_row": state["history"][-1] == row,
                            "checkpoint_on_disk": on_disk, "same_model": same_model,
                            "best_epoch": state["best_epoch"]})

    def on_train_end(self, loop, state):
        self.ended.append(state["epoch"])
        self.val_images, self.val_labels = loop.val_images[:].clone(), loop.val_labels.clone()  # [:]: a tensor of a cache too


def test_a_hook_gets_every_epoch_with_its_row_state_and_the_files_already_written(tmp_path, digits):
    run = tmp_path / "run"
    hook = _Recorder(run)
    # 20 training images and a high constant learning rate overfit quickly: some epochs do not improve
    result = train(digits[:40], run, model_config={"latent_dim": 8}, hooks=[hook], progress=False,
                   train_config=dict(epochs=40, batch_size=8, lr=1e-2, schedule="constant", val_fraction=0.5,
                                     patience=2))
    assert result.stopped_early and len(hook.epochs) == result.epochs_run < 40
    assert [e["row"] for e in hook.epochs] == result.history
    assert [e["state_epoch"] for e in hook.epochs] == list(range(1, result.epochs_run + 1))
    assert [e["checkpoint_on_disk"] for e in hook.epochs] == list(range(1, result.epochs_run + 1))
    assert all(e["last_row"] and e["same_model"] for e in hook.epochs)
    val = [r["val_loss"] for r in result.history]
    assert [e["improved"] for e in hook.epochs] == [v < min(val[:i], default=np.inf) for i, v in enumerate(val)]
    assert False in [e["improved"] for e in hook.epochs]
    assert [e["finished"] for e in hook.epochs] == [False] * (result.epochs_run - 1) + [True]
    assert hook.epochs[-1]["best_epoch"] == result.best_epoch and hook.ended == [result.epochs_run]
    # every step, 3 batches of 8 an epoch (20 images): each epoch sees each training row once
    assert [(e, b, n) for e, b, n, _ in hook.batches] == [
        (e, b, 3) for e in range(1, result.epochs_run + 1) for b in range(3)]
    for epoch in range(1, result.epochs_run + 1):
        seen = torch.cat([batch["index"] for e, _, _, batch in hook.batches if e == epoch])
        assert sorted(seen.tolist()) == list(range(20))
    # the history columns of a ConvVAE are what they were
    assert all(list(row) == HISTORY_COLUMNS for row in result.history)
    assert list(json.loads((run / "history.json").read_text())[0]) == HISTORY_COLUMNS
    with open(run / "history.csv") as fh:
        assert next(csv.reader(fh)) == HISTORY_COLUMNS


def _folder(tmp_path):
    """Class folders a, b, c and unlabelled root files; every image one grey level, which names its label."""
    folder, label_of_level, level = tmp_path / "images", {}, 10
    for label, name in [(-1, None), (0, "a"), (1, "b"), (2, "c")]:
        where = folder if name is None else folder / name
        where.mkdir(parents=True, exist_ok=True)
        for i in range(3 if name is None else 8):
            Image.fromarray(np.full((8, 8), level, np.uint8)).save(where / f"{i:02d}.png")
            label_of_level[level] = label
            level += 5
    # sorted first among a's rows: every later row shifts when it is skipped
    (folder / "a" / "00-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder, label_of_level


@pytest.mark.parametrize("max_images", [None, 20])
def test_batches_carry_the_sources_labels_of_their_rows(tmp_path, max_images):
    folder, label_of_level = _folder(tmp_path)
    hook = _Recorder()
    result = train(folder, tmp_path / "run", model_config={"latent_dim": 4}, hooks=[hook], progress=False,
                   train_config=dict(epochs=2, batch_size=4, workers=0, max_images=max_images))
    if max_images is None:
        assert [key for key, _ in result.skipped] == ["a/00-broken.png"]
        assert result.n_train + result.n_val == 27
    level_of_row = {}
    for _, _, _, batch in hook.batches:
        assert set(batch) == {"images", "labels", "index", "noise_key"}
        assert (batch["images"].dtype, batch["labels"].dtype, batch["index"].dtype) == (
            torch.uint8, torch.int64, torch.int64)
        assert batch["images"].shape[1:] == (1, 8, 8) and len(batch["labels"]) == len(batch["index"])
        levels = batch["images"][:, 0, 0, 0].tolist()
        assert batch["labels"].tolist() == [label_of_level[v] for v in levels]
        for row, v in zip(batch["index"].tolist(), levels):
            assert level_of_row.setdefault(row, v) == v  # an index names the same image in every epoch
    assert sorted(level_of_row) == list(range(result.n_train))
    if max_images is None:
        assert {label_of_level[v] for v in level_of_row.values()} == {-1, 0, 1, 2}
    # and the validation rows the loop gives the model's loss (test below) carry their own labels
    val_levels = hook.val_images[:, 0, 0, 0].tolist()
    assert len(val_levels) == result.n_val > 0
    assert hook.val_labels.tolist() == [label_of_level[v] for v in val_levels]
    assert not set(val_levels) & set(level_of_row.values())


def test_an_array_source_has_unknown_labels(tmp_path, digits):
    hook = _Recorder()
    train(digits[:50], tmp_path / "run", model_config={"latent_dim": 4}, hooks=[hook], progress=False,
          train_config=dict(epochs=1, batch_size=16))
    assert len(hook.batches) == 3  # 45 training images
    assert all(batch["labels"].tolist() == [-1] * len(batch["index"]) for _, _, _, batch in hook.batches)
    rows = torch.cat([batch["index"] for _, _, _, batch in hook.batches])
    assert sorted(rows.tolist()) == list(range(45))


class _RecordingVAE(ConvVAE):
    """A ConvVAE that keeps a copy of every batch its loss is given, and whether it was training."""

    def __init__(self, config):
        super().__init__(config)
        self.seen = []

    def loss(self, batch, beta=None):
        self.seen.append((self.training, {k: v.clone() for k, v in batch.items()}))
        return super().loss(batch, beta)


def _loop(images, labels, n_val, is_main_process, hooks=(), callback=None):
    mcfg = VAEConfig(image_size=8, latent_dim=4, widths=(8,))
    tcfg = TrainConfig(epochs=2, batch_size=16, device="cpu", seed=3)
    return Loop(mcfg, tcfg, torch.device("cpu"), None, images[n_val:], images[:n_val], False, callback,
                train_labels=labels[n_val:], val_labels=labels[:n_val], hooks=hooks,
                is_main_process=is_main_process, model_class=_RecordingVAE)


def _data(n=62):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(-1, 5, (n,), generator=g)
    return images, labels


def test_the_models_loss_gets_train_and_validation_batches_with_their_rows(tmp_path):
    images, labels = _data()
    n_val = 12
    train_x, train_y, val_x, val_y = images[n_val:], labels[n_val:], images[:n_val], labels[:n_val]
    loop = _loop(images, labels, n_val, is_main_process=False)
    (tmp_path / "run").mkdir()
    loop.run(tmp_path / "run", {})
    seen = loop.model.seen
    training = [b for t, b in seen if t]
    evaluation = [b for t, b in seen if not t]
    assert len(training) == 2 * 4 and len(evaluation) == 2  # 50 training images in batches of 16, 2 epochs
    for batch in training:
        assert set(batch) == {"images", "labels", "index", "noise_key"}
        assert torch.equal(batch["images"], train_x[batch["index"]])
        assert torch.equal(batch["labels"], train_y[batch["index"]])
    for epoch in range(2):
        rows = torch.cat([b["index"] for b in training[4 * epoch:4 * epoch + 4]])
        assert sorted(rows.tolist()) == list(range(50))
    assert not torch.equal(training[0]["index"], training[4]["index"])  # reshuffled each epoch
    for batch in evaluation:
        assert torch.equal(batch["index"], torch.arange(n_val))
        assert torch.equal(batch["images"], val_x) and torch.equal(batch["labels"], val_y)
        assert batch["labels"].dtype == torch.int64 and batch["index"].dtype == torch.int64


def test_a_loop_that_is_not_the_main_process_writes_nothing_and_trains_the_same(tmp_path):
    images, labels = _data()
    main_dir, other_dir = tmp_path / "main", tmp_path / "other"
    main_dir.mkdir()
    other_dir.mkdir()
    calls = {"main": [], "other": []}
    main_hook, other_hook = _Recorder(main_dir), _Recorder(other_dir)
    main = _loop(images, labels, 12, True, [main_hook], lambda e, b, logs: calls["main"].append((e, b)))
    main_state = main.run(main_dir, {})
    other = _loop(images, labels, 12, False, [other_hook], lambda e, b, logs: calls["other"].append((e, b)))
    other_state = other.run(other_dir, {})

    assert {p.name for p in main_dir.iterdir()} == WRITTEN
    assert list(other_dir.iterdir()) == []
    assert len(main_hook.epochs) == 2 and main_hook.ended == [2] and len(calls["main"]) == 8
    assert other_hook.epochs == other_hook.batches == other_hook.ended == calls["other"] == []

    assert main_state["model"].keys() == other_state["model"].keys()
    for k, v in main_state["model"].items():
        assert torch.equal(v, other_state["model"][k]), k
    timing = ("seconds", "images_per_s")
    assert ([{k: v for k, v in r.items() if k not in timing} for r in main.history]
            == [{k: v for k, v in r.items() if k not in timing} for r in other.history])
    saved = torch.load(main_dir / "checkpoint.pt", weights_only=True)
    for k, v in saved["model"].items():
        assert torch.equal(v, other.model.state_dict()[k]), k
