"""The supervisor's signals (SIGTTOU, SIGTTIN, SIGTERM during a SIGHUP restart) against a real server of two
workers: SIGTTOU removes a slot whose replacement fails at startup rather than a serving worker, a worker added by
SIGTTIN knows the new count, and a stop that comes while a restarted worker drains starts no replacement."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path

import httpx

from testkit.server import ServerProcess
from tests.service.svc_helpers import png_bytes, scene
from tests.service.worker_checks import OPTIONS, census, serve_until, wait_for, worker_pids
from tests.service.worker_helpers import CUDA_SLOTS


def test_sigttou_removes_the_slot_that_fails_at_startup_not_a_serving_worker(rule_model: Path,
                                                                             tmp_path: Path) -> None:
    model, away = tmp_path / "model.onnx", tmp_path / "away.onnx"
    shutil.copy(rule_model, model)
    body = png_bytes(scene(120, 80))
    # Slots that pick devices (two of them; `CUDA_SLOTS`): the survivor left past the count is offered a lower slot.
    with ServerProcess(model, command=CUDA_SLOTS, SEGMENT_CUDA_DEVICES="0,1", **OPTIONS) as server:
        first = server.wait_ready(120).worker_pids
        expected = httpx.post(f"{server.url}/segment", params={"output": "labels"}, content=body,
                              headers={"content-type": "image/png"}, timeout=30).content
        model.rename(away)
        os.kill(min(first), signal.SIGKILL)  # the first worker started: not the last, which uvicorn's SIGTTOU takes
        serve_until(server, body, expected, lambda c: c["retrying"] == 1, "no failed start", timeout=30)
        server.proc.send_signal(signal.SIGTTOU)
        # One worker kept, the one that serves; the server goes on (it stopped, exit 3: no worker left running).
        serve_until(server, body, expected, lambda c: c["configured"] == 1, "SIGTTOU not handled", timeout=30)
        # The survivor, on slot 1 past the count, is offered slot 0: its replacement fails like the slot's did.
        serve_until(server, body, expected, lambda c: "stays on slot 1" in server.log, "no move tried", timeout=30)
        time.sleep(1.5)  # past the removed slot's next try
        assert census(server) == {**census(server), "configured": 1, "live": 1, "retrying": 0}
        assert worker_pids(server) == {max(first)}
        assert server.terminate() == 0, server.log


def test_a_worker_added_by_sigttin_takes_the_next_slot_without_a_warning(rule_model: Path) -> None:
    with ServerProcess(rule_model, log_level="info", **OPTIONS) as server:
        server.wait_ready(120)
        server.proc.send_signal(signal.SIGTTIN)
        server.worker_pids.clear()
        server.env["SEGMENT_WORKERS"] = "3"  # what `wait_ready` counts
        server.wait_ready(120)
        slots = {httpx.get(f"{server.url}/readyz", timeout=10).json()["worker_slot"] for _ in range(30)}
        assert slots <= {0, 1, 2} and "worker slot 2:" in server.log, (slots, server.log)
        assert "worker slots are held" not in server.log, server.log  # three slots for three workers
        assert census(server)["configured"] == 3
        assert server.terminate() == 0, server.log


def held_request(server: ServerProcess, pids: set[int]) -> socket.socket | None:
    """A connection whose worker (one of `pids`, asked by /readyz) now waits for the rest of an upload: it drains
    until the connection closes. None when the kernel handed it to another worker."""
    sock = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=10)
    sock.sendall(b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n")
    answer = b""
    while b"}" not in answer:
        answer += sock.recv(65536)
    pid = int(re.search(rb'"pid":\s*(\d+)', answer).group(1))  # type: ignore[union-attr]
    if pid not in pids:
        sock.close()
        return None
    sock.sendall(b"POST /segment HTTP/1.1\r\nhost: x\r\ncontent-type: image/png\r\ncontent-length: 100000\r\n\r\n"
                 + png_bytes(scene(40, 30))[:100])
    pids.discard(pid)
    return sock


def test_a_stop_during_a_restarted_workers_drain_starts_no_replacement(rule_model: Path) -> None:
    with ServerProcess(rule_model, log_level="info", SEGMENT_BODY_TIMEOUT_S="60", **OPTIONS) as server:
        first = set(server.wait_ready(120).worker_pids)
        left, held = set(first), []
        deadline = time.monotonic() + 30
        while left:  # a request in flight on each worker: whichever the restart stops first drains meanwhile
            assert time.monotonic() < deadline, (left, server.log)
            if (sock := held_request(server, left)) is not None:
                held.append(sock)
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "Terminated child process" in server.log, "the restart did not stop a worker", server)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # the stopped worker still drains
        for sock in held:
            sock.close()
        assert server.proc.wait(60) == 0, server.log
        server._reader.join(5)
    waited = {int(pid) for pid in re.findall(r"Waiting for child process \[(\d+)\]", server.log)}
    started = set(map(int, re.findall(r"Started server process \[(\d+)\]", server.log)))
    assert waited <= first and started == first, (first, waited, started, server.log)
