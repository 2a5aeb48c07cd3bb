"""Under the supervisor a worker takes connections only once it is warm (real `segment-serve` workers whose
warm-up takes seconds, as a GPU's many buckets do): a replacement used to take its share of the connections as
soon as its model was loaded and answer each 503 `not_ready` until warm, although its sibling had room."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from testkit.server import ServerProcess, site_pythonpath
from tests.service.svc_helpers import png_bytes, scene

WARM_UP_S = 3.0


def test_a_replacement_takes_no_connection_before_it_is_warm(rule_model: Path) -> None:
    body = png_bytes(scene(120, 80))
    slow = site_pythonpath("slow_warm_up")
    with ServerProcess(rule_model, SEGMENT_WORKERS="2", SEGMENT_INTRA_OP_THREADS="1", SEGMENT_WORKER_THREADS="2",
                       PYTHONPATH=slow, TESTKIT_WARM_UP_S=str(WARM_UP_S)) as server:
        first = set(server.wait_ready(120).worker_pids)  # both workers ready
        os.kill(min(first), signal.SIGKILL)
        answers: list[tuple[int, str]] = []
        replaced: set[int] = set()
        deadline = time.monotonic() + 60
        while not replaced:  # through the replacement's whole warm-up, and until it answers
            assert time.monotonic() < deadline, (answers[-5:], server.log)
            r = httpx.post(f"{server.url}/segment", content=body, headers={"Content-Type": "image/png"}, timeout=30)
            answers.append((r.status_code, r.text[:120] if r.status_code != 200 else ""))
            ready = httpx.get(f"{server.url}/readyz", timeout=10)
            if ready.status_code == 200:
                replaced = {ready.json()["pid"]} - first
        assert len(answers) >= 10  # the survivor served throughout the replacement's warm-up
        assert [a for a in answers if a[0] != 200] == []
        assert server.terminate() == 0
