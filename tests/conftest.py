"""Shared fixtures: real image files written into pytest's tmp_path (see tests/_images.py)."""

import sys
from pathlib import Path

import pytest

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
