"""The CPU image's CMD and ENV, run for real on a loopback port: this is what `docker run` would start.

No Docker engine exists here, so the container itself never runs; the command line, environment and
HEALTHCHECK are taken from docker/Dockerfile.cpu and executed against the project's own install.
"""

from __future__ import annotations

import shutil
import signal
import subprocess

import httpx

from testkit.server import ServerProcess, free_port

from .service_proc import start_image_command
from .tools import dockerfile, healthcheck_argv


def test_cpu_image_command_gets_ready(cpu_image_service: ServerProcess, tiny_onnx_model) -> None:
    assert cpu_image_service.argv == ["segment-serve"]
    body = httpx.get(f"{cpu_image_service.url}/readyz", timeout=10).json()
    assert body["ready"] is True
    # SEGMENT_PROVIDERS=cpu from the image's ENV reached the engine.
    assert body["provider"] == "CPUExecutionProvider"
    assert httpx.get(f"{cpu_image_service.url}/healthz", timeout=10).status_code == 200
    classes = httpx.get(f"{cpu_image_service.url}/classes", timeout=10).json()
    assert [c["name"] for c in classes["classes"]] == ["background", "red", "green", "blue", "stripes"]


def _healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess:
    argv = healthcheck_argv(dockerfile("cpu"))
    exe = shutil.which(argv[0], path=env["PATH"])
    assert exe, argv[0]
    return subprocess.run([exe, *argv[1:]], env=env, capture_output=True, text=True, timeout=30)


def test_image_healthcheck_command(cpu_image_service: ServerProcess) -> None:
    """The HEALTHCHECK passes against the live service and fails when nothing listens."""
    ok = _healthcheck(cpu_image_service.env)
    assert ok.returncode == 0, ok.stderr
    down = _healthcheck({**cpu_image_service.env, "SEGMENT_PORT": str(free_port())})
    assert down.returncode != 0
    assert "Connection refused" in down.stderr or "URLError" in down.stderr, down.stderr


def test_sigterm_stops_cleanly(tiny_onnx_model, tmp_path) -> None:
    """`docker stop` sends SIGTERM to PID 1 (exec-form CMD): the service drains and exits promptly.

    uvicorn re-raises the captured signal after a graceful shutdown, so the status is "killed by SIGTERM"
    (143 in a shell) rather than 0; the log shows that the lifespan shutdown ran to completion first.
    """
    svc = start_image_command("cpu", tiny_onnx_model, tmp_path)
    try:
        svc.wait_ready()
    finally:
        code = svc.terminate(timeout=60)
    assert code in (0, -signal.SIGTERM), svc.log
    assert "Application shutdown complete" in svc.log, svc.log


def test_gpu_image_command_refuses_to_run_without_cuda(tiny_onnx_model, tmp_path) -> None:
    """The GPU image's ENV (providers cuda,cpu + SEGMENT_REQUIRE_GPU) must not fall back to CPU silently:
    on this CUDA-less machine the same command line exits non-zero and never becomes ready."""
    svc = start_image_command("gpu", tiny_onnx_model, tmp_path)
    try:
        code = svc.proc.wait(timeout=120)
    finally:
        svc.terminate()
    assert code != 0
    assert "CUDA" in svc.log, svc.log
