"""A worker that dies soon after it was ready, again and again (a crash loop: one that dies on its first requests,
or seconds after it warmed up), is replaced after a delay that doubles at each crash in a row (1 s, 2, 4, ...),
logged and reported under `/readyz` `workers`, rather than at once every time, each replacement loading the model
again. A worker that has served a while ends the streak: one that dies after serving that long is replaced at once.

The crashes are real: SIGKILL to the worker once the supervisor has seen it ready."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import httpx

from testkit.server import ServerProcess
from tests.service.svc_helpers import png_bytes, scene
from tests.service.worker_checks import OPTIONS, census, segment_ok, wait_for, worker_pids

SEEN_S = 1.2  # past the supervisor's next round (every 0.5 s), which asks a new worker whether it is ready


def answered(server: ServerProcess, pid: int) -> bool:
    """Whether worker `pid` answers /readyz 200 (asked on new connections: the kernel hands each to any worker)."""
    for _ in range(10):
        r = httpx.get(f"{server.url}/readyz", timeout=10)
        if r.status_code == 200 and r.json()["pid"] == pid:
            return True
    return False


def crash(server: ServerProcess, pid: int, body: bytes, expected: bytes) -> tuple[int, float]:
    """Kill worker `pid`, serving throughout; its replacement's pid, and how long after the kill it was spawned."""
    others = worker_pids(server) - {pid}
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    while not (new := worker_pids(server) - others - {pid}):
        assert server.proc.poll() is None and time.monotonic() - killed < 60, server.log
        segment_ok(server, body, expected)  # the other worker serves meanwhile
    (replacement,) = new
    return replacement, time.monotonic() - killed


def start(model: Path, served_s: float | None = None) -> ServerProcess:
    """A real two-worker server; `served_s`: the supervisor's `SERVED_S`, shortened so that a test can outlast it."""
    command = None
    if served_s is not None:
        command = [sys.executable, "-c", f"import service.worker_backoff as b; b.SERVED_S = {served_s}; "
                                         "from service.main import main; main()"]
    return ServerProcess(model, command=command, log_level="info", **OPTIONS)


def test_a_worker_that_keeps_crashing_soon_after_it_is_ready_is_replaced_later_each_time(rule_model: Path) -> None:
    body = png_bytes(scene(120, 80))
    with start(rule_model) as server:
        pid = min(server.wait_ready(120).worker_pids)
        expected = httpx.post(f"{server.url}/segment", params={"output": "labels"}, content=body,
                              headers={"content-type": "image/png"}, timeout=30).content
        time.sleep(SEEN_S)
        gaps = []
        for _ in range(3):
            pid, gap = crash(server, pid, body, expected)
            gaps.append(gap)
            wait_for(lambda pid=pid: answered(server, pid), "the replacement never served", server)
            time.sleep(SEEN_S)
        # 1 s, 2 s, 4 s (each from the round that saw the death); uvicorn started each within a round (0.5 s).
        assert gaps[0] >= 0.95 and gaps[1] >= 1.95 and gaps[2] >= 3.9, (gaps, server.log)
        assert server.log.count("after it was ready") >= 3, server.log
        assert "its replacement starts in 4 s" in server.log and "(3 in a row)" in server.log, server.log
        workers = census(server)
        assert workers["early_crashes"] == 3 and workers["start_failures"] == 0, workers
        assert "after it was ready" in workers["last_early_crash"], workers
        assert (workers["live"], workers["retrying"]) == (2, 0), workers
        # While a replacement waits, the shortfall shows.
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: census(server)["retrying"] == 1, "the wait not reported", server, timeout=10)
        assert census(server)["live"] == 1
        assert server.terminate() == 0, server.log


def test_a_worker_that_served_a_while_is_replaced_at_once_and_ends_its_slots_streak(rule_model: Path) -> None:
    served_s = 6.0
    body = png_bytes(scene(120, 80))
    with start(rule_model, served_s) as server:
        first = server.wait_ready(120).worker_pids
        expected = httpx.post(f"{server.url}/segment", params={"output": "labels"}, content=body,
                              headers={"content-type": "image/png"}, timeout=30).content
        time.sleep(SEEN_S)
        pid, soon = crash(server, min(first), body, expected)  # soon after it was ready: 1 s
        wait_for(lambda: answered(server, pid), "the replacement never served", server)
        time.sleep(served_s + SEEN_S)  # it has served long enough: the slot's streak is over
        assert "crashes in a row are over" in server.log, server.log
        pid, served = crash(server, pid, body, expected)
        # Ready first: the supervisor's round waits for a starting worker's answer to its ping (its imports).
        wait_for(lambda: answered(server, pid), "the replacement never served", server)
        _, survivor = crash(server, max(first), body, expected)  # never crashed, served long: at once too
        assert soon >= 0.95 and served < 0.95 and survivor < 0.95, (soon, served, survivor, server.log)
        wait_for(lambda: census(server)["live"] == 2, "not replaced", server)
        assert census(server)["early_crashes"] == 1
        assert server.terminate() == 0, server.log
