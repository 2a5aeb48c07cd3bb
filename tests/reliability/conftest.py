"""Fixtures for the robustness checks: real `segment-serve` child processes (so RSS and signals are the server's
own), real ONNX models, real encoded images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.server import ServerProcess
from tests.service.svc_helpers import make_rule_model


@pytest.fixture(scope="session")
def rel_rule_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hand-written 'dominant channel' model: exact, known label maps."""
    return make_rule_model(tmp_path_factory.mktemp("reliability") / "rule.onnx")


@pytest.fixture(scope="module")
def rule_proc(rel_rule_model: Path) -> Iterator[ServerProcess]:
    """One server process on the rule model, shared by a module's tests."""
    with ServerProcess(rel_rule_model, SEGMENT_INTRA_OP_THREADS="1") as server:
        yield server.wait_ready()
