"""The README's result tables equal what benchmarks/readme_tables.py makes from the committed result files."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _tables():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_readme_tables", BENCH / "readme_tables.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


tables = _tables()


@pytest.mark.parametrize("name", sorted(tables.TABLES))
def test_readme_table_equals_its_results_file(name):
    text = tables.README.read_text()
    found = tables.find_block(text, name)
    assert found is not None, f"README.md lacks the results:{name} block"
    assert found.group(0) == tables.block(name, tables.TABLES[name]()), (
        f"README.md's {name} table differs from benchmarks/results/{name}.json: "
        "run python benchmarks/readme_tables.py --write")


def test_readme_links_only_to_files_that_exist():
    import re

    text = tables.README.read_text()
    links = re.findall(r"\]\(((?:benchmarks|docs)/[^)#]+)\)", text)
    assert links, "expected links to results files"
    missing = [link for link in links if not (tables.README.parent / link).exists()]
    assert not missing, missing
