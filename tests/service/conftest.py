"""Fixtures for the service tests: real uvicorn servers on loopback ports, real ONNX models, real images."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.settings import Settings
from tests.service.svc_helpers import LiveServer, make_rule_model, with_input_size


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service_models")


@pytest.fixture(scope="session")
def rule_model(models_dir: Path) -> Path:
    return make_rule_model(models_dir / "rule.onnx")


@pytest.fixture(scope="session")
def slow_model(tiny_onnx_model: Path, models_dir: Path) -> Path:
    """The tiny DeepLab at 768x768: ~0.2 s per image on 2 CPU cores, slow enough to watch a batch run."""
    return with_input_size(tiny_onnx_model, models_dir / "slow.onnx", 768)


@pytest.fixture(scope="session")
def very_slow_model(tiny_onnx_model: Path, models_dir: Path) -> Path:
    """The tiny DeepLab at 1280x1280: ~0.5 s per image, for watching the server while one image runs."""
    return with_input_size(tiny_onnx_model, models_dir / "very_slow.onnx", 1280)


@pytest.fixture(scope="session")
def broken_model(models_dir: Path) -> Path:
    """Meets the contract at load, but every real run (at 64x64) fails inside ORT."""
    return make_rule_model(models_dir / "broken.onnx", input_size=64, fails_every_run=True)


@pytest.fixture
def serve() -> Iterator[Callable[..., LiveServer]]:
    """Start a server for a model with settings overrides; every server started is stopped afterwards."""
    servers: list[LiveServer] = []

    def start(model: Path, wait_ready: bool = True, **overrides) -> LiveServer:
        settings = Settings(model_path=model, host="127.0.0.1", port=0, **overrides)
        server = LiveServer(settings).start(wait_ready=wait_ready)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def rule_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One shared server on the rule model (module scope: its metrics accumulate over the module's tests)."""
    model = make_rule_model(tmp_path_factory.mktemp("rule") / "rule.onnx")
    server = LiveServer(Settings(model_path=model, host="127.0.0.1", port=0, max_wait_ms=2)).start()
    yield server
    server.stop()
