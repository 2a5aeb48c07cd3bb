"""`SEGMENT_WORKERS`: several real `segment-serve` worker processes on one port, under uvicorn's supervisor."""

from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.worker_shared import shared_parent
from testkit.metrics import samples
from testkit.procstat import cpu_seconds, descendants, tree_cpu_seconds
from testkit.server import ServerProcess
from tests.service.svc_helpers import png_bytes, scene
from tests.service.worker_helpers import WORKERS, ready_pids, replacements, segment, worker_environ


@pytest.fixture
def upload() -> tuple[bytes, np.ndarray]:
    image = scene(120, 80)
    return png_bytes(image), image


def test_workers_answer_on_one_port_and_every_scrape_counts_all_of_them(rule_model: Path, upload) -> None:
    body, _ = upload
    with ServerProcess(rule_model, SEGMENT_WORKERS=str(WORKERS), SEGMENT_INTRA_OP_THREADS="1",
                       SEGMENT_WORKER_THREADS="2") as server:
        pids = ready_pids(server)
        assert server.pid not in pids  # the supervisor itself serves nothing
        assert pids <= set(descendants(server.pid))  # what the benchmarks count as the server's CPU
        answers = [segment(server.url, body) for _ in range(12)]  # each on a new connection
        assert [r.status_code for r in answers] == [200] * 12
        assert all(r.content == answers[0].content for r in answers)  # the same model in every worker
        # Scrapes land on either worker; each must count the requests of both.
        for _ in range(6):
            text = httpx.get(f"{server.url}/metrics", timeout=10).text
            requests = samples(text, "segment_requests_total")
            assert requests[(("route", "/segment"), ("status", "200"))] == 12
            assert samples(text, "segment_batch_size_count")[()] == 12
            model = samples(text, "segment_model_info")
            assert list(model.values()) == [1.0]  # one model, not one per worker
            assert samples(text, "segment_queue_depth")[()] == 0
        # Each worker's protocol carries the head limit and counts its refusals where every scrape sees them.
        for _ in range(2):
            refused = httpx.get(f"{server.url}/healthz", headers={"X-Big": "x" * 20_000}, timeout=10)
            assert refused.status_code == 431 and refused.json()["error"]["code"] == "headers_too_large"
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        assert samples(text, "segment_rejected_total")[(("reason", "headers_too_large"),)] == 2
        # A result fetched again on new connections, whichever worker each lands on.
        first = segment(server.url, body)
        for _ in range(8):
            again = httpx.get(f"{server.url}/results/{first.headers['X-Result-ID']}/labels.png", timeout=10)
            assert again.status_code == 200 and again.content == first.content
        assert tree_cpu_seconds(server.pid) >= sum(cpu_seconds(pid) for pid in pids) > cpu_seconds(server.pid)
        assert pids <= set(descendants(server.pid))  # the same workers throughout: health pings answered
        assert server.terminate() == 0
    for pid in pids:  # the workers went with it
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_a_worker_that_dies_is_replaced_while_the_other_keeps_serving(rule_model: Path, upload) -> None:
    body, image = upload
    with ServerProcess(rule_model, SEGMENT_WORKERS=str(WORKERS), SEGMENT_INTRA_OP_THREADS="1",
                       SEGMENT_WORKER_THREADS="2") as server:
        first = ready_pids(server)
        expected = segment(server.url, body).content
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        # The survivor answers throughout; the supervisor starts a replacement.
        deadline = time.monotonic() + 30  # the health check's timeout is 60 s: not what notices a death
        replaced: set[int] = set()
        while time.monotonic() < deadline and not replaced:
            r = segment(server.url, body)
            assert r.status_code == 200, r.text
            assert np.asarray(Image.open(io.BytesIO(r.content))).shape == image.shape[:2]
            assert r.content == expected
            ready = httpx.get(f"{server.url}/readyz", timeout=5)
            if ready.status_code == 200:
                replaced = {ready.json()["pid"]} - first
        assert replaced, "no replacement worker answered"
        assert victim not in ready_pids(server)
        assert server.terminate() == 0


def test_the_results_of_workers_that_die_are_adopted_by_their_replacements(rule_model: Path, upload) -> None:
    """A worker's files are its slot's: when both workers die, each replacement takes a slot and adopts its
    files, which stay readable (and within the bound, each replacement now evicting them)."""
    body, _ = upload
    with ServerProcess(rule_model, SEGMENT_WORKERS=str(WORKERS), SEGMENT_INTRA_OP_THREADS="1",
                       SEGMENT_WORKER_THREADS="2") as server:
        first = ready_pids(server)
        results = Path(worker_environ(min(first))["SEGMENT_RESULTS_DIR"])
        ids = [segment(server.url, body).headers["X-Result-ID"] for _ in range(6)]
        assert len([p for p in results.rglob("*") if p.is_file()]) == 6
        for pid in first:  # both: whichever stored which, every one of these results has lost its owner
            os.kill(pid, signal.SIGKILL)
        replacements(server, first)
        assert len([p for p in results.rglob("*") if p.is_file()]) == 6
        assert {p.name for p in results.iterdir()} <= {"slot-0", "slot-1"}
        for rid in ids:
            assert httpx.get(f"{server.url}/results/{rid}/labels.png", timeout=10).status_code == 200
        again = segment(server.url, body).headers["X-Result-ID"]  # the replacements store and read as before
        assert httpx.get(f"{server.url}/results/{again}/labels.png", timeout=10).status_code == 200
        assert server.terminate() == 0


def test_a_worker_that_cannot_start_stops_the_server(tmp_path: Path) -> None:
    missing = tmp_path / "missing.onnx"
    with ServerProcess(missing, SEGMENT_WORKERS=str(WORKERS), log_level="info") as server:
        # No endless restarts of a worker that fails the same way each time, and no wait for the health check's
        # timeout (60 s) when a worker exits while the supervisor awaits its answer to a ping.
        code = server.proc.wait(30)
        server._reader.join(5)
        log = "".join(server.lines)
    assert code == 3, log
    assert "cannot start" in log


def test_workers_must_be_at_least_one(rule_model: Path) -> None:
    with ServerProcess(rule_model, SEGMENT_WORKERS="0") as server:
        assert server.proc.wait(60) == 3
        server._reader.join(5)
    assert any("SEGMENT_WORKERS" in line for line in server.lines)


def test_shared_files_go_to_memory_only_where_it_has_room() -> None:
    shm = Path("/dev/shm")
    if os.access(shm, os.W_OK):
        assert shared_parent(0) == str(shm)
    assert shared_parent(1 << 62) is None  # no room: the temporary directory
