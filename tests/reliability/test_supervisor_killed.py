"""With several workers (`SEGMENT_WORKERS`), a supervisor killed outright (SIGKILL, the OOM killer) cannot stop its
workers: they must stop by themselves, as on SIGTERM (what they have in flight answered, then gone, their CRF
processes with them), so that the port is free for the next start.

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


def _post(url: str, image: bytes) -> httpx.Response:
    """A `crf=true` upload on a connection of its own (the kernel hands each new connection to any worker)."""
    return httpx.post(f"{url}/segment", content=image, params=CRF, timeout=60)


def _crf_pools(url: str, workers: set[int]) -> dict[int, list[int]]:
    """Start a CRF process in every worker (small `crf=true` uploads until each has one): worker -> its CRF pids."""
    deadline = time.monotonic() + 60
    while True:
        assert _post(url, noise_png(0, 96, 64)).status_code == 200
        pools = {worker: crf_workers(worker) for worker in workers}
        if all(pools.values()):
            return pools
        assert time.monotonic() < deadline, f"not every worker started a CRF process: {pools}"


def _crf_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids if alive(pid))


def test_the_workers_of_a_killed_supervisor_drain_stop_with_their_crf_processes_and_free_the_port() -> None:
    """SIGKILL to the supervisor of two ready workers, a dense CRF in flight: the request is answered, both workers
    and their CRF processes are gone within seconds (the workers used to be re-parented to PID 1 and serve on for
    ever), and a new server on the same port starts and answers."""
    server = ServerProcess(None, SEGMENT_WORKERS="2", SEGMENT_INTRA_OP_THREADS="1", SEGMENT_CRF_PROCESSES="1",
                           log_level="info")
    with server, ThreadPoolExecutor(1) as pool:
        server.wait_ready()
        workers = set(server.worker_pids)
        assert len(workers) == 2 and server.pid not in workers
        crf = [pid for pids in _crf_pools(server.url, workers).values() for pid in pids]
        everyone = workers | set(crf)
        start = _crf_cpu(crf)
        pending = pool.submit(_post, server.url, noise_png(1))  # ~0.5 s of dense CRF
        wait_for(lambda: _crf_cpu(crf) > start + 0.05, 20, "a CRF process refining the upload")
        os.kill(server.pid, signal.SIGKILL)
        server.proc.wait(timeout=10)
        try:
            answer = pending.result(60)
            assert answer.status_code == 200, answer.text  # drained, as on SIGTERM, not cut off
            wait_for(lambda: not any(map(alive, everyone)), 20,
                     f"the killed supervisor's processes gone ({[pid for pid in everyone if alive(pid)]} left)")
        finally:  # a failure leaves no orphan serving on the machine
            for pid in filter(alive, everyone):
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
