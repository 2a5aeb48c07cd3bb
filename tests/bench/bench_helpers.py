"""Running the benchmarks as a GPU host runs them: as commands (tests never import the benchmarks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from testkit import REPO


def run_python(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`python *args` in the repository, with `pythonpath` (shims, hidden packages) ahead of it on the path."""
    path = os.pathsep.join(str(p) for p in (pythonpath, REPO) if p is not None)
    return subprocess.run([sys.executable, *args], cwd=REPO, env={**os.environ, "PYTHONPATH": path},
                          capture_output=True, text=True, timeout=300)
