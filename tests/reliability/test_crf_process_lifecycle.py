"""The dense CRF's worker processes (service.core.crf.CrfPool) over a `segment-serve` process's life: a worker that
dies fails the refinements in flight with a clear 500 and the next request gets a fresh pool; Ctrl-C's SIGINT,
which a terminal sends to the whole process group, does not end a worker mid-refinement; a graceful stop answers
the refinements in flight (or refuses them 503 `shutting_down` past its timeout) and the process exits without
waiting for a worker; and a server that is killed takes its workers with it.

Real `segment-serve` processes on the demo model, real uploads and signals."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from testkit.procstat import cpu_seconds
from testkit.server import ServerProcess
from tests.reliability.crf_process_helpers import alive, crf_workers, noise_png, wait_for

CRF = {"crf": "true", "output": "stats"}


def _server(**env: str) -> ServerProcess:
    return ServerProcess(None, SEGMENT_INTRA_OP_THREADS="1", log_level="info", **env).wait_ready()


def _post(url: str, seed: int) -> httpx.Response:
    return httpx.post(f"{url}/segment", content=noise_png(seed), params=CRF, timeout=60)


def _refining(pid: int) -> None:
    """Wait until worker `pid` is computing (its CPU time grows), not just started."""
    start = cpu_seconds(pid)
    wait_for(lambda: cpu_seconds(pid) > start + 0.05, 20, f"CRF worker {pid} refining")


def test_a_killed_worker_fails_its_request_and_the_next_gets_a_fresh_pool() -> None:
    with _server(SEGMENT_CRF_PROCESSES="1") as server, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_post, server.url, 1)
        wait_for(lambda: crf_workers(server.pid), 30, "a CRF worker started for the request")
        (worker,) = crf_workers(server.pid)
        os.kill(worker, signal.SIGKILL)  # as the kernel's OOM killer would
        failed = pending.result(60)
        assert failed.status_code == 500, failed.text
        assert failed.json()["error"]["code"] == "internal_error"
        assert "CRF" in failed.json()["error"]["message"] and "died" in failed.json()["error"]["message"]
        answer = _post(server.url, 2)
        assert answer.status_code == 200, answer.text
        assert crf_workers(server.pid) and worker not in crf_workers(server.pid)
        assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200


def test_sigint_does_not_end_a_worker_mid_refinement() -> None:
    with _server(SEGMENT_CRF_PROCESSES="1") as server, ThreadPoolExecutor(1) as pool:
        assert _post(server.url, 1).status_code == 200  # the worker is up
        (worker,) = crf_workers(server.pid)
        pending = pool.submit(_post, server.url, 2)
        _refining(worker)
        os.kill(worker, signal.SIGINT)  # what Ctrl-C sends every process of the terminal's foreground group
        answer = pending.result(60)
        assert answer.status_code == 200, answer.text
        assert crf_workers(server.pid) == [worker] and alive(worker)


def test_sigterm_answers_the_refinements_in_flight_then_exits_with_its_workers() -> None:
    server = _server(SEGMENT_CRF_PROCESSES="2")
    with server, ThreadPoolExecutor(4) as pool:
        assert _post(server.url, 0).status_code == 200
        pending = [pool.submit(_post, server.url, seed) for seed in range(1, 5)]
        wait_for(lambda: len(crf_workers(server.pid)) == 2, 30, "both CRF workers started")
        workers = crf_workers(server.pid)
        _refining(workers[0])
        server.proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        answers = [p.result(60) for p in pending]
        assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
        server.proc.wait(30)
        assert time.monotonic() - stopped < 15, server.log
        assert server.proc.returncode in (0, -signal.SIGTERM), server.log
        assert "drained and stopped" in server.log
        wait_for(lambda: not any(alive(pid) for pid in workers), 10, "the CRF workers ended")


def test_a_refinement_past_the_shutdown_timeout_is_refused_and_the_process_exits() -> None:
    # One process, three refinements of ~0.5 s each queued on it, and 1 s to drain: the last cannot finish.
    server = _server(SEGMENT_CRF_PROCESSES="1", SEGMENT_SHUTDOWN_TIMEOUT_S="1")
    with server, ThreadPoolExecutor(2) as pool:
        assert _post(server.url, 0).status_code == 200
        (worker,) = crf_workers(server.pid)
        pending = [pool.submit(_post, server.url, seed) for seed in (1, 2)]
        _refining(worker)
        server.proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        answers = [p.result(60) for p in pending]
        for answer in answers:
            assert answer.status_code == 200 or (answer.status_code == 503 and answer.json()["error"]["code"]
                                                 == "shutting_down" and "Retry-After" in answer.headers), answer.text
        server.proc.wait(30)
        # The graceful second, then the lifespan's end: no wait for the refinement nobody reads any more.
        assert time.monotonic() - stopped < 10, server.log
        wait_for(lambda: not alive(worker), 10, "the CRF worker ended")


def test_a_killed_server_takes_its_crf_workers_with_it() -> None:
    with _server(SEGMENT_CRF_PROCESSES="1") as server:
        assert _post(server.url, 0).status_code == 200
        (worker,) = crf_workers(server.pid)
        server.proc.kill()  # SIGKILL: no lifespan shutdown runs
        server.proc.wait(30)
        # Nothing else ends a worker waiting for work: it would be left behind, holding its memory, for ever.
        wait_for(lambda: not alive(worker), 10, "the orphaned CRF worker ended")
