"""The support code's layout: bench/ and tests/ never import each other; what both need is in testkit/, which
imports neither (so a benchmark runs without the test suite, and a test does not depend on benchmark code)."""

from __future__ import annotations

import ast
from fnmatch import fnmatch

import pytest

from testkit import REPO

# For each top-level folder, the packages its files must not import.
FORBIDDEN = {"bench": {"tests"}, "tests": {"bench"}, "testkit": {"bench", "tests"}}


def imported_packages(source: str, filename: str = "<source>") -> set[str]:
    """Top-level package names of a module's absolute imports, wherever they stand (function bodies too).
    Relative imports stay within the module's own package, so they are left out."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_import_reader_sees_every_form() -> None:
    source = "import alpha.one\nfrom beta.two import x\nfrom . import sibling\ndef f():\n    import gamma as g\n"
    assert imported_packages(source) == {"alpha", "beta", "gamma"}


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_no_imports_across_bench_and_tests(folder: str) -> None:
    files = sorted((REPO / folder).rglob("*.py"))
    assert files, folder
    crossing = [f"{path.relative_to(REPO)} imports {name}" for path in files
                for name in sorted(imported_packages(path.read_text(), str(path)) & FORBIDDEN[folder])]
    assert not crossing, crossing


def test_testkit_is_not_shipped() -> None:
    """testkit is support code: no pattern of the wheel's package list (pyproject's packages.find) matches it."""
    line = next(x for x in (REPO / "pyproject.toml").read_text().splitlines() if x.startswith("include = "))
    patterns = ast.literal_eval(line.partition("=")[2].strip())
    assert patterns and not any(fnmatch("testkit", p) for p in patterns), patterns
