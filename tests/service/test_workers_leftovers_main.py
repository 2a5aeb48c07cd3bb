"""`python -m service` runs what the `segment-serve` console script runs (pyproject.toml: `service.main:main`),
also with several workers, whose spawned processes import the main module again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from testkit import REPO
from testkit.server import ServerProcess
from tests.service.worker_checks import OPTIONS


def test_python_dash_m_service_is_segment_serve(rule_model: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "service", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: segment-serve") and "SEGMENT_MODEL_PATH" in done.stdout, done.stdout
    with ServerProcess(rule_model, command=[sys.executable, "-m", "service"], **OPTIONS) as server:
        assert len(server.wait_ready(120).worker_pids) == 2
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
        assert server.terminate() == 0, server.log
