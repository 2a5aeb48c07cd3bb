"""A process whose device failed or hung stops itself (SEGMENT_EXIT_WHEN_UNHEALTHY, the default), so that a
restart policy, the worker supervisor or an orchestrator starts a fresh one with a fresh device context:

- failing runs: after SEGMENT_INFERENCE_UNHEALTHY_AFTER_S of failing, the graceful stop a SIGTERM gives (uvicorn
  then ends the process by that signal, as on any SIGTERM);
- a hung run: the same, although the run never returns (the drain does not wait for it without end);
- a warm-up that keeps failing: the same, rather than unready for ever;
- a graceful stop that cannot finish: exit status 4 after the bound.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx

from service.settings import default_model_path
from testkit.server import ServerProcess
from tests.reliability.device_helpers import mended
from tests.service.svc_helpers import make_rule_model, png_bytes, scene

UNHEALTHY_AFTER_S = 1.0


def failing_server(tmp_path: Path, flag: Path, **env: str) -> ServerProcess:
    return ServerProcess(make_rule_model(tmp_path / "rule.onnx"),
                         command=[sys.executable, "-m", "testkit.failing_device", "--flag", str(flag)],
                         SEGMENT_INTRA_OP_THREADS="1", SEGMENT_INFERENCE_FAILURES_TO_UNREADY="2",
                         SEGMENT_INFERENCE_PROBE_S="0.2", SEGMENT_INFERENCE_UNHEALTHY_AFTER_S=str(UNHEALTHY_AFTER_S),
                         SEGMENT_SHUTDOWN_TIMEOUT_S="2", **env)


def test_a_failing_device_stops_the_process_gracefully(tmp_path: Path) -> None:
    flag = tmp_path / "device-broken"
    with failing_server(tmp_path, flag) as server, mended(flag):
        server.wait_ready()
        flag.touch()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            statuses = [client.post("/segment", content=png_bytes(scene(96, 64))).status_code for _ in range(3)]
        assert statuses == [503, 503, 503]
        failing = time.monotonic()
        status = server.proc.wait(timeout=UNHEALTHY_AFTER_S + 15)
        assert time.monotonic() - failing >= UNHEALTHY_AFTER_S - 0.3
    assert status == -signal.SIGTERM, server.log  # uvicorn's graceful stop, not the hard exit (4)
    assert "inference_failing: model runs failed for 1s" in server.log and "CUDA failure 700" in server.log


def test_a_hung_device_stops_the_process_although_the_run_never_returns(tmp_path: Path) -> None:
    flag = tmp_path / "device-hung"
    with failing_server(tmp_path, flag, SEGMENT_REQUEST_TIMEOUT_S="0.5") as server, mended(flag):
        server.wait_ready()
        flag.write_text("hang")
        r = httpx.post(f"{server.url}/segment", content=png_bytes(scene(96, 64)), timeout=30)
        assert r.status_code == 504
        # Unhealthy after 1 s, then the graceful stop: the drain waits for the hung run only up to its timeout.
        status = server.proc.wait(timeout=UNHEALTHY_AFTER_S + 2 + 0.5 + 10)
    assert status == -signal.SIGTERM, server.log
    assert "inference_stuck: model runs hung for 1s" in server.log, server.log


def test_a_warm_up_that_keeps_failing_stops_the_process(tmp_path: Path) -> None:
    flag = tmp_path / "device-broken"
    flag.touch()
    with failing_server(tmp_path, flag) as server, mended(flag):
        # 2 failed warm-ups (0.2 s apart) make it failing, 1 s more unhealthy.
        status = server.proc.wait(timeout=60)
    assert status == -signal.SIGTERM, server.log
    assert "warm-up failed" in server.log and "inference_failing: model runs failed for 1s" in server.log


def test_a_graceful_stop_that_cannot_finish_ends_in_exit_status_4() -> None:
    """The last resort, in a process that ignores SIGTERM: it still exits, with status 4, after the bound."""
    script = textwrap.dedent("""
        import asyncio, logging, signal
        from service.inference_guard import InferenceHealth
        from service.watchdog import stop_when_unhealthy
        logging.basicConfig(level=logging.INFO)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        health = InferenceHealth(failures_to_unready=1, unhealthy_after_s=0.1)
        health.probe_failed("CUDA failure 700")

        async def main():
            await stop_when_unhealthy(health, graceful_s=0.2, margin_s=0.3)
            await asyncio.sleep(30)  # the graceful stop never comes

        asyncio.run(main())
    """)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 4, done.stderr
    assert 0.5 <= time.monotonic() - started < 20
    assert "the graceful stop did not finish in time" in done.stderr, done.stderr


def test_a_worker_whose_model_runs_fail_is_replaced_by_the_supervisor(tmp_path: Path) -> None:
    """With SEGMENT_WORKERS, a worker that stops itself is one that dies: the supervisor starts a fresh one. A model
    whose every run fails fails each worker's warm-up, so each worker stops itself
    once unhealthy, and is replaced, again and again, without a single request."""
    broken = make_rule_model(tmp_path / "broken.onnx", input_size=64, fails_every_run=True)
    with ServerProcess(broken, SEGMENT_WORKERS="2", SEGMENT_INTRA_OP_THREADS="1", SEGMENT_INFERENCE_PROBE_S="0.2",
                       SEGMENT_INFERENCE_UNHEALTHY_AFTER_S=str(UNHEALTHY_AFTER_S), log_level="info") as server:
        deadline = time.monotonic() + 60

        def replaced_three_times() -> bool:
            # A replacement logs its start about a second after the death it answers (it imports the app), so
            # the third death can be seen before the replacements are: wait for all of them, not for the deaths.
            return (server.log.count("stopping, so that a new process") >= 3 and server.log.count("died") >= 3
                    and server.log.count("Started server process") >= 2 + 3)  # the two first workers, 3 replacements

        while not replaced_three_times():
            assert time.monotonic() < deadline and server.proc.poll() is None, server.log
            time.sleep(0.2)
        assert server.terminate() == 0, server.log  # the supervisor itself was never the one to go


def test_a_run_at_startup_longer_than_the_setting_names_the_setting() -> None:
    """A run in flight for SEGMENT_INFERENCE_UNHEALTHY_AFTER_S before the process was ever warm: a hung device, or a
    setting below this model's run time (here: 1 ms, below any run of the demo model). The process stops either
    way, and the log names the setting to raise."""
    with ServerProcess(default_model_path(), SEGMENT_INFERENCE_UNHEALTHY_AFTER_S="0.001",
                       SEGMENT_SHUTDOWN_TIMEOUT_S="2") as server:
        status = server.proc.wait(timeout=60)
    assert status in (-signal.SIGTERM, 4), server.log
    assert ("inference_stuck: a startup model run has been in flight for" in server.log
            and "longer than SEGMENT_INFERENCE_UNHEALTHY_AFTER_S=0.001s" in server.log
            and "then raise it" in server.log), server.log
