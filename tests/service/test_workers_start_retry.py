"""A replacement worker that fails at startup (here: the model file became unreadable after the server started)
while other workers serve: they go on serving, the replacement is tried again with a growing delay, each failure
is logged and reported (`/readyz` `workers`, `segment_workers_*`), and it comes up once the fault is gone. With no
worker left running the server stops, exit status 3."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import httpx

from testkit.metrics import samples
from testkit.server import ServerProcess
from tests.service.svc_helpers import png_bytes, scene
from tests.service.worker_checks import OPTIONS, census, segment_ok, serve_until, wait_for, worker_pids


def test_a_replacement_that_fails_at_startup_is_retried_while_the_others_serve(rule_model: Path,
                                                                               tmp_path: Path) -> None:
    model, away = tmp_path / "model.onnx", tmp_path / "away.onnx"
    shutil.copy(rule_model, model)
    body = png_bytes(scene(120, 80))
    with ServerProcess(model, log_level="info", **OPTIONS) as server:
        first = set(server.wait_ready(120).worker_pids)
        assert census(server) == {"configured": 2, "live": 2, "retrying": 0, "start_failures": 0, "early_crashes": 0}
        expected = httpx.post(f"{server.url}/segment", params={"output": "labels"}, content=body,
                              headers={"content-type": "image/png"}, timeout=30).content
        model.rename(away)  # every start from now on fails: "model not found"
        victim = min(first)
        os.kill(victim, signal.SIGKILL)

        # The survivor answers throughout; the replacement fails, is logged and reported, and is tried again.
        seen = serve_until(server, body, expected, lambda c: c["start_failures"] >= 2, "no second try")
        assert any(c["live"] == 1 and c["retrying"] == 1 for c in seen), seen  # the shortfall, while it waits
        assert all(c["configured"] == 2 for c in seen)
        assert "failed at startup" in seen[-1]["last_start_failure"]
        assert server.log.count("failed at startup") >= 2 and "not found" in server.log, server.log
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        assert samples(text, "segment_workers_configured")[()] == 2
        assert samples(text, "segment_worker_start_failures_total")[()] >= 2
        assert samples(text, "segment_workers_live")[()] in (1, 2)  # 2 while a try is starting

        away.rename(model)  # the fault is gone: the next try comes up
        serve_until(server, body, expected, lambda c: "started after" in server.log, "no recovery", timeout=90)
        after = census(server)
        assert (after["live"], after["retrying"]) == (2, 0) and after["start_failures"] >= 2, after
        server.worker_pids.clear()
        now = set(server.wait_ready(60).worker_pids)
        assert victim not in now and len(now) == 2 and len(now & first) == 1, (first, now)
        segment_ok(server, body, expected)

        # With no worker left running, and every replacement failing, the server stops: exit status 3.
        model.rename(away)
        for pid in worker_pids(server):
            os.kill(pid, signal.SIGKILL)
        assert server.proc.wait(60) == 3, server.log
        server._reader.join(5)
    assert "no worker is left running" in server.log, server.log


def test_a_server_told_to_stop_while_a_replacement_waits_for_its_next_try_exits_0(rule_model: Path,
                                                                                  tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    shutil.copy(rule_model, model)
    body = png_bytes(scene(120, 80))
    with ServerProcess(model, **OPTIONS) as server:
        first = set(server.wait_ready(120).worker_pids)
        expected = httpx.post(f"{server.url}/segment", params={"output": "labels"}, content=body,
                              headers={"content-type": "image/png"}, timeout=30).content
        assert expected
        model.unlink()
        os.kill(min(first), signal.SIGKILL)
        serve_until(server, body, expected, lambda c: c["retrying"] == 1, "no failed start")
        assert server.terminate() == 0, server.log  # a stop asked for, not a failure


def test_a_restart_whose_replacement_fails_waits_there_and_goes_on_once_it_starts(rule_model: Path,
                                                                                   tmp_path: Path) -> None:
    """SIGHUP restarts the workers one at a time: where the first replacement cannot start, the workers not yet
    restarted go on serving, and the replacement is tried again until it starts; then the restart goes on, so that
    no worker is left serving the model as it was before the SIGHUP."""
    model, away = tmp_path / "model.onnx", tmp_path / "away.onnx"
    shutil.copy(rule_model, model)
    body = png_bytes(scene(120, 80))
    with ServerProcess(model, log_level="info", **OPTIONS) as server:
        first = set(server.wait_ready(120).worker_pids)
        expected = httpx.post(f"{server.url}/segment", params={"output": "labels"}, content=body,
                              headers={"content-type": "image/png"}, timeout=30).content
        model.rename(away)
        server.proc.send_signal(signal.SIGHUP)  # at once: before the supervisor's own round has seen them ready
        serve_until(server, body, expected, lambda c: c["start_failures"] >= 1, "no failed start")
        assert "failed at startup; the restart waits there (1 workers not yet restarted" in server.log, server.log
        assert len(worker_pids(server) & first) == 1  # the other was not restarted
        away.rename(model)
        serve_until(server, body, expected, lambda c: "started after" in server.log, "no recovery", timeout=90)
        wait_for(lambda: "the restart goes on: 1 workers not yet restarted" in server.log
                 and not worker_pids(server) & first and len(worker_pids(server)) == 2, "the restart did not go on",
                 server, timeout=90)
        server.worker_pids.clear()
        assert not set(server.wait_ready(60).worker_pids) & first
        segment_ok(server, body, expected)
        assert server.terminate() == 0, server.log
