"""Shared fixtures: real image files written into pytest's tmp_path (see tests/_images.py)."""

import json
import math
import os
import sys
from pathlib import Path

import pytest

# The tests' models are tiny (8x8 images): one thread runs them fastest, and keeps them fast on a busy
# machine. With two threads competing with other processes for two cores, a fit measured 0.04 s on one
# thread took 0.5 to 2 s (OpenMP workers waiting on each other); whole test files took 5 s or 50 s from
# one run to the next. Set before torch is imported, so subprocesses (the `cvae` CLI) inherit it too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).parent))  # so tests can `import _images`

from _images import write_class_folder, write_fake_mnist, write_image_zoo  # noqa: E402


@pytest.fixture
def image_zoo(tmp_path):
    """(folder, {"good": {name: description}, "bad": {name: reason substring}}) of a flat folder of every kind."""
    folder = tmp_path / "zoo"
    return folder, write_image_zoo(folder)


@pytest.fixture
def class_folder(tmp_path):
    """(folder, {relative path: class index}) of a labelled folder: classes circle, square; 4 gray 12x12 each."""
    folder = tmp_path / "classes"
    return folder, write_class_folder(folder)


@pytest.fixture
def fake_fashion_dir(tmp_path):
    """(folder, written arrays) of a tiny Fashion-MNIST-format IDX set: 20 train, 10 test, gzipped."""
    folder = tmp_path / "fmnist"
    return folder, write_fake_mnist(folder)


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    """OMP_NUM_THREADS also when torch was imported before this file (a plugin, python -c)."""
    import torch

    if os.environ["OMP_NUM_THREADS"].isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config, items):
    """Under mutmut (benchmarks/mutation.py sets MUTANT_UNDER_TEST), a mutant's tests run quickest first, by the
    durations mutmut recorded (``mutmut-stats.json`` in ``mutants/``): mutmut stops at the first failing test, so
    a mutant is caught sooner than in the order of mutmut's set of test names. A normal run keeps its order."""
    if not os.environ.get("MUTANT_UNDER_TEST"):
        return
    import threading

    import tqdm

    # mutmut forks its workers from one process: a tqdm lock made there (a multiprocessing lock) would be shared by
    # every worker (workers hung, with no CPU use, in tests showing tqdm bars); each gets a lock of its own
    tqdm.tqdm.set_lock(threading.RLock())
    tqdm.tqdm.monitor_interval = 0
    try:
        durations = json.loads(Path("mutmut-stats.json").read_text())["duration_by_test"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    items.sort(key=lambda item: durations.get(item.nodeid, math.inf))
