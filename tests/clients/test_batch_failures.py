"""`segment` against a server that refuses or goes away: `--retries` reaches the client, a run whose server is gone
stops after `--max-connection-failures` files in a row (exit 2) rather than fail every file left, and an
`--overwrite` run stopped that way resumes without leaving the previous run's files behind."""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from clients.batch import main
from clients.batch_cli import parse_args
from service.client import SegmentClient
from testkit.server import ServerProcess
from tests.clients.test_batch_interrupts import Segment, gated_server, outputs, photos
from tests.service.svc_helpers import LiveServer


@pytest.mark.parametrize(("retries", "status"), [("0", 1), ("4", 0)])
def test_retries_is_the_clients(retries: str, status: int, tiny_onnx_model: Path, tmp_path: Path) -> None:
    """Three files at once against a server with room for two (one run held, a queue of one): those past the run are
    refused 503 with Retry-After 1 (`bulk_overloaded`: the tool's requests are bulk, and the queue's one place is
    kept for interactive ones), and then the server has room again. `--retries 0` gives the file up (the
    client's default, 2, would not); `--retries 4` waits and gets it done."""
    photos(tmp_path / "in", 3)
    with gated_server(tiny_onnx_model, max_queue=1) as (server, gate):
        gate.hold()
        run = Segment(str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--output", "labels", "--server",
                      server.url, "-j", "3", "--retries", retries)
        try:
            gate.wait_arrived(1)
            _wait_refused(server)
            gate.open()  # a retry now succeeds
            assert run.wait(60) == status, run.err
        finally:
            run.kill()
    if retries == "0":  # one refused, or two
        summary = re.search(r"segment: ([12]) written, 0 skipped \(already done\), ([12]) failed, 3 total", run.err)
        assert summary and sum(map(int, summary.groups())) == 3, run.err
        assert re.search(r"  FAILED .*: bulk_overloaded: ", run.err)
    else:
        assert "segment: 3 written, 0 skipped (already done), 0 failed, 3 total" in run.err
        assert len(outputs(tmp_path / "out")) == 3


def _wait_refused(server: LiveServer, timeout: float = 30) -> None:
    """Until the server has answered a /segment with 503."""
    with server.client() as http:
        for _ in range(int(timeout / 0.05)):
            metrics = http.get("/metrics").text
            if re.search(r'segment_requests_total\{[^}]*route="/segment"[^}]*status="503"[^}]*\} [1-9]', metrics):
                return
            time.sleep(0.05)
    raise AssertionError("no 503 from the server")


def _crash_when(server: ServerProcess, done: Callable[[], bool], timeout: float = 60) -> None:
    """Kill the server (SIGKILL, as a crash or an evicted pod goes) once `done()`."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.005)
    server.proc.kill()
    server.proc.wait(30)


def test_a_server_gone_stops_the_run(tiny_onnx_model: Path, tmp_path: Path) -> None:
    """Before: every file left failed, one by one (exit 1, thousands of stderr lines on a big folder)."""
    photos(tmp_path / "in", 150)
    out = tmp_path / "out"
    with ServerProcess(tiny_onnx_model, SEGMENT_WORKERS="1") as server:
        server.wait_ready()
        run = Segment(str(tmp_path / "in"), "--out", str(out), "--output", "labels", "--server", server.url,
                      "-j", "2", "--retries", "0", "--max-connection-failures", "4")
        try:
            _crash_when(server, lambda: out.is_dir() and len(outputs(out)) >= 3)
            assert run.wait(60) == 2, run.err
        finally:
            run.kill()
    assert re.search(rf"segment: stopped after [4-9] files in a row could not reach {server.url}; rerun", run.err)
    summary = re.search(r"segment: (\d+) written, 0 skipped \(already done\), (\d+) failed, 150 total; stopped, "
                        r"(\d+) not done", run.err)
    assert summary, run.err
    written, failed, not_done = map(int, summary.groups())
    assert 4 <= failed <= 8 and not_done == 150 - written - failed and not_done > 100, run.err
    assert len(re.findall(r"  FAILED .*: connection_error: ", run.err)) >= 4
    assert len(outputs(out)) == written


def test_an_overwrite_stopped_by_a_gone_server_resumes_without_the_old_files(tiny_onnx_model: Path,
                                                                             server_url: str, tmp_path: Path) -> None:
    """Run 2 (--overwrite, another --alpha) stops when its server goes away; run 3 resumes without --overwrite.
    Before: run 2's failed and unstarted files kept run 1's overlays, and run 3 skipped them as done."""
    photos(tmp_path / "in", 60)
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    common = [str(tmp_path / "in"), "--output", "overlay", "--format", "png"]
    assert main([*common, "--out", str(out), "--server", server_url, "--alpha", "0.1", "--no-progress"]) == 0
    assert main([*common, "--out", str(fresh), "--server", server_url, "--alpha", "0.9", "--no-progress"]) == 0
    old = outputs(out)

    def some_redone() -> bool:
        return sum(1 for name, data in outputs(out).items() if data != old[name]) >= 3

    with ServerProcess(tiny_onnx_model, SEGMENT_WORKERS="1") as server:  # the same model file as server_url's
        server.wait_ready()
        run = Segment(*common, "--out", str(out), "--server", server.url, "--alpha", "0.9", "--overwrite", "-j", "1",
                      "--retries", "0", "--max-connection-failures", "2")
        try:
            _crash_when(server, some_redone)
            assert run.wait(60) == 2, run.err
        finally:
            run.kill()
    assert main([*common, "--out", str(out), "--server", server_url, "--alpha", "0.9", "--no-progress"]) == 0
    assert outputs(out) == outputs(fresh)


def test_the_readme_gives_the_commands_defaults() -> None:
    readme = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text().split())
    args = parse_args(["in", "--out", "out", "--server", "http://h"])
    assert f"`--retries` (default {args.retries}) is the Python client's `retries`" in readme
    assert args.retries == inspect.signature(SegmentClient).parameters["retries"].default  # the client's own
    assert f"After `--max-connection-failures` (default {args.max_connection_failures}) files in a row" in readme
