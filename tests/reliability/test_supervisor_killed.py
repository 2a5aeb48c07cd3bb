"""With several workers (`SEGMENT_WORKERS`), a supervisor killed outright (SIGKILL, the OOM killer) cannot stop its
workers: they must stop by themselves, so that the port is free for the next start."""

from __future__ import annotations

import os
import signal
import time

import httpx

from testkit.server import ServerProcess


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_workers_of_a_killed_supervisor_stop_and_free_the_port() -> None:
    """SIGKILL to the supervisor of two ready workers: both workers are gone within seconds (they used to be
    re-parented to PID 1 and serve on for ever), and a new server on the same port starts and answers."""
    with ServerProcess(None, SEGMENT_WORKERS="2", SEGMENT_INTRA_OP_THREADS="1", log_level="info") as server:
        server.wait_ready()
        workers = set(server.worker_pids)
        assert len(workers) == 2 and server.pid not in workers
        os.kill(server.pid, signal.SIGKILL)
        server.proc.wait(timeout=10)
        deadline = time.monotonic() + 20
        try:
            while any(_alive(pid) for pid in workers):
                assert time.monotonic() < deadline, ([pid for pid in workers if _alive(pid)], server.log)
                time.sleep(0.1)
        finally:  # a failure leaves no orphan serving on the machine
            for pid in filter(_alive, workers):
                os.kill(pid, signal.SIGKILL)
        assert "the supervisor is gone: stopping this worker" in server.log, server.log
    # The same port again (ServerProcess's own `url` names the free port it picked, not this one).
    with ServerProcess(None, SEGMENT_PORT=server.url.rsplit(":", 1)[1]) as again:
        deadline = time.monotonic() + 60
        while True:
            assert again.proc.poll() is None, again.log  # "address already in use" ended it, before the fix
            try:
                if httpx.get(f"{server.url}/readyz", timeout=5).json().get("pid") == again.pid:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, again.log
            time.sleep(0.1)
