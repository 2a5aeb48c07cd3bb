"""What the multi-worker tests read off a real server of several worker processes: its workers' pids, the
supervisor's census as `/readyz` reports it, and requests served while waiting for a condition."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from testkit.server import ServerProcess

# Two workers, one thread each: a multi-worker server small enough for 2 CPUs.
OPTIONS = {"SEGMENT_WORKERS": "2", "SEGMENT_INTRA_OP_THREADS": "1", "SEGMENT_WORKER_THREADS": "1"}


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def worker_pids(server: ServerProcess) -> set[int]:
    """The pids of the workers running now: the supervisor's children that multiprocessing spawned (not its
    resource tracker), without those gone but not yet reaped."""
    found = set()
    for pid in map(int, Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command and _alive(pid):
            found.add(pid)
    return found


def wait_for(condition: Callable[[], object], what: str, server: ServerProcess, timeout: float = 60) -> None:
    """Poll `condition` until it holds; fail saying `what` (with the server's log) if the server exits first or
    `timeout` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert server.proc.poll() is None and time.monotonic() < deadline, f"{what}:\n{server.log}"
        time.sleep(0.05)


def segment_ok(server: ServerProcess, body: bytes, expected: bytes) -> None:
    r = httpx.post(f"{server.url}/segment", params={"output": "labels"}, content=body,
                   headers={"content-type": "image/png"}, timeout=30)  # a new connection: any worker may take it
    assert r.status_code == 200 and r.content == expected, (r.status_code, r.text[:300], server.log)


def census(server: ServerProcess) -> dict[str, Any]:
    """The supervisor's account of the workers, from whichever worker answers /readyz (it must be ready)."""
    r = httpx.get(f"{server.url}/readyz", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["workers"]


def serve_until(server: ServerProcess, body: bytes, expected: bytes, done: Callable[[dict[str, Any]], bool],
                what: str, timeout: float = 60) -> list[dict[str, Any]]:
    """Send requests, each answered 200, until the census satisfies `done`; every census seen."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not seen or not done(seen[-1]):
        assert server.proc.poll() is None and time.monotonic() < deadline, f"{what}: {seen[-3:]}\n{server.log}"
        segment_ok(server, body, expected)
        seen.append(census(server))
    return seen
