"""A server told to stop (SIGTERM, or Ctrl-C) refuses new connections from then on, so that a client knows they
never ran and may send them elsewhere, while every request it holds is answered 200. With several workers
(`SEGMENT_WORKERS`) the supervisor and every worker hold the one listening socket, which the kernel keeps listening
while any of them does: the supervisor held it until the last worker had drained, and a worker still loading its
model until the load ended, so that new connections were accepted, left unanswered and reset at the exit. A
SIGHUP restart, which needs the socket, refuses nothing. Ctrl-C ends a drained server with exit status 0 and no
traceback, in both modes (real `segment-serve` processes, raw sockets)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from testkit.rawhttp import read_response, status_of
from testkit.server import ServerProcess
from tests.reliability import shutdown_helpers as sh

# Two workers, one thread each (small enough for 2 CPUs); uploads held for the length of a test.
WORKERS = {"SEGMENT_WORKERS": "2", "SEGMENT_INTRA_OP_THREADS": "1", "SEGMENT_WORKER_THREADS": "1",
           "SEGMENT_BODY_TIMEOUT_S": "60"}
PROBES = 5


def labels(server: ServerProcess) -> bytes:
    """The server's answer to the held uploads' image, asked before the stop."""
    r = httpx.post(f"{server.url}/segment", params={"output": "labels"}, content=sh.BODY,
                   headers={"content-type": "image/png"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.content


@pytest.mark.parametrize("ctrl_c", [False, True], ids=["sigterm", "ctrl-c"])
def test_workers_told_to_stop_refuse_new_connections_and_answer_those_in_flight(rel_rule_model: Path,
                                                                                ctrl_c: bool) -> None:
    with ServerProcess(rel_rule_model, log_level="info", **WORKERS) as server:
        pids = set(server.wait_ready(120).worker_pids)
        expected = labels(server)
        held = sh.hold_one_on_each(server, pids)  # each worker drains until its upload is finished
        if ctrl_c:  # a terminal's Ctrl-C signals the whole process group
            for pid in (server.pid, *pids):
                os.kill(pid, signal.SIGINT)
        else:
            server.proc.send_signal(signal.SIGTERM)  # what an orchestrator sends (to the supervisor only)
        sh.wait_for_log(server, "Terminated child process", 2)  # the supervisor let go of the port, then told each
        sh.wait_for_log(server, "Shutting down", 2)  # each worker has let go of it and drains
        fates = [sh.new_connection_fate(server.url) for _ in range(PROBES)]
        # Before: every one 'accepted, unanswered' (until a reset when the supervisor exited).
        assert fates == ["refused"] * PROBES, (fates, server.log)
        assert [upload.finish() for upload in held] == [(200, expected)] * 2, server.log
        assert server.proc.wait(60) == 0, server.log
        server._reader.join(5)
    assert server.log.count("drained and stopped") == 2, server.log
    assert "Traceback" not in server.log, server.log


def test_a_worker_still_loading_its_model_lets_go_of_the_port_when_the_server_stops(rel_rule_model: Path,
                                                                                    tmp_path: Path) -> None:
    env, hold = sh.held_load_env(tmp_path)
    with ServerProcess(rel_rule_model, log_level="info", **WORKERS, **env) as server:
        try:
            pids = set(server.wait_ready(120).worker_pids)
            expected = labels(server)
            hold.touch()
            gone = min(pids)
            os.kill(gone, signal.SIGKILL)
            sh.wait_for_log(server, "model load held [")  # its replacement loads, its copy of the socket open
            upload = sh.hold_upload(server.url)
            assert upload.pid == max(pids)  # the survivor: the only worker that accepts
            server.proc.send_signal(signal.SIGTERM)
            sh.wait_for_log(server, "Terminated child process", 2)
            sh.wait_for_log(server, "Shutting down")  # the survivor drains; the replacement still loads
            fates = [sh.new_connection_fate(server.url) for _ in range(PROBES)]
            # Before: 'accepted, unanswered' for as long as the load took (a GPU's: up to minutes).
            assert fates == ["refused"] * PROBES, (fates, server.log)
            assert upload.finish() == (200, expected), server.log
        finally:
            hold.unlink(missing_ok=True)  # the load goes on; the replacement then stops without serving
        assert server.proc.wait(60) == 0, server.log
        server._reader.join(5)
    assert "Traceback" not in server.log, server.log


def test_ctrl_c_drains_a_single_server_which_exits_0_without_a_traceback(rel_rule_model: Path) -> None:
    with ServerProcess(rel_rule_model, log_level="info", SEGMENT_INTRA_OP_THREADS="1",
                       SEGMENT_BODY_TIMEOUT_S="60") as server:
        server.wait_ready(60)
        expected = labels(server)
        upload = sh.hold_upload(server.url)
        server.proc.send_signal(signal.SIGINT)
        sh.wait_for_log(server, "Shutting down")
        assert sh.new_connection_fate(server.url) == "refused"
        assert upload.finish() == (200, expected), server.log
        assert server.proc.wait(30) == 0, server.log  # before: -2 (killed by the SIGINT uvicorn raised again)
        server._reader.join(5)
    assert "drained and stopped" in server.log, server.log
    assert "Traceback" not in server.log and "KeyboardInterrupt" not in server.log, server.log


def test_a_second_ctrl_c_cuts_the_drain_short_and_exits_130(rel_rule_model: Path) -> None:
    with ServerProcess(rel_rule_model, log_level="info", SEGMENT_INTRA_OP_THREADS="1",
                       SEGMENT_BODY_TIMEOUT_S="60") as server:
        server.wait_ready(60)
        upload = sh.hold_upload(server.url)  # never finished: the drain would wait for it
        server.proc.send_signal(signal.SIGINT)
        sh.wait_for_log(server, "Shutting down")
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(30) == 130, server.log  # interrupted: not the clean stop of one Ctrl-C
        answer, _ = read_response(upload.sock, 5)
        upload.sock.close()
        assert status_of(answer) == 503 and b'"shutting_down"' in answer, answer  # cut off, told to retry


def test_a_rolling_restart_refuses_no_connection(rel_rule_model: Path) -> None:
    with ServerProcess(rel_rule_model, log_level="info", **WORKERS) as server:
        first = set(server.wait_ready(120).worker_pids)
        server.proc.send_signal(signal.SIGHUP)
        fates = []
        deadline = time.monotonic() + 120
        # Until both replacements have started serving (each worker logs this once its app has started).
        while server.log.count("Application startup complete") < 4:
            assert server.proc.poll() is None and time.monotonic() < deadline, server.log
            fates.append(sh.new_connection_fate(server.url))
        fates += [sh.new_connection_fate(server.url) for _ in range(PROBES)]
        assert set(fates) == {"answered 200"}, (fates, server.log)
        assert server.log.count("Waiting for child process") == 2, server.log  # both restarted
        server.worker_pids.clear()
        assert not set(server.wait_ready(60).worker_pids) & first
        assert server.terminate() == 0, server.log
