"""The package surface: every exported name resolves, and importing it stays light."""

import subprocess
import sys

import pytest

import cvae_features
from cvae_features.errors import (ConfigError, CvaeError, DataError, DecodeError, EngineError, ModelError,
                                  SourceNotFoundError, StoreError, TrainingError)


def test_every_exported_name_resolves():
    for name in cvae_features.__all__:
        assert getattr(cvae_features, name) is not None, name
    assert set(cvae_features.__all__) <= set(dir(cvae_features))


def test_no_submodule_shares_a_name_with_a_public_function():
    # importing a submodule binds it on the package: a module named like a function would replace it
    from pathlib import Path

    modules = {p.stem for p in Path(cvae_features.__path__[0]).iterdir() if p.suffix == ".py" or p.is_dir()}
    assert not modules & set(cvae_features.__all__)
    code = ("import cvae_features.training, cvae_features.extraction; "
            "from cvae_features import train, extract; print(type(train).__name__, type(extract).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["function", "function"]


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
    (EngineError, RuntimeError),
])
def test_errors_are_cvae_errors_and_builtins(error, builtin):
    assert issubclass(error, CvaeError) and issubclass(error, builtin)
    with pytest.raises(builtin):
        raise error("x")


def _imports_of_package(root):
    """Module name -> the cvae_features modules it imports (at module level or inside functions)."""
    import ast
    from pathlib import Path

    pkg_dir = Path(root)
    names = {}
    for path in pkg_dir.rglob("*.py"):
        parts = list(path.relative_to(pkg_dir.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        names[".".join(parts)] = (path, is_pkg)
    graph = {}
    for name, (path, is_pkg) in names.items():
        package = name if is_pkg else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:  # `from . import x` may name a submodule
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in names else target)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        targets = {t for t in found if t in names and t != name}
        # importing a.b.c runs the package a.b's __init__ first (unless the importer lives in a.b)
        for t in list(targets):
            parts = t.split(".")
            for k in range(2, len(parts)):
                parent = ".".join(parts[:k])
                if parent in names and not (name + ".").startswith(parent + "."):
                    targets.add(parent)
        graph[name] = targets
    return graph


def _find_cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycle_inside_the_package():
    graph = _imports_of_package(cvae_features.__path__[0])
    # the walk sees what it must: function-level and relative imports count
    assert "cvae_features.store" in graph["cvae_features.resolve"]
    assert "cvae_features.data.builtin" in graph["cvae_features.data.open"]
    assert "cvae_features._rundir" in graph["cvae_features._train_hooks"]
    cycle = _find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)
    # the store knows the HDF5 format only: no model, no torch
    assert not {m for m in graph["cvae_features.store"] if m.startswith(("cvae_features.model",
                                                                          "cvae_features.featurizers"))}


def test_the_cycle_finder_finds_cycles():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None
