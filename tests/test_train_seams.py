"""The training loop's seams: batch dicts with labels and row indices, hooks, a loop that is not the main process."""

import copy
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


# -- the loop written out ------------------------------------------------------------------------

class _OwnNoiseVAE(ConvVAE):
    """A ConvVAE that draws its own reparameterisation noise (torch.randn): the loop's seeded global generator."""

    def loss(self, batch, beta=None):
        return super().loss({k: v for k, v in batch.items() if k != "noise_key"}, beta)


class _Logs(TrainHook):
    def __init__(self):
        self.batches = []

    def on_batch_end(self, loop, epoch, batch_index, logs):
        self.batches.append({"epoch": epoch, "b": batch_index, "n_batches": logs["n_batches"],
                             "loss": float(logs["loss"]), "beta": logs["beta"], "lr": logs["lr"],
                             "batch": {k: v.clone() for k, v in logs["batch"].items()},
                             "grad": logs["model"] is loop.model})


def _written_out(model_class, mcfg, tcfg, train_x, train_y, val_x, val_y, scaler=None, amp=None):
    """What Loop.run computes, step by step: the weights, every batch's logs and the history rows."""
    from cvae_features._train_setup import derive_seed
    from cvae_features.augment import resolve_augment

    torch.manual_seed(derive_seed(tcfg.seed, "init"))
    model = model_class(mcfg)
    n, bs = len(train_x), tcfg.batch_size
    n_batches = -(-n // bs)
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    total = tcfg.epochs * n_batches
    sched = {"onecycle": lambda: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tcfg.lr, total_steps=total),
             "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total),
             "constant": lambda: None}[tcfg.schedule]()
    augment = resolve_augment(tcfg.augment, mcfg.image_size)
    labelled = torch.nonzero(train_y >= 0).flatten()
    logs, rows = [], []
    for epoch in range(1, tcfg.epochs + 1):
        model.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(tcfg.seed, "shuffle", epoch)))
        extra = torch.Generator().manual_seed(derive_seed(tcfg.seed, "labelled", epoch))
        noise_seed = derive_seed(tcfg.seed, "noise", epoch)
        torch.manual_seed(noise_seed)
        values = []
        for b in range(n_batches):
            rows_b = order[b * bs:(b + 1) * bs]
            if tcfg.labelled_per_batch:
                rows_b = torch.cat([rows_b, labelled[torch.randint(len(labelled), (tcfg.labelled_per_batch,),
                                                                   generator=extra)]])
            batch = {"images": train_x[rows_b], "labels": train_y[rows_b], "index": rows_b,
                     "noise_key": torch.tensor(noise_seed, dtype=torch.int64)}
            if augment.active:
                perturbed = augment(batch["images"], derive_seed(tcfg.seed, "augment", epoch), rows_b)
                batch["images" if augment.target == "same" else "inputs"] = perturbed
            warm = tcfg.beta_warmup_epochs
            beta = mcfg.beta if warm == 0 else mcfg.beta * min(1.0, (epoch - 1 + (b + 1) / n_batches) / warm)
            with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
                out = model.loss(batch, beta=beta)
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                out.loss.backward()
                if tcfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
                opt.step()
            else:
                scaler.scale(out.loss).backward()
                if tcfg.grad_clip is not None:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
                scaler.step(opt)
                scaler.update()
            if sched is not None:
                sched.step()
            terms = out.terms()
            values.append(torch.stack((out.loss, *terms.values())).detach().float())
            logs.append({"epoch": epoch, "b": b, "n_batches": n_batches, "loss": float(out.loss.detach()), "beta": beta,
                         "lr": opt.param_groups[0]["lr"], "batch": batch, "grad": True})
        sizes = torch.tensor([min(bs, n - b * bs) for b in range(n_batches)], dtype=torch.float64)
        means = (torch.stack(values).double() * sizes[:, None]).sum(0) / n
        row = {"epoch": epoch, "train_loss": float(means[0]),
               **{f"train_{k}": float(means[1 + i]) for i, k in enumerate(terms)}, "beta": beta}
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            out = model.loss({"images": val_x, "labels": val_y, "index": torch.arange(len(val_x))}, beta=mcfg.beta)
        model.train()
        val = {k: float(v.double().sum()) / len(val_x) for k, v in out.per_sample_terms().items()}
        row.update(val_loss=sum(out.term_weights()[k] * v for k, v in val.items()),
                   **{f"val_{k}": val[k] for k in terms}, lr=opt.param_groups[0]["lr"])
        rows.append(row)
    return model, logs, rows


def _scaler():  # the gradient scaler of float16 runs on CUDA, here on the CPU: overflows at first, then grows
    return torch.amp.GradScaler("cpu", init_scale=2.0 ** 110, growth_interval=2)


@pytest.mark.parametrize("model_class, train_kw, scaler", [
    (ConvVAE, dict(schedule="onecycle", beta_warmup_epochs=1.5, labelled_per_batch=3, augment="shift=1,noise=0.2",
                   grad_clip=0.05, weight_decay=0.1), False),
    (_OwnNoiseVAE, dict(schedule="cosine", augment="shift=1,target=same", lr=0.05), False),
    (ConvVAE, dict(schedule="constant", beta_warmup_epochs=4, augment=None, seed=7), False),
    (ConvVAE, dict(schedule="constant", augment=None, grad_clip=0.05), True),
    (ConvVAE, dict(schedule="constant", augment=None), True),
    (ConvVAE, dict(schedule="constant", augment=None, grad_clip=1.0), torch.float16),
], ids=["onecycle-labelled-clean", "cosine-own-noise-same", "constant-plain", "scaler-clip", "scaler", "float16"])
def test_the_loop_is_its_recipe_written_out(tmp_path, model_class, train_kw, scaler):
    images, labels = _data()
    n_val = 12
    mcfg = VAEConfig(image_size=8, latent_dim=4, widths=(8,), beta=2.0)
    tcfg = TrainConfig(**dict(dict(epochs=3, batch_size=16, device="cpu", seed=3, lr=1e-2), **train_kw))
    hook = _Logs()
    torch.manual_seed(99)  # the loop seeds the global generator itself
    amp = scaler if isinstance(scaler, torch.dtype) else None  # float16 autocast (on CUDA with the scaler)
    loop = Loop(mcfg, tcfg, torch.device("cpu"), amp, images[n_val:], images[:n_val], False, None,
                train_labels=labels[n_val:], val_labels=labels[:n_val], hooks=[hook], is_main_process=True,
                model_class=model_class)
    assert loop.scaler is None
    if scaler:
        loop.scaler = _scaler()
    assert loop.n_train == 50 and loop.n_batches == 4
    assert torch.equal(loop.labelled_rows, torch.nonzero(labels[n_val:] >= 0).flatten())
    (tmp_path / "run").mkdir()
    state = loop.run(tmp_path / "run", {"extra": 1})
    torch.manual_seed(5)
    want_scaler = _scaler() if scaler else None
    model, logs, rows = _written_out(model_class, mcfg, tcfg, images[n_val:], labels[n_val:], images[:n_val],
                                     labels[:n_val], want_scaler, amp)
    assert state["scaler"] == (want_scaler.state_dict() if scaler else None)
    for k, v in model.state_dict().items():
        assert torch.equal(loop.model.state_dict()[k], v), k
        assert torch.equal(state["model"][k], v), k
    assert len(hook.batches) == len(logs) == 12
    for got, want in zip(hook.batches, logs):
        assert {k: got[k] for k in ("epoch", "b", "n_batches", "loss", "beta", "lr", "grad")} == {
            k: want[k] for k in ("epoch", "b", "n_batches", "loss", "beta", "lr", "grad")}
        assert got["batch"].keys() == want["batch"].keys()
        for k, v in want["batch"].items():
            assert got["batch"][k].dtype == v.dtype and torch.equal(got["batch"][k], v), k
    timing = ("seconds", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in loop.history] == rows
    assert [list(r) for r in loop.history] == [list(r) + ["images_per_s", "seconds"] for r in rows]
    assert all(r["seconds"] > 0 and r["images_per_s"] > 0 for r in loop.history)
    assert state["extra"] == 1 and state["epoch"] == 3 and state["finished"]


class _Bar:
    """tqdm's stand-in: what the loop asks of its progress bar."""

    made = []

    def __init__(self, **kw):
        self.kw, self.calls = kw, []
        _Bar.made.append(self)

    def __getattr__(self, name):
        return lambda *a, **kw: self.calls.append((name, a, kw))


def _small_loop(progress=False, hooks=(), dist=None, **train_kw):
    images, labels = _data()
    mcfg = VAEConfig(image_size=8, latent_dim=4, widths=(8,))
    tcfg = TrainConfig(**dict(dict(epochs=2, batch_size=16, device="cpu", seed=3, augment=None), **train_kw))
    return Loop(mcfg, tcfg, torch.device("cpu"), None, images[12:], images[:12], progress, None,
                train_labels=labels[12:], val_labels=labels[:12], hooks=hooks, dist=dist)


@pytest.mark.parametrize("progress", [True, False])
def test_the_progress_bar_counts_every_batch_from_the_epochs_already_run(tmp_path, monkeypatch, progress):
    import sys

    import tqdm.auto

    import cvae_features._train_loop as train_loop

    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)
    _Bar.made.clear()
    first = _small_loop(epochs=3)
    states = []
    first.hooks.append(type("H", (TrainHook,), {"on_epoch_end": lambda s, loop, row, state, i, f: states.append(
        copy.deepcopy(state))})())
    first.run(tmp_path, {})
    loop = _small_loop(progress, epochs=3)
    loop.restore(states[0])
    _Bar.made.clear()
    clock = iter(range(1000))  # a clock that moves one second each time it is read
    monkeypatch.setattr(train_loop, "time", type("T", (), {"perf_counter": staticmethod(lambda: next(clock))}))
    logs = _Logs()
    loop.hooks.append(logs)
    loop.run(tmp_path, {})
    # per epoch: its start, the batches' start, one reading per batch for the rate shown (with progress), the end of
    # the training batches and the end of the epoch
    train_s, seconds = (6, 7) if progress else (2, 3)
    assert [(r["images_per_s"], r["seconds"]) for r in loop.history[1:]] == [(50 / train_s, seconds)] * 2
    assert loop.seconds == states[0]["seconds"] + 2 * seconds
    (bar,) = _Bar.made
    assert bar.kw == {"total": 12, "initial": 4, "file": sys.stderr, "disable": not progress, "unit": "batch",
                      "dynamic_ncols": True, "leave": True}
    names = [c[0] for c in bar.calls]
    assert names[-1] == "close" and names.count("close") == 1
    assert [c[1] for c in bar.calls if c[0] == "set_description"] == [("epoch 2/3",), ("epoch 3/3",)]
    assert [c[1] for c in bar.calls if c[0] == "update"] == [(1,)] * 8  # the loss is checked every batch on the CPU
    postfix = [c for c in bar.calls if c[0] == "set_postfix_str"]
    per_epoch = [c for c in postfix if not c[2]]
    assert [c[1][0] for c in per_epoch] == [
        f"loss={r['train_loss']:.4g} val={r['val_loss']:.4g} img/s={r['images_per_s']:.0f}" for r in loop.history[1:]]
    per_batch = [c for c in postfix if c[2]]
    if not progress:
        assert per_batch == []
        return
    assert len(per_batch) == 8 and all(c[2] == {"refresh": False} for c in per_batch)
    # the mean loss of the batches checked since the last check (each batch, on the CPU), and the images a second
    # since the epoch began: (b + 1) batches of 16 in b + 1 seconds
    assert [c[1][0] for c in per_batch] == [f"loss={b['loss']:.4g} img/s=16" for b in logs.batches]


def test_the_progress_bar_text_of_a_row_with_and_without_validation():
    from cvae_features._train_loop import _postfix

    assert _postfix({"train_loss": 123.456789, "val_loss": 0.000123456, "images_per_s": 99.5}) == \
        "loss=123.5 val=0.0001235 img/s=100"
    assert _postfix({"train_loss": 2.0, "val_loss": None, "images_per_s": 1234.4}) == "loss=2 img/s=1234"
    assert _postfix({"train_loss": 2.0, "val_loss": 0.0, "images_per_s": 1.0}) == "loss=2 val=0 img/s=1"


def test_a_process_that_is_not_rank_0_shows_no_progress_and_runs_no_hooks():
    from cvae_features._distributed import Dist

    hook = _Recorder()
    loop = _small_loop(True, hooks=[hook], dist=Dist(world=1, rank=1))
    assert loop.progress is False and loop.is_main_process is False and loop.hooks == [hook]
    main = _small_loop(True, hooks=[hook])
    assert main.progress is True and main.is_main_process is True
    assert _small_loop(False).progress is False


def test_labels_for_the_batches():
    from cvae_features._train_loop import _labels_for

    images = torch.zeros(3, 1, 8, 8, dtype=torch.uint8)
    unknown = _labels_for(images, None)
    assert unknown.dtype == torch.int64 and unknown.tolist() == [-1, -1, -1]
    given = _labels_for(images, np.array([2, -1, 0], np.int32))
    assert given.dtype == torch.int64 and given.tolist() == [2, -1, 0]
    for bad in ([1, 2], [[1], [2], [3]], [1, 2, 3, 4]):
        with pytest.raises(ValueError, match=rf"labels of shape \({len(bad)}, ?{'1' if bad == [[1], [2], [3]] else ''}\)"
                                             " for 3 images"):
            _labels_for(images, bad)
    meta = torch.zeros(2, 1, 8, 8, device="meta")
    assert _labels_for(meta, None).device.type == "meta" and _labels_for(meta, [0, 1]).device.type == "meta"
    loop = _small_loop()
    with pytest.raises(ValueError, match=r"labels of shape \(49,\) for 50 images"):
        Loop(VAEConfig(image_size=8, latent_dim=4, widths=(8,)), loop.tcfg, torch.device("cpu"), None,
             loop.train_images, loop.val_images, False, train_labels=loop.train_labels[1:])


def test_the_state_moved_to_the_cpu_is_detached_and_keeps_its_structure():
    from cvae_features._train_loop import _to_cpu

    w = torch.ones(2, requires_grad=True) * 2
    out = _to_cpu({"a": [w, {"b": w, "c": 3}], "d": "x", "e": (1, 2), "f": None})
    assert out.keys() == {"a", "d", "e", "f"} and out["d"] == "x" and out["e"] == (1, 2) and out["f"] is None
    assert isinstance(out["a"], list) and len(out["a"]) == 2 and out["a"][1]["c"] == 3
    for t in (out["a"][0], out["a"][1]["b"]):
        assert not t.requires_grad and t.device.type == "cpu" and t.tolist() == [2.0, 2.0]


def test_restore_takes_up_the_bookkeeping_of_the_checkpoint(tmp_path):
    states = []

    class Keep(TrainHook):
        def on_epoch_end(self, loop, row, state, improved, finished):
            states.append(copy.deepcopy(state))  # on the CPU the state's tensors are the model's own

    full = _small_loop(hooks=[Keep()], epochs=3, schedule="cosine", patience=5)
    end = full.run(tmp_path, {})
    assert end["scheduler"] is not None and end["scaler"] is None and end["optimizer"]["state"]
    loop = _small_loop(epochs=3, schedule="cosine", patience=5)
    loop.restore(states[0])
    assert (loop.epoch, loop.history, loop.seconds) == (1, states[0]["history"], states[0]["seconds"])
    assert loop.history is not states[0]["history"]
    assert (loop.best_val, loop.best_epoch, loop.bad_epochs) == (states[0]["best_val_loss"], 1, 0)
    assert loop.optimizer.param_groups[0]["lr"] == full.history[0]["lr"]
    assert loop.scheduler.last_epoch == 4
    resumed = loop.run(tmp_path, {})
    for k, v in resumed["model"].items():
        assert torch.equal(v, end["model"][k]), k
    assert [r["train_loss"] for r in resumed["history"]] == [r["train_loss"] for r in end["history"]]
    # a checkpoint without a best validation loss (no validation) and with bad epochs counted; a loop without a
    # gradient scaler leaves the checkpoint's scaler state alone
    scaler_state = _scaler().state_dict()
    loop = _small_loop(epochs=3)
    loop.restore(dict(states[1], best_val_loss=None, best_epoch=1, bad_epochs=1, scaler=scaler_state))
    assert (loop.best_val, loop.best_epoch, loop.bad_epochs, loop.epoch) == (np.inf, 1, 1, 2)
    assert loop.scaler is None
    # a loop with one takes it up (float16 on CUDA; a CPU scaler stands in), unless the checkpoint has none
    for saved, scale in ((scaler_state, 2.0 ** 110), (None, 4.0), ({}, 4.0)):
        loop = _small_loop(epochs=3)
        loop.scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
        loop.restore(dict(states[1], scaler=saved))
        assert loop.scaler.get_scale() == scale and loop.scaler.get_growth_interval() == (
            2 if saved else 2000)


def test_the_checkpointed_state(tmp_path):
    loop = _small_loop(epochs=1, schedule="constant")
    state = loop.run(tmp_path, {"arch": "x"})
    assert list(state)[:11] == ["tool_version", "epoch", "finished", "stopped_early", "model", "optimizer",
                                "scheduler", "scaler", "history", "seconds", "best_val_loss"]
    from cvae_features._version import __version__

    assert state["tool_version"] == __version__ and state["epoch"] == 1 and state["history"] == loop.history
    assert state["arch"] == "x" and state["scheduler"] is None and state["scaler"] is None
    assert state["finished"] is True and state["stopped_early"] is False
    assert state["best_val_loss"] == loop.history[0]["val_loss"] and state["best_epoch"] == 1
    assert state["bad_epochs"] == 0 and state["seconds"] == loop.history[0]["seconds"]
    for k, v in state["model"].items():
        assert not v.requires_grad and torch.equal(v, loop.model.state_dict()[k])
    loop.best_val = np.inf
    assert loop._state({}, False)["best_val_loss"] is None and loop._state({}, False)["finished"] is False


def test_a_validation_loss_that_is_not_finite_stops_with_the_last_good_checkpoint_named(tmp_path):
    from cvae_features.errors import TrainingError

    def poison(epoch, b, logs):  # after the last batch of epoch 2: its training losses were finite
        if epoch == 2 and b == logs["n_batches"] - 1:
            with torch.no_grad():
                logs["model"].to_latent.weight.fill_(float("inf"))

    images, labels = _data()
    loop = Loop(VAEConfig(image_size=8, latent_dim=4, widths=(8,)),
                TrainConfig(epochs=3, batch_size=16, device="cpu", augment=None), torch.device("cpu"), None,
                images[12:], images[:12], False, poison, train_labels=labels[12:], val_labels=labels[:12])
    with pytest.raises(TrainingError) as info:
        loop.run(tmp_path, {})
    assert str(info.value) == (f"validation loss became nan at epoch 2; the last good checkpoint (epoch 1) is kept "
                               f"in {tmp_path}; try a lower --lr")
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1 and len(loop.history) == 1


# -- two real processes (gloo on the CPU), each running a Loop in its own Python -------------------------------

_RANK_SCRIPT = """
import sys
from pathlib import Path

import torch

from cvae_features._distributed import Dist
from cvae_features._train_loop import Loop
from cvae_features.model import VAEConfig
from cvae_features.training import TrainConfig

rank, world, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
torch.set_num_threads(1)
torch.distributed.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world)
results = []
for i, (n, mcfg, tcfg) in enumerate(CONFIGS):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(-1, 5, (n,), generator=g)
    loop = Loop(mcfg, tcfg, torch.device("cpu"), None, images[12:], images[:12], False, None,
                train_labels=labels[12:], val_labels=labels[:12], dist=Dist(world, rank, rank, "gloo"))
    assert loop.ddp is not None and loop.is_main_process == (rank == 0)
    (out / f"rank{rank}-{i}").mkdir()
    loop.run(out / f"rank{rank}-{i}", {})
    results.append({"model": loop.model.state_dict(), "history": loop.history})
torch.save(results, out / f"rank{rank}.pt")
torch.distributed.destroy_process_group()
"""
_DIST_CONFIGS = """CONFIGS = [(n, VAEConfig(image_size=8, latent_dim=4, widths=(8,)),
            TrainConfig(epochs=2, batch_size=16, device="cpu", seed=3, lr=1e-2, augment=None, labelled_per_batch=k))
           for n, k in ((62, 3), (61, 0))]
CONFIGS[0] = (62, CONFIGS[0][1], TrainConfig(**dict(CONFIGS[0][2].to_dict(), beta_warmup_epochs=1.5)))
"""


def _dist_configs():
    """(images, model config, train config): batches split unevenly (with the labelled draw), and a last batch of one
    image, which leaves the second process none (it computes one image, weighted 0)."""
    scope = {"VAEConfig": VAEConfig, "TrainConfig": TrainConfig}
    exec(_DIST_CONFIGS, scope)
    return scope["CONFIGS"]


def test_two_processes_train_what_one_process_trains_in_this_process(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = _RANK_SCRIPT.replace("results = []", _DIST_CONFIGS + "results = []")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(r), "2", str(tmp_path)], env=env,
                              stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    errors = [p.communicate(timeout=240)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for i, (n, mcfg, tcfg) in enumerate(_dist_configs()):
        images, labels = _data(n)
        one = Loop(mcfg, tcfg, torch.device("cpu"), None, images[12:], images[:12], False, None,
                   train_labels=labels[12:], val_labels=labels[:12])
        (tmp_path / f"one{i}").mkdir()
        one.run(tmp_path / f"one{i}", {})
        for rank in ranks:
            for k, v in one.model.state_dict().items():
                torch.testing.assert_close(rank[i]["model"][k], v, rtol=0, atol=2e-5)
            assert len(rank[i]["history"]) == 2
            for r1, r2 in zip(one.history, rank[i]["history"]):
                assert r1.keys() == r2.keys()
                for key in ("train_loss", "train_recon", "train_kl", "val_loss", "val_recon", "val_kl", "beta", "lr"):
                    assert r2[key] == pytest.approx(r1[key], rel=1e-5), (i, key)


class _TiedValidationVAE(ConvVAE):
    """A ConvVAE whose validation loss is the same every epoch (1 per image): every later epoch ties the first."""

    def loss(self, batch, beta=None):
        import dataclasses

        out = super().loss(batch, beta)
        if self.training:
            return out
        return dataclasses.replace(out, recon_per_sample=torch.ones_like(out.recon_per_sample),
                                   kl_per_sample=torch.zeros_like(out.kl_per_sample))


def test_an_epoch_that_ties_the_best_validation_loss_is_no_improvement(tmp_path):
    images, labels = _data()
    loop = Loop(VAEConfig(image_size=8, latent_dim=4, widths=(8,)),
                TrainConfig(epochs=5, batch_size=16, device="cpu", augment=None, patience=2), torch.device("cpu"),
                None, images[12:], images[:12], False, None, train_labels=labels[12:], val_labels=labels[:12],
                model_class=_TiedValidationVAE)
    state = loop.run(tmp_path, {})
    assert [r["val_loss"] for r in loop.history] == [1.0, 1.0, 1.0]
    assert (state["best_epoch"], state["bad_epochs"], state["stopped_early"], state["best_val_loss"]) == (1, 2, True, 1.0)


class _SpareWeightVAE(ConvVAE):
    """A ConvVAE with a weight that only its first training step uses (as a family's part that a phase of training
    leaves alone): its gradient then is 0, and after that it has none."""

    def __init__(self, config):
        super().__init__(config)
        self.spare = torch.nn.Parameter(torch.ones(3))
        self.steps = 0

    def loss(self, batch, beta=None):
        out = super().loss(batch, beta)
        if self.training:
            self.steps += 1
            if self.steps == 1:
                out.loss = out.loss + 0 * self.spare.sum()
        return out


def test_a_weight_without_a_gradient_is_left_alone_by_the_optimizer_and_its_weight_decay(tmp_path):
    images, labels = _data()
    loop = Loop(VAEConfig(image_size=8, latent_dim=4, widths=(8,)),
                TrainConfig(epochs=2, batch_size=16, device="cpu", augment=None, weight_decay=0.5, lr=0.1,
                            schedule="constant"),
                torch.device("cpu"), None, images[12:], images[:12], False, None, train_labels=labels[12:],
                val_labels=labels[:12], model_class=_SpareWeightVAE, is_main_process=False)  # no model file
    loop.run(tmp_path, {})
    # one Adam step (with the weight decay) at the first batch, when its gradient was 0; none after
    once = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([once], lr=0.1, weight_decay=0.5)
    once.grad = torch.zeros(3)
    opt.step()
    assert loop.model.steps == 8 and loop.model.spare.grad is None
    assert torch.equal(loop.model.spare.detach(), once.detach()) and not torch.equal(once.detach(), torch.ones(3))


class _NoInputsVAE(ConvVAE):
    accepts_inputs = False


class _UnsaidInputsVAE(ConvVAE):
    """A family that does not say whether it takes separate encoder inputs (no accepts_inputs attribute)."""

    @property
    def accepts_inputs(self):
        raise AttributeError("accepts_inputs")


@pytest.mark.parametrize("model_class", [_NoInputsVAE, _UnsaidInputsVAE])
def test_clean_targets_need_a_family_that_takes_encoder_inputs(model_class):
    from cvae_features.errors import ConfigError

    images, labels = _data()
    mcfg = VAEConfig(image_size=8, latent_dim=4, widths=(8,))

    def loop(augment):
        return Loop(mcfg, TrainConfig(epochs=1, batch_size=16, device="cpu", augment=augment), torch.device("cpu"),
                    None, images[12:], images[:12], False, train_labels=labels[12:], val_labels=labels[:12],
                    model_class=model_class)

    with pytest.raises(ConfigError, match=r"augment='shift=1': model family 'conv-vae' does not take separate "
                                          r"encoder inputs.*add 'target=same'"):
        loop("shift=1")
    assert loop("shift=1,target=same").augment.target == "same" and not loop(None).augment.active
    assert Loop(mcfg, TrainConfig(epochs=1, batch_size=16, device="cpu", augment="shift=1"), torch.device("cpu"),
                None, images[12:], images[:12], False).augment.target == "clean"  # conv-vae takes them


def test_the_reconstructions_page_tiles_originals_over_reconstructions_scaled_to_the_minimum_tile(tmp_path):
    from cvae_features import _rundir as rd

    rng = np.random.default_rng(0)
    for c in (1, 3):
        orig = torch.from_numpy(rng.integers(0, 255, (3, c, 4, 4), dtype=np.uint8))
        rec = torch.from_numpy(rng.integers(0, 255, (3, c, 4, 4), dtype=np.uint8))
        expected = np.full((14, 20, c), 255, np.uint8)  # a 2-pixel white gap around and between 4x4 tiles
        for r, row in enumerate((orig, rec)):
            for i in range(3):
                expected[2 + 6 * r:6 + 6 * r, 2 + 6 * i:6 + 6 * i] = row[i].numpy().transpose(1, 2, 0)
        expected = expected[..., 0] if c == 1 else expected
        rd.save_reconstructions(tmp_path / "small.png", orig, rec, min_tile=4)
        assert np.array_equal(np.asarray(Image.open(tmp_path / "small.png")), expected), c
        for min_tile, factor in ((8, 2), (9, 3)):  # scaled by ceil(min_tile / 4), each pixel repeated
            rd.save_reconstructions(tmp_path / "big.png", orig, rec, min_tile=min_tile)
            assert np.array_equal(np.asarray(Image.open(tmp_path / "big.png")),
                                  expected.repeat(factor, 0).repeat(factor, 1)), (c, factor)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png", "small.png"]


def test_the_run_dir_reconstructions_are_the_best_models_of_validation_images_or_else_of_training_images(tmp_path):
    from types import SimpleNamespace

    from cvae_features import _rundir as rd
    from cvae_features._train_hooks import RunDirWriter
    from cvae_features.modelfile import save_model

    torch.manual_seed(0)
    model = ConvVAE(VAEConfig(image_size=8, channels=1, latent_dim=3, widths=(4,)))
    save_model(model, tmp_path / rd.MODEL)
    rng = np.random.default_rng(1)
    train_images = torch.from_numpy(rng.integers(0, 256, (20, 1, 8, 8), dtype=np.uint8))
    val_images = torch.from_numpy(rng.integers(0, 256, (18, 1, 8, 8), dtype=np.uint8))

    def page(images):
        """The page written out: the first 16 images over round(255 x the decoded mean of their codes)."""
        with torch.no_grad():
            mean = model.eval().decode_mean(model.encode(images[:16])[0])
        rd.save_reconstructions(tmp_path / "expected.png", images[:16], (mean * 255).round().to(torch.uint8))
        return np.asarray(Image.open(tmp_path / "expected.png"))

    writer = RunDirWriter(str(tmp_path))
    for val, shown in ((val_images, val_images), (val_images[:0], train_images)):
        writer._write_reconstructions(SimpleNamespace(val_images=val, train_images=train_images))
        written = np.asarray(Image.open(tmp_path / rd.RECONSTRUCTIONS))
        assert written.shape == ((2 * 8 + 3 * 2) * 8, (16 * (8 + 2) + 2) * 8)  # 8-pixel tiles, 2-pixel gaps, scaled by 8
        assert np.array_equal(written, page(shown))


def test_run_dir_files_go_through_a_tmp_name_json_is_indented_by_two_and_checkpoints_carry_their_format(tmp_path):
    from cvae_features import _rundir as rd

    rd.write_json(tmp_path / "config.json", {"b": [1, 2], "a": None})
    assert (tmp_path / "config.json").read_text() == '{\n  "b": [\n    1,\n    2\n  ],\n  "a": null\n}\n'

    def interrupted(tmp):
        tmp.write_text("half")
        raise OSError("the disk went away")

    with pytest.raises(OSError, match="went away"):
        rd._replace_from_tmp(tmp_path / "config.json", interrupted)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "config.json.tmp"]  # the old file stays
    assert json.loads((tmp_path / "config.json").read_text()) == {"b": [1, 2], "a": None}
    rd.save_checkpoint(tmp_path / "checkpoint.pt", {"epoch": 3})
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True) == {
        "format": "cvae-checkpoint", "format_version": 1, "epoch": 3}


def test_history_files_take_their_columns_from_the_first_row_and_leave_missing_values_empty(tmp_path):
    from cvae_features import _rundir as rd

    rows = [{"epoch": 1, "train_loss": 2.5, "train_y_loss": None}, {"epoch": 2, "train_loss": 1.25}]
    rd.write_history(tmp_path, rows)
    assert json.loads((tmp_path / "history.json").read_text()) == rows
    assert (tmp_path / "history.csv").read_bytes() == b"epoch,train_loss,train_y_loss\r\n1,2.5,\r\n2,1.25,\r\n"
    rd.write_history(tmp_path, [])  # no epoch yet: the ConvVAE columns and no rows
    assert (tmp_path / "history.json").read_text() == "[]\n"
    assert (tmp_path / "history.csv").read_bytes() == ",".join(HISTORY_COLUMNS).encode() + b"\r\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv", "history.json"]
