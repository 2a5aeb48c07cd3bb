"""Workers of one server on two different model files (the file swapped, then a worker replaced without a restart of
the others): the server keeps answering, and every view of it says which file each answer came from, so that the
mix is seen and alerted on (`SegmentMixedModels`) rather than silent."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import time
from pathlib import Path

import httpx

from testkit.metrics import samples
from testkit.server import ServerProcess
from tests.service.svc_helpers import make_rule_model, png_bytes, scene
from tests.service.worker_helpers import ready_pids, replacements, segment


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def readyz_by_pid(url: str, count: int, timeout: float = 30) -> dict[int, dict]:
    """/readyz bodies of `count` different workers, each asked on a new connection (the kernel picks a worker)."""
    found: dict[int, dict] = {}
    deadline = time.monotonic() + timeout
    while len(found) < count:
        assert time.monotonic() < deadline, found
        with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=10) as client:
            body = client.get(f"{url}/readyz").json()
        found[body["pid"]] = body
    return found


def test_workers_on_two_model_files_show_both_in_readiness_metrics_and_answers(tmp_path: Path) -> None:
    first = make_rule_model(tmp_path / "first.onnx", input_size=96)
    second = make_rule_model(tmp_path / "second.onnx", input_size=64)
    model = tmp_path / "model.onnx"
    shutil.copyfile(first, model)
    with ServerProcess(model, SEGMENT_WORKERS="2", SEGMENT_INTRA_OP_THREADS="1", SEGMENT_WORKER_THREADS="2") as server:
        old = ready_pids(server)
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        assert {dict(k)["sha256"] for k in samples(text, "segment_model_info")} == {sha256(first)}

        os.replace(shutil.copyfile(second, tmp_path / "next.onnx"), model)  # swapped, no SIGHUP
        killed = min(old)
        os.kill(killed, signal.SIGKILL)
        pids = replacements(server, {killed})
        (replacement,) = pids - old

        ready = readyz_by_pid(server.url, 2)
        assert ready[replacement]["model_sha256"] == sha256(second)
        assert ready[(pids - {replacement}).pop()]["model_sha256"] == sha256(first)
        for _ in range(3):  # any worker answers a scrape for all of them
            text = httpx.get(f"{server.url}/metrics", timeout=10).text
            info = {dict(k)["sha256"]: v for k, v in samples(text, "segment_model_info").items()}
            assert info == {sha256(first): 1.0, sha256(second): 1.0}, text
        headers: set[str] = set()
        body = png_bytes(scene(120, 80))
        for _ in range(100):  # each on a new connection, until both workers have answered
            r = segment(server.url, body)
            assert r.status_code == 200, r.text
            headers.add(r.headers["x-model-sha256"])
            if len(headers) == 2:
                break
        assert headers == {sha256(first), sha256(second)}
