"""`segment-serve` as a child process on a free loopback port: the one launcher of the benchmarks and the tests
that need a real server process (its own RSS, signals, exit status and log).

By default it runs `python -m service.main` from this checkout with the caller's environment. The deployment
and packaging checks start a deployed command line instead (an image's CMD with the image's ENV, an installed
wheel's entry point) through `command`, `base_env` and `log_level=None`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from testkit import REPO


class ServerProcess:
    """A `segment-serve` child on 127.0.0.1:<free port>; its output (stdout and stderr) is kept in `lines`.

    `model`: SEGMENT_MODEL_PATH, or None to leave the model to the environment (the embedded one by default).
    `cwd`: the working directory (default: this checkout, whose `service` package `-m` then runs).
    `command`: the argv to run (default `python -m service.main`, what `segment-serve` runs); a bare name is
    looked up on the PATH of the child's environment, as a container runtime does.
    `base_env`: the whole environment to start from (default: this process's); host, port, model, log level and
    `env` are set on top of it.
    `log_level`: SEGMENT_LOG_LEVEL, or None to keep the environment's own.
    """

    def __init__(self, model: Path | None, cwd: Path | None = None, *, command: Sequence[str] | None = None,
                 base_env: Mapping[str, str] | None = None, log_level: str | None = "warning", **env: str) -> None:
        # A free port picked here rather than port 0: the server then need not log at info level (uvicorn's
        # access log costs CPU per request) for us to learn where it listens.
        port = free_port()
        self.argv = list(command or [sys.executable, "-m", "service.main"])
        self.env = {**(os.environ if base_env is None else base_env), "SEGMENT_HOST": "127.0.0.1",
                    "SEGMENT_PORT": str(port)}
        if model is not None:
            self.env["SEGMENT_MODEL_PATH"] = str(model)
        if log_level is not None:
            self.env["SEGMENT_LOG_LEVEL"] = log_level
        self.env.update({k: str(v) for k, v in env.items()})
        # stdin closed: a server never reads it, and it must not hold the terminal of whoever runs the tests.
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=cwd or REPO, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = f"http://127.0.0.1:{port}"
        self.worker_pids: set[int] = set()  # the processes /readyz said ready from (see `wait_ready`)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout: float = 120) -> ServerProcess:
        """Wait until /readyz is 200 (with several workers, `SEGMENT_WORKERS`: from each of them, asked on new
        connections, which the kernel hands to any worker; their pids are then in `worker_pids`); raise with
        the last answer and the log if the process dies first."""
        count = self.env.get("SEGMENT_WORKERS") or "auto"  # as the server reads it (empty: the default)
        workers = int(count) if count.strip().isdigit() else 1  # 'auto' is one process on a host without CUDA
        deadline = time.monotonic() + timeout
        last = "no answer"
        keep_alive = httpx.Limits(max_keepalive_connections=0 if workers > 1 else None)
        with httpx.Client(base_url=self.url, timeout=5, limits=keep_alive) as client:
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    r = client.get("/readyz")
                    if r.status_code == 200:
                        if workers == 1:
                            return self
                        self.worker_pids.add(r.json()["pid"])
                        if len(self.worker_pids) >= workers:
                            return self
                    last = f"{r.status_code} {r.text[:300]}"
                except httpx.TransportError as exc:  # not listening yet
                    last = repr(exc)
                time.sleep(0.05)
        raise RuntimeError(f"server exited ({self.proc.returncode}) or not ready after {timeout} s "
                           f"({len(self.worker_pids)} of {workers} ready; last /readyz: {last}):\n{self.log}")

    def memory_kib(self) -> dict[str, int]:
        """VmRSS (now) and VmHWM (peak RSS) of the server process, in KiB, from /proc/<pid>/status."""
        return proc_memory_kib(self.pid)

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=30).text

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM (what `docker stop` sends) and wait; kill if it does not exit in time. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS) and VmSize (address space) of a process in KiB (Linux /proc)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "VmSize"):
            out[key] = int(value.split()[0])
    return out


def site_pythonpath(folder: str) -> str:
    """PYTHONPATH for a child process that imports `testkit/<folder>/sitecustomize.py` at start (this checkout
    first, then the inherited path)."""
    return os.pathsep.join([str(REPO / "testkit" / folder), str(REPO), os.environ.get("PYTHONPATH", "")])


def held_runs_environ(hold: Path) -> dict[str, str]:
    """The environment that makes a server's model runs wait while the file `hold` exists (testkit/held_runs): a
    test then knows its requests are in flight for as long as it keeps the file, however fast the machine."""
    return {"PYTHONPATH": site_pythonpath("held_runs"), "TESTKIT_HOLD_FILE": str(hold)}
