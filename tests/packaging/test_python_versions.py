"""`requires-python` admits only interpreters the packaged code runs on.

pip installs the wheel on any Python that `requires-python` admits, so a standard-library member newer than its
lower bound breaks that install at the first call, not at install time (on 3.10, every upload to `/segment` was a
500 while `/healthz` stayed 200). vermin reads every module of the wheel's packages, annotations included
(pydantic and FastAPI evaluate them at runtime), and names each member or syntax that the oldest admitted version
lacks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def vermin() -> str:
    """The vermin executable of the venv running the tests (the dev extra), else from PATH."""
    candidate = Path(sys.executable).parent / "vermin"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("vermin")
    if found is None:
        pytest.fail("required tool `vermin` is not installed: pip install '.[dev]'", pytrace=False)
    return found


def oldest_admitted() -> str:
    """The lower bound of `requires-python`, as `major.minor`."""
    spec = SpecifierSet(PYPROJECT["project"]["requires-python"])
    (lower,) = [s.version for s in spec if s.operator == ">="]
    return ".".join(lower.split(".")[:2])


def packages() -> list[str]:
    """The top-level packages the wheel ships (setuptools' `packages.find` include patterns)."""
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    names = sorted({pattern.rstrip("*") for pattern in include})
    assert names and all((REPO / name / "__init__.py").is_file() for name in names), names
    return names


def run_vermin(target: str, *paths: str) -> subprocess.CompletedProcess:
    # `--exclude long`: torch's `Tensor.long()` reads to vermin as Python 2's `long` builtin.
    return subprocess.run([vermin(), "-q", "--violations", "--no-tips", "--eval-annotations", "--exclude", "long",
                           f"-t={target}-", *paths], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_the_oldest_admitted_python_runs_every_packaged_module() -> None:
    out = run_vermin(oldest_admitted(), *packages())
    assert out.returncode == 0 and not out.stdout.strip(), \
        f"requires-python admits {oldest_admitted()}, but the code needs more:\n{out.stdout}{out.stderr}"


def test_vermin_flags_a_member_newer_than_the_target(tmp_path: Path) -> None:
    """The check is live: `asyncio.timeout` (3.11) is a violation for a 3.10 target, not for 3.11."""
    module = tmp_path / "uses_timeout.py"
    module.write_text("import asyncio\n\n\nasync def f():\n    async with asyncio.timeout(1):\n        pass\n")
    flagged = run_vermin("3.10", str(module))
    assert flagged.returncode != 0 and "asyncio.timeout" in flagged.stdout, flagged.stdout
    assert run_vermin("3.11", str(module)).returncode == 0
