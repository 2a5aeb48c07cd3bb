"""A single `segment-serve` process restarts in place on SIGHUP (the same PID, a container's PID 1). Once a `crf=true`
request has started the CRF's worker pool, multiprocessing's resource tracker is a child of the server too: across
the exec it exits, and the new program never waits for it, so every restart would leave one more zombie child,
each holding a PID slot, for the life of the process. Real `segment-serve`, real uploads and signals."""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path

import httpx

from testkit.server import ServerProcess
from tests.reliability.crf_process_helpers import noise_png, wait_for

CRF = {"crf": "true", "output": "stats"}


def children(pid: int) -> dict[int, str]:
    """{child pid: state letter} of `pid`'s direct children (Z: a zombie, ended and never reaped)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in map(int, (task / "children").read_text().split()):
                with contextlib.suppress(OSError):
                    stat = Path(f"/proc/{child}/stat").read_text()
                    found[child] = stat[stat.rindex(")") + 2]
    return found


def test_restarts_in_place_leave_no_zombie_children() -> None:
    with ServerProcess(None, SEGMENT_INTRA_OP_THREADS="1", SEGMENT_CRF_PROCESSES="1", log_level="info") as server:
        server.wait_ready()
        for restart in range(2):
            answer = httpx.post(f"{server.url}/segment", content=noise_png(restart, 160, 120), params=CRF,
                                timeout=60)
            assert answer.status_code == 200, answer.text
            assert children(server.pid), "the CRF pool and its tracker run as children of the server"
            lines = server.log.count("Application startup complete")
            server.proc.send_signal(signal.SIGHUP)
            wait_for(lambda n=lines: server.log.count("Application startup complete") > n, 60, "the restart")
            server.wait_ready()
            time.sleep(0.5)  # an orphaned tracker exits within a tick of losing its pipe
            assert server.proc.poll() is None, server.log
            assert "Z" not in children(server.pid).values(), (restart, children(server.pid), server.log)
        assert server.terminate() in (0, -signal.SIGTERM), server.log
