"""Running the benchmarks as a GPU host runs them: as commands (tests never import the benchmarks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from service.settings import default_model_path
from testkit import REPO


def run_python(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`python *args` in the repository, with `pythonpath` (shims, hidden packages) ahead of it on the path."""
    path = os.pathsep.join(str(p) for p in (pythonpath, REPO) if p is not None)
    return subprocess.run([sys.executable, *args], cwd=REPO, env={**os.environ, "PYTHONPATH": path},
                          capture_output=True, text=True, timeout=300)


# The child's preamble: its temporary files go to `scratch`, its requests carry a real JPEG photograph.
PREAMBLE = """
import json, tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from testkit.images import encode
from testkit.photos import PHOTOS, photo
tempfile.tempdir = {scratch!r}
MODEL = Path({model!r})
BODY = encode(photo(PHOTOS[0], size=(320, 240)))
"""


def preamble(scratch: Path) -> str:
    return PREAMBLE.format(scratch=str(scratch), model=str(default_model_path()))
