"""`POST /segment?timeout_s=`: a request's own deadline (Triton's per-request timeout). Passed, the answer is 504
`deadline_exceeded` at once and the image leaves the queue unrun; it is never longer than the server's request
timeout, and a client's short budget never makes a slow device look hung. Real uvicorn servers whose model runs
wait on a gate."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.client import SegmentClient
from service.client_types import SegmentApiError
from service.core.decode_budget import DECODE_BUDGET
from tests.service.gated_server import GatedServer
from tests.service.svc_helpers import png_bytes, scene

BODY = png_bytes(scene(96, 64))


def post(url: str, **params: object) -> httpx.Response:
    return httpx.post(f"{url}/segment", params={"output": "stats", **params}, content=BODY, timeout=60)


def images_run(gated: GatedServer) -> int:
    return sum(gated.runs)


def hold_one_run(gated: GatedServer) -> Future[httpx.Response]:
    """Close the gate and start a request without a deadline, whose run then holds the only inference slot; its
    answer, once the gate opens."""
    gated.gate.clear()
    before = len(gated.runs)
    holder: Future[httpx.Response] = Future()
    threading.Thread(target=lambda: holder.set_result(post(gated.live.url)), daemon=True).start()
    deadline = time.monotonic() + 10
    while gated.metric("segment_batches_in_flight") < 1:  # its run started, and waits at the gate
        assert time.monotonic() < deadline and len(gated.runs) == before
        time.sleep(0.01)
    return holder


@pytest.fixture
def gated(rule_model: Path):
    server = GatedServer(rule_model, max_batch_size=1, concurrent_batches=1, max_wait_ms=1, request_timeout_s=30)
    with server.running():
        yield server


def test_a_passed_deadline_answers_504_at_once_and_its_image_is_never_run(gated: GatedServer) -> None:
    holder = hold_one_run(gated)
    run_before = images_run(gated)
    started = time.monotonic()
    r = post(gated.live.url, timeout_s=0.3)
    took = time.monotonic() - started
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded", r.text
    assert 0.25 <= took < 3, took  # its own deadline, not the server's 30 s
    assert gated.metric("segment_queue_depth") == 0  # out of the line at once
    gated.gate.set()
    assert holder.result(30).status_code == 200
    time.sleep(0.3)
    assert images_run(gated) == run_before + 1  # the held run only (counted as the gate opened): never the late one
    assert gated.metric("segment_requests_total", route="/segment", status="504") == 1
    assert gated.metric("segment_rejected_total", reason="deadline_exceeded") == 1  # told apart from `timeout`
    assert gated.metric("segment_rejected_total", reason="timeout") == 0


def test_a_deadline_longer_than_the_servers_timeout_is_cut_to_it(rule_model: Path) -> None:
    server = GatedServer(rule_model, max_batch_size=1, concurrent_batches=1, max_wait_ms=1, request_timeout_s=0.5)
    with server.running():
        hold_one_run(server)
        started = time.monotonic()
        r = post(server.live.url, timeout_s=100)
        took = time.monotonic() - started
    assert r.status_code == 504 and took < 5, (r.text, took)
    assert r.json()["error"]["code"] == "timeout"  # the server's own timeout passed, not one the client chose


def test_a_client_deadline_shorter_than_a_run_is_no_hung_device(gated: GatedServer) -> None:
    """The run outlives the client's 0.2 s by far: the server is busy, not stalled (a hung device is judged by the
    server's own request timeout)."""
    gated.gate.clear()
    r = post(gated.live.url, timeout_s=0.2)  # its run starts and waits at the gate
    assert r.status_code == 504, r.text
    time.sleep(0.5)
    ready = httpx.get(f"{gated.live.url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["status"] == "ok", ready.text
    assert post(gated.live.url, timeout_s=0.2).status_code == 504  # still queued, not refused as unavailable
    gated.gate.set()
    assert post(gated.live.url, timeout_s=5).status_code == 200


def test_the_client_sends_the_deadline_and_does_not_retry_its_504(gated: GatedServer) -> None:
    hold_one_run(gated)
    with SegmentClient(gated.live.url, retries=3) as client, pytest.raises(SegmentApiError) as raised:
        client.segment(BODY, "stats", timeout_s=0.2)
    assert raised.value.status == 504 and raised.value.code == "deadline_exceeded"
    gated.gate.set()
    assert gated.metric("segment_requests_total", route="/segment", status="504") == 1  # sent once


def test_a_deadline_that_passes_before_or_during_the_decode_is_not_queued(gated: GatedServer) -> None:
    big = png_bytes(np.random.default_rng(0).integers(0, 255, (1500, 2000, 3), dtype=np.uint8))
    runs = len(gated.runs)
    # A microsecond has passed by the time a codec thread has read the header: no pixel is decoded.
    r = httpx.post(f"{gated.live.url}/segment", params={"timeout_s": 1e-6}, content=big, timeout=60)
    assert r.status_code == 504 and "before its image was decoded" in r.json()["error"]["message"], r.text
    assert r.json()["error"]["code"] == "deadline_exceeded"
    assert len(gated.runs) == runs


def test_the_document_names_both_504_codes(gated: GatedServer) -> None:
    spec = httpx.get(f"{gated.live.url}/openapi.json", timeout=10).json()
    description = spec["paths"]["/segment"]["post"]["responses"]["504"]["description"]
    assert "`timeout`" in description and "`deadline_exceeded`" in description, description


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "3601", "soon"])
def test_a_deadline_that_is_no_positive_number_is_422(gated: GatedServer, value: str) -> None:
    r = post(gated.live.url, timeout_s=value)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", r.text
    assert "timeout_s" in r.text


def test_deadlines_passing_are_logged_as_shedding_is_not_a_line_each(rule_model: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A client's own deadline is no fault: its 504s get one warning, then one every 10 s with the count, rather
    than a line each as the server's own timeouts do."""
    caplog.set_level(logging.WARNING, logger="service.app")
    server = GatedServer(rule_model, max_batch_size=1, concurrent_batches=1, max_wait_ms=1, request_timeout_s=30)
    with server.running():
        hold_one_run(server)
        answers = [post(server.live.url, timeout_s=0.05) for _ in range(5)]
    assert [r.json()["error"]["code"] for r in answers] == ["deadline_exceeded"] * 5
    logged = [r.getMessage() for r in caplog.records if ": deadline_exceeded " in r.getMessage()]
    assert len(logged) == 1, logged


def test_a_wait_for_decode_memory_ends_with_the_deadline(gated: GatedServer) -> None:
    """The decode memory budget is taken (as by large decodes in flight): a request with a deadline waits for room
    only until its deadline, then answers 504 `deadline_exceeded`, not 503 after the budget's own 30 s."""
    runs = len(gated.runs)
    with DECODE_BUDGET.reserve(DECODE_BUDGET.capacity):  # every byte of it, for as long as the request waits
        started = time.monotonic()
        r = post(gated.live.url, timeout_s=0.5)
        took = time.monotonic() - started
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded", r.text
    assert 0.4 < took < 5, took
    assert len(gated.runs) == runs  # never decoded, never run
    assert post(gated.live.url, timeout_s=5).status_code == 200  # room again: served
