"""Start `segment-serve` exactly as an image's CMD + ENV would, but on a free loopback port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from .tools import VENV_BIN, dockerfile, exec_form

# Variables the host sets for numerical libraries on some CPUs (see the project's environment notes); the
# test passes them through unchanged rather than dropping them.
PASSTHROUGH = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


@dataclass
class ImageProcess:
    """A running (or exited) service started from an image's command line."""

    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen
    log_path: Path
    base_url: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (what `docker stop` sends to PID 1) and wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image_env(name: str, workdir: Path, overrides: dict[str, str], venv_bin: Path = VENV_BIN) -> dict[str, str]:
    """The final stage's ENV, with the image's /opt/venv/bin mapped onto `venv_bin`, plus `overrides`."""
    envs = dockerfile(name).envs
    assert envs["PATH"].startswith("/opt/venv/bin:"), envs["PATH"]
    env = {"HOME": str(workdir), "LANG": "C.UTF-8"}
    env.update({k: os.environ[k] for k in PASSTHROUGH if k in os.environ})
    env.update(envs)
    env["PATH"] = f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    env.update(overrides)
    return env


def start_image_command(name: str, model: Path, workdir: Path, venv_bin: Path = VENV_BIN,
                        **extra: str) -> ImageProcess:
    """Run docker/Dockerfile.<name>'s CMD with its ENV; only host, port and model path are changed.

    The working directory is an empty folder, as the image's WORKDIR holds no source tree. `venv_bin`
    stands in for the image's /opt/venv/bin (default: the venv running the tests).
    """
    argv = exec_form(dockerfile(name).cmd)
    port = free_port()
    env = image_env(name, workdir, {"SEGMENT_HOST": "127.0.0.1", "SEGMENT_PORT": str(port),
                                    "SEGMENT_MODEL_PATH": str(model), **extra}, venv_bin)
    resolved = shutil.which(argv[0], path=env["PATH"])
    assert resolved, f"{argv[0]} is not on the image PATH (is the package installed with its entry points?)"
    log_path = workdir / f"{name}-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([resolved, *argv[1:]], env=env, cwd=workdir, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return ImageProcess(argv, env, proc, log_path, f"http://127.0.0.1:{port}")


def wait_ready(svc: ImageProcess, timeout: float = 120.0) -> httpx.Response:
    """Poll /readyz until 200; fail with the service log if it exits or never gets ready."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if svc.proc.poll() is not None:
            raise AssertionError(f"service exited with {svc.proc.returncode}:\n{svc.log()}")
        try:
            resp = httpx.get(f"{svc.base_url}/readyz", timeout=5)
            if resp.status_code == 200:
                return resp
            last = f"{resp.status_code} {resp.text[:300]}"
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.25)
    raise AssertionError(f"/readyz not 200 after {timeout}s (last: {last}):\n{svc.log()}")
