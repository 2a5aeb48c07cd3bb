"""What several multi-worker test files share about a real server of `WORKERS` worker processes: the pids of its
ready workers, a worker's environment (where the supervisor put the shared directories), one /segment call, and a
command line whose supervisor alone runs some setup first (`CUDA_SLOTS`: slots that pick devices on this host)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx

from testkit.server import ServerProcess

WORKERS = 2


def ready_pids(server: ServerProcess) -> set[int]:
    """The pids of the workers that answered /readyz 200, asked afresh."""
    server.worker_pids.clear()
    return set(server.wait_ready(90).worker_pids)


def worker_environ(pid: int) -> dict[str, str]:
    """The environment the worker `pid` started with: where the supervisor put the shared directories."""
    pairs = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(pair.split("=", 1) for pair in pairs if "=" in pair)


def replacements(server: ServerProcess, gone: set[int], timeout: float = 60) -> set[int]:
    """The pids of `WORKERS` ready workers none of which is in `gone`, asked until they are the only ones."""
    deadline = time.monotonic() + timeout
    while (now := ready_pids(server)) & gone:
        assert time.monotonic() < deadline, (now, server.log)
        time.sleep(0.2)
    return now


def segment(url: str, body: bytes) -> httpx.Response:
    return httpx.post(f"{url}/segment", params={"output": "labels"}, content=body,
                      headers={"content-type": "image/png"}, timeout=30)


def supervisor_command(setup: str) -> list[str]:
    """`segment-serve` whose supervisor runs `setup` first (Python; the workers it spawns do not: they import the
    service afresh), so that a test can change what the supervisor alone decides."""
    return [sys.executable, "-c", f"{setup}; from service.main import main; main()"]


# The supervisor takes the CUDA provider for there (this host has none): with SEGMENT_CUDA_DEVICES naming several
# devices, its workers' slots pick devices as on a host with several GPUs, though the workers run on the CPU.
CUDA_SLOTS = supervisor_command("import service.workers as w; w._cuda_available = lambda providers: True")
