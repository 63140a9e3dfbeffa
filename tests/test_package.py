"""The package surface: every exported name resolves, and importing it stays light."""

import subprocess
import sys

import pytest

import cvae_features
from cvae_features.errors import (ConfigError, CvaeError, DataError, DecodeError, ModelError,
                                  SourceNotFoundError, StoreError, TrainingError)


def test_every_exported_name_resolves():
    for name in cvae_features.__all__:
        assert getattr(cvae_features, name) is not None, name
    assert set(cvae_features.__all__) <= set(dir(cvae_features))


def test_functions_named_like_their_modules_stay_functions():
    code = ("import cvae_features.train, cvae_features.extract; from cvae_features.train import TrainConfig; "
            "from cvae_features import train, extract; print(callable(train), callable(extract), "
            "type(train).__name__, type(extract).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "function", "function"]


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cvae_features.nope  # noqa: B018


def test_import_and_cli_help_do_not_load_torch():
    code = ("import sys, cvae_features, cvae_cli.main; "
            "print(sorted(m for m in ('torch', 'sklearn', 'h5py') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("error, builtin", [
    (ConfigError, ValueError), (SourceNotFoundError, FileNotFoundError), (DataError, ValueError),
    (DecodeError, ValueError), (StoreError, ValueError), (ModelError, ValueError), (TrainingError, RuntimeError),
])
def test_errors_are_cvae_errors_and_builtins(error, builtin):
    assert issubclass(error, CvaeError) and issubclass(error, builtin)
    with pytest.raises(builtin):
        raise error("x")
