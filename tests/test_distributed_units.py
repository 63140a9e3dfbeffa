"""The process group's pieces one by one (cvae_features/_distributed.py): a single process, whose collectives do
nothing, and two real gloo processes, this one (rank 0) and one it starts (rank 1), that run the same steps.

tests/test_distributed.py trains through ``cvae train --nproc 2`` (about a minute); these take a few seconds."""

import datetime
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from cvae_features._distributed import Dist, LossModule, from_env, local_device, lost_contact
from cvae_features.errors import ConfigError, CvaeError, DataError
from cvae_features.model import ConvVAE

_DIST_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SECOND_MASTER_PORT")


@pytest.fixture
def no_dist_env(monkeypatch):
    for name in _DIST_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_single_process_has_collectives_that_do_nothing(no_dist_env):
    assert not torch.distributed.is_initialized()
    for env in ({}, {"WORLD_SIZE": "1", "RANK": "0"}, {"WORLD_SIZE": "0"}):
        for name, value in env.items():
            no_dist_env.setenv(name, value)
        dist = from_env(torch.device("cpu"))
        assert dist == Dist(1, 0, 0, "", False) and not dist.active and dist.main
        assert not torch.distributed.is_initialized()
    dist.barrier()  # no process group: anything it called would raise
    x = torch.arange(3.0, requires_grad=True)
    assert dist.all_sum(x) is x
    assert dist.on_main(lambda: {"made": 1}) == {"made": 1}
    err = DataError("its own error")

    def fail():
        raise err

    with pytest.raises(DataError) as caught:
        dist.on_main(fail)
    assert caught.value is err  # raised as it is, not rebuilt from its words
    assert dist.check_same("run", {"a": 1}) is None
    owned = Dist(owned=True)
    owned.close()  # no group to end
    assert owned.owned is True and not torch.distributed.is_initialized()


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "two"}, {"WORLD_SIZE": "2", "RANK": "1.0"},
                                 {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": ""}])
def test_process_numbers_that_are_not_integers_are_one_line(no_dist_env, env):
    for name, value in env.items():
        no_dist_env.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        from_env(torch.device("cpu"))
    assert str(err.value) == "WORLD_SIZE, RANK and LOCAL_RANK must be integers (as torchrun sets them)"
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_a_lost_process_is_told_from_other_errors_by_its_words_or_its_type():
    for words in ("Connection reset by peer", "connection closed by peer", "Broken pipe", "Connection refused",
                  "Socket closed", "remote process exited", "NCCL communicator was aborted"):
        assert lost_contact(RuntimeError(f"  {words}. The rest. \n")) == words
    assert lost_contact(RuntimeError("shapes cannot be multiplied")) == ""
    assert lost_contact(RuntimeError("")) == ""
    # torch's own type for a lost peer, whatever its words; only its first sentence, first line, 120 characters
    assert lost_contact(torch.distributed.DistNetworkError("store timed out. retry later")) == "store timed out"
    assert lost_contact(torch.distributed.DistNetworkError("line one\nline two")) == "line one"
    assert lost_contact(torch.distributed.DistNetworkError("y" * 130)) == "y" * 120
    # gloo's location prefix goes, only once, and only when the text starts with it
    gloo = RuntimeError("[a/b/pair.cc:545] Read error [1.2.3.4]:5: Connection reset by peer. This is typical. GLHF")
    assert lost_contact(gloo) == "Read error [1.2.3.4]:5: Connection reset by peer"
    assert lost_contact(RuntimeError("[pair.cc:1] Broken pipe] again")) == "Broken pipe] again"
    assert lost_contact(RuntimeError("[C:/my src/pair.cc:1] Broken pipe")) == "Broken pipe"  # a path with a space
    assert lost_contact(RuntimeError("[pair.cc:1]broken pipe")) == "[pair.cc:1]broken pipe"
    assert lost_contact(RuntimeError("gloo [pair.cc:1] broken pipe")) == "gloo [pair.cc:1] broken pipe"


def test_each_process_of_a_cuda_run_gets_its_own_gpu(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    two = Dist(2, 1, 1, "nccl")
    assert local_device(cpu, two) is cpu
    assert local_device(cuda, Dist(1, 0, 1)) is cuda  # one process: the device as given
    chosen = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # two GPUs on this node, as torch would count them
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert local_device(cuda, two) == torch.device("cuda", 1) and chosen == [1]
    with pytest.raises(ConfigError) as err:
        local_device(cuda, Dist(4, 3, 2, "nccl"))
    assert str(err.value) == ("process 3 has LOCAL_RANK 2 but this machine has 2 GPU(s): use at most that many "
                              "processes per node")
    assert chosen == [1]


def test_the_module_ddp_wraps_is_the_models_loss():
    torch.manual_seed(0)
    model = ConvVAE(image_size=8, channels=1, latent_dim=3, widths=(4,), beta=2.0).eval()
    wrapped = LossModule(model)
    assert wrapped.model is model and list(wrapped.parameters()) == list(model.parameters())
    batch = {"images": torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8), "index": torch.arange(5)}
    assert wrapped(batch).loss == model.loss(batch).loss == model.loss(batch, beta=2.0).loss
    assert wrapped(batch, 0.0).loss == model.loss(batch, beta=0.0).loss != model.loss(batch).loss


# -- two real processes: this one is rank 0, the other runs the same steps --------------------------------------


class _PluginError(CvaeError):
    """An error type that cvae_features.errors does not know: the other processes get a ConfigError."""


_DIFFERENT = [{"a": 1, "b": 2, "d": "x", "z": 0}, {"a": 1, "c": 3, "d": "y", "e": [1], "z": 1}]


def _steps(out: Path) -> dict:
    """What one process sees of each piece; both processes run this, and rank 1 writes it to ``out``."""
    seen = {}
    if not torch.cuda.is_available():  # a CUDA device asks for NCCL, which needs a GPU: refused by torch here
        try:
            from_env(torch.device("cuda"))
            seen["nccl"] = "joined"
        except Exception as err:  # noqa: BLE001
            seen["nccl"] = [type(err).__name__, str(err), torch.distributed.is_initialized()]
        os.environ["MASTER_PORT"] = os.environ["SECOND_MASTER_PORT"]
    dist = from_env(torch.device("cpu"))
    seen["dist"] = [dist.world, dist.rank, dist.local_rank, dist.backend, dist.owned]
    group = torch.distributed.distributed_c10d._get_default_group()
    seen["timeout_s"] = group._get_backend(torch.device("cpu")).options._timeout.total_seconds()
    again = from_env(torch.device("cuda"))  # already joined: the group's own backend, and not this Dist's to end
    seen["again"] = [again.world, again.rank, again.local_rank, again.backend, again.owned]

    late = out / "late"
    if dist.rank == 1:
        threading.Event().wait(1.0)
        late.write_text("written before the barrier")
    dist.barrier()
    seen["after_barrier"] = late.exists()

    x = torch.tensor([1.0 + dist.rank, 10.0 * (dist.rank + 1)], dtype=torch.float64, requires_grad=True)
    total = dist.all_sum(x)
    seen["sum"] = [total.tolist(), str(total.dtype), str(total.device), total.requires_grad, x.tolist()]

    calls = []

    def make():
        calls.append(dist.rank)
        return {"made on": dist.rank}

    seen["on_main"] = [dist.on_main(make), calls]
    for kind in (DataError, _PluginError):
        def fail(kind=kind):
            raise kind(f"{kind.__name__} on process {dist.rank}")
        try:
            dist.on_main(fail)
            seen[kind.__name__] = None
        except Exception as err:  # noqa: BLE001 - what each process gets is the point
            seen[kind.__name__] = [type(err).__name__, str(err)]

    seen["same"] = dist.check_same("run", {"a": 1, "b": [2, 3]})
    try:
        dist.check_same("setting", _DIFFERENT[dist.rank])
        seen["different"] = None
    except Exception as err:  # noqa: BLE001
        seen["different"] = [type(err).__name__, str(err)]

    again.close()
    seen["after_again_close"] = [torch.distributed.is_initialized(), again.owned]
    dist.close()
    seen["after_close"] = [torch.distributed.is_initialized(), dist.owned]
    dist.close()  # twice: nothing left to end
    return seen


_RANK_1 = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from test_distributed_units import _steps
out = Path(sys.argv[2])
(out / "rank1.json").write_text(json.dumps(_steps(out)))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_join_sum_share_compare_and_leave(tmp_path, no_dist_env):
    base = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
            "SECOND_MASTER_PORT": str(_free_port())}
    env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
    other = subprocess.Popen([sys.executable, "-c", _RANK_1, str(Path(__file__).parent), str(tmp_path)],
                             env={**env, **base, "RANK": "1", "OMP_NUM_THREADS": "1"},  # LOCAL_RANK: the rank
                             stderr=subprocess.PIPE, text=True)
    # if the other process hangs, end it: this one's collective then fails instead of waiting 30 minutes
    watchdog = threading.Timer(60, other.kill)
    watchdog.start()
    try:
        for name, value in {**base, "RANK": "0", "LOCAL_RANK": "2"}.items():
            no_dist_env.setenv(name, value)
        mine = _steps(tmp_path)
        err = other.communicate(timeout=60)[1]
    finally:
        watchdog.cancel()
        if other.poll() is None:
            other.kill()
            other.wait()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    assert other.returncode == 0, err
    theirs = json.loads((tmp_path / "rank1.json").read_text())
    if not torch.cuda.is_available():
        for seen in (mine, theirs):
            assert seen["nccl"] == ["ValueError", "ProcessGroupNCCL is only supported with GPUs, no GPUs found!", False]
    assert mine["dist"] == [2, 0, 2, "gloo", True] and theirs["dist"] == [2, 1, 1, "gloo", True]
    assert mine["timeout_s"] == theirs["timeout_s"] == datetime.timedelta(minutes=30).total_seconds()
    assert mine["again"] == [2, 0, 2, "gloo", False] and theirs["again"] == [2, 1, 1, "gloo", False]
    assert mine["after_barrier"] is True
    for seen in (mine, theirs):
        assert seen["sum"] == [[3.0, 30.0], "torch.float64", "cpu", False, seen["sum"][4]]
    assert mine["sum"][4] == [1.0, 10.0] and theirs["sum"][4] == [2.0, 20.0]  # the inputs are left as they were
    assert mine["on_main"] == [{"made on": 0}, [0]]
    assert theirs["on_main"] == [None, []]  # the function runs on the main process only
    for seen in (mine, theirs):
        assert seen["DataError"] == ["DataError", "DataError on process 0"]
        assert seen["_PluginError"] == ["ConfigError", "_PluginError on process 0"]
        assert seen["same"] is None
        assert seen["different"] == [
            "ConfigError", "the 2 processes disagree on the setting: process 1 has b=None, c=3, d='y', process 0 "
                           "b=2, c=None, d='x'; start them with the same command"]
        assert seen["after_again_close"] == [True, False]
        assert seen["after_close"] == [False, False]
