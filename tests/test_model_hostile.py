"""Hostile model and checkpoint files: every one is refused with one line naming the file and the problem.

Each test builds its bad file itself in tmp_path. The rule: loading never raises anything but the
project's own errors (ModelError for model files, ConfigError for a run's checkpoint), the message is
one line that names the file, and it never passes on torch's advice to unpickle an untrusted file.
"""

import pickle

import pytest
import torch

from cvae_features import _rundir as rd
from cvae_features.errors import ConfigError, ModelError
from cvae_features.model import ConvVAE, VAEConfig, fingerprint_state, load_model


def _tiny():
    torch.manual_seed(0)
    return ConvVAE(VAEConfig(image_size=8, channels=1, latent_dim=3, widths=(4,)))


@pytest.fixture
def payload(tmp_path):
    """The dict a real model file holds (written by ConvVAE.save, read back as tensors and plain values)."""
    return torch.load(_tiny().save(tmp_path / "good.pt"), weights_only=True)


def _refused(path, error=ModelError):
    """Load ``path`` expecting ``error``; return its message after the checks every refusal must pass."""
    with pytest.raises(error) as info:
        load_model(path) if error is ModelError else rd.load_checkpoint(path)
    assert type(info.value) is error  # not a KeyError/TypeError/RuntimeError leaking through
    message = str(info.value)
    assert str(path) in message, message
    assert "\n" not in message and "Traceback" not in message, message
    assert "weights_only" not in message, message
    return message


def _without(d, key):
    return {k: v for k, v in d.items() if k != key}


# name -> (how to change the saved payload, phrase the message must hold)
_MALFORMED = {
    "no_config": (lambda p: _without(p, "config"), "has no 'config' entry"),
    "no_state_dict": (lambda p: _without(p, "state_dict"), "has no 'state_dict' entry"),
    "string_format_version": (lambda p: {**p, "format_version": "one"}, "format_version 'one': expected a positive"),
    "none_format_version": (lambda p: {**p, "format_version": None}, "format_version None"),
    "newer_format_version": (lambda p: {**p, "format_version": 99}, "newer than this tool reads"),
    "list_state_dict": (lambda p: {**p, "state_dict": [1, 2, 3]}, "weights are of type list: expected a dict"),
    "string_state_dict": (lambda p: {**p, "state_dict": "weights"}, "weights are of type str"),
    "int_weights": (lambda p: {**p, "state_dict": {k: 1 for k in p["state_dict"]}},
                    "weight 'encoder.0.weight' is of type int: expected a tensor"),
    "int_weight_name": (lambda p: {**p, "state_dict": {0: torch.zeros(1)}}, "a weight is named 0"),
    "missing_weight": (lambda p: {**p, "state_dict": _without(p["state_dict"], "to_latent.bias")},
                       "do not fit the model config: missing 'to_latent.bias'"),
    "wrong_shape": (lambda p: {**p, "state_dict": {**p["state_dict"], "to_latent.bias": torch.zeros(7)}},
                    "'to_latent.bias' has shape (7,), expected (6,)"),
    "string_config": (lambda p: {**p, "config": "latent_dim=3"}, "model config is of type str"),
    "invalid_config": (lambda p: {**p, "config": {**p["config"], "latent_dim": "three"}},
                       "invalid model config: invalid latent_dim='three'"),
    "int_widths": (lambda p: {**p, "config": {**p["config"], "widths": 4}}, "invalid model config"),
    "tensor_fingerprint": (lambda p: {**p, "fingerprint": torch.zeros(2)}, "fingerprint is of type Tensor"),
    "no_format_tag": (lambda p: _without(p, "format"), "is not a cvae model file (no format tag"),
    "other_format_tag": (lambda p: {**p, "format": "lightning-checkpoint"}, "is not a cvae model file (no format tag"),
    "a_list": (lambda p: [1, 2], "is not a cvae model file: it holds a list"),
    "a_checkpoint": (lambda p: {"format": "cvae-checkpoint"}, "is a training checkpoint, not a model file"),
}


@pytest.mark.parametrize("case", sorted(_MALFORMED))
def test_malformed_model_file_is_one_clear_model_error(tmp_path, payload, case):
    change, phrase = _MALFORMED[case]
    path = tmp_path / f"{case}.pt"
    torch.save(change(payload), path)
    assert phrase in _refused(path)


def test_weights_that_do_not_fit_name_three_and_count_the_rest(tmp_path, payload):
    names = list(payload["state_dict"])
    for drop, tail in ((names[:5], " and 2 more"), (names[:3], "")):
        path = tmp_path / f"without_{len(drop)}.pt"
        torch.save({**payload, "state_dict": {k: v for k, v in payload["state_dict"].items() if k not in drop}}, path)
        shown = ", ".join(repr(k) for k in drop[:3])
        assert _refused(path).endswith(f"weights do not fit the model config: missing {shown}{tail}")


def test_a_file_written_on_a_gpu_loads_on_the_cpu_and_files_are_called_model_files_by_default(tmp_path, payload,
                                                                                                monkeypatch):
    from cvae_features.modelfile import read_torch_file

    path = tmp_path / "gpu.pt"
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")  # as torch.save tags CUDA tensors
        torch.save(payload, path)
    assert load_model(path).fingerprint() == payload["fingerprint"]
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ModelError, match="empty.pt is empty: not a cvae model file$"):
        read_torch_file(tmp_path / "empty.pt")


def test_the_first_non_finite_tensor_is_named_past_other_values():
    from cvae_features.modelfile import first_non_finite

    state = {"step": 3, "counts": torch.tensor([1, 2]), "w": torch.tensor([0.0, float("nan"), float("inf")]),
             "z": torch.tensor([complex(0, float("nan"))])}
    assert first_non_finite(state) == ("w", 2, 3) and first_non_finite({"step": 3}) is None


def test_checks_without_a_source_name_no_file_and_name_extra_weights(payload):
    from cvae_features.modelfile import check_state_dict, model_from_state

    with pytest.raises(ModelError, match=r"^weight 'a' is of type int: expected a tensor$"):
        check_state_dict({"a": 1})
    with pytest.raises(ModelError, match=r"^unknown model family 'nope'"):
        model_from_state("nope", {}, {})
    extra = {**payload["state_dict"], "extra": torch.zeros(1)}
    with pytest.raises(ModelError, match=r"^weights do not fit the model config: unexpected 'extra'$"):
        model_from_state("conv-vae", payload["config"], extra)
    both = {k: v for k, v in extra.items() if k != "to_latent.bias"}
    with pytest.raises(ModelError, match=r"^m.pt: weights do not fit the model config: missing 'to_latent.bias'; "
                                         r"unexpected 'extra'$"):
        model_from_state("conv-vae", payload["config"], both, source="m.pt")


def test_the_first_line_of_an_error_or_its_type():
    from cvae_features.modelfile import _first_line

    assert _first_line(ValueError("first\nsecond")) == "first" and _first_line(ValueError("  ")) == "ValueError"
    assert _first_line(RuntimeError()) == "RuntimeError"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's, about pickled.pt
def test_unreadable_bytes_are_one_clear_model_error(tmp_path):
    good = _tiny().save(tmp_path / "good.pt").read_bytes()
    files = {"empty.pt": (b"", "is empty: not a cvae model file"),
             "truncated.pt": (good[: len(good) // 3], "load safely: it is damaged or truncated"),
             "random.pt": (bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1),
                                               dtype=torch.uint8).tolist()), "load safely"),
             "text.pt": (b"just some notes\n", "load safely: it is truncated or not a torch file"),
             "pickled.pt": (pickle.dumps([1, 2]), "load safely: it is not a torch file of tensors and plain values"),
             "legacy.pt": (pickle.dumps([1, 2], protocol=2), "load safely: torch cannot read it")}
    for name, (data, phrase) in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        message = _refused(path)
        assert phrase in message and (name == "random.pt" or message.endswith(phrase)), name


def test_directories_without_a_model_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    assert "no model.pt in run directory" in _refused(run)
    odd = tmp_path / "odd"
    (odd / "model.pt").mkdir(parents=True)  # model.pt is itself a directory
    assert "odd/model.pt is not a regular file" in _refused(odd)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_unsafe_pickle_is_refused_without_advice_to_unpickle_it(tmp_path, payload, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    evil = {**payload, "extra": _Evil(str(marker))}
    if writer == "torch.save":
        torch.save(evil, path)
    else:
        path.write_bytes(pickle.dumps(evil, protocol=2))
    message = _refused(path)
    assert "not a cvae model file this tool can load safely" in message
    assert message.endswith("it holds Python objects other than tensors and plain values, which are refused, never "
                            "unpickled")
    assert "weights_only" not in message.replace(" ", "") and "False" not in message
    assert not marker.exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_with_a_recomputed_fingerprint_are_refused(tmp_path, payload, value):
    state = {k: v.clone() for k, v in payload["state_dict"].items()}
    state["decoder.0.weight"].view(-1)[0] = value
    state["from_latent.weight"].view(-1)[1] = value  # comes first in the file: the one named
    path = tmp_path / "poisoned.pt"
    fingerprint = fingerprint_state(VAEConfig.from_dict(payload["config"]), state)  # passes the damage check
    torch.save({**payload, "state_dict": state, "fingerprint": fingerprint}, path)
    assert "tensor 'from_latent.weight' holds non-finite values (NaN or inf in 1 of" in _refused(path)


# -- checkpoints (read on --resume and when a run dir is claimed) -------------------------------

_DROP = object()


def _checkpoint(payload, **changes):
    state = {"format": rd.CHECKPOINT_FORMAT, "format_version": rd.CHECKPOINT_VERSION, "epoch": 1, "finished": False,
             "stopped_early": False, "model": payload["state_dict"], "optimizer": {}, "scheduler": None,
             "history": [], "seconds": 0.0, "best_val_loss": None, "best_epoch": 1, "bad_epochs": 0,
             "model_config": payload["config"], "train_config": {"epochs": 2}, "data_fingerprint": "x"}
    state.update(changes)
    return {k: v for k, v in state.items() if v is not _DROP}


def test_hostile_checkpoints_are_one_clear_config_error(tmp_path, payload):
    nan_state = {k: v.clone() for k, v in payload["state_dict"].items()}
    nan_state["encoder.0.bias"].fill_(float("nan"))
    cases = {
        "string_version": (_checkpoint(payload, format_version="one"), "format_version 'one'"),
        "no_history": (_checkpoint(payload, history=_DROP), "damaged checkpoint: it lacks 'history'"),
        "model_not_dict": (_checkpoint(payload, model=[1]), "'model' entry is of type list"),
        "nan_weights": (_checkpoint(payload, model=nan_state), "tensor 'encoder.0.bias' holds non-finite"),
        "foreign": ({"weights": torch.zeros(2)}, "is not a cvae training checkpoint"),
    }
    for name, (content, phrase) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(content, path)
        assert phrase in _refused(path, ConfigError), name
    evil = tmp_path / "evil.pt"
    torch.save(_checkpoint(payload, extra=_Evil(str(tmp_path / "pwned"))), evil)
    assert "not a cvae training checkpoint this tool can load safely" in _refused(evil, ConfigError)
    assert not (tmp_path / "pwned").exists()
    # an intact one still loads
    ok = tmp_path / "ok.pt"
    torch.save(_checkpoint(payload), ok)
    assert rd.load_checkpoint(ok)["epoch"] == 1


def test_checkpoint_epochs_and_versions_at_their_boundaries(tmp_path, payload):
    def saved(name, **changes):
        path = tmp_path / f"{name}.pt"
        torch.save(_checkpoint(payload, **changes), path)
        return path

    assert rd.load_checkpoint(saved("epoch_0", epoch=0))["epoch"] == 0  # a run stopped before its first epoch ended
    assert rd.load_checkpoint(saved("no_version", format_version=_DROP))["epoch"] == 1  # read as version 1
    for name, epoch in (("negative", -1), ("bool", True), ("text", "1"), ("float", 1.0)):
        assert f"damaged checkpoint: its epoch is {epoch!r}" in _refused(saved(name, epoch=epoch), ConfigError), name
