"""The client against the API's parameters and answers: `crf` reaches the server; waiting for readiness keeps its
deadline against a server that accepts connections but never answers; a Retry-After is never cut short."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from clients.batch import main as batch_main
from service.client import AsyncSegmentClient, SegmentApiError, SegmentClient, SegmentConnectionError
from service.client_wire import request_body
from testkit.http_stub import QuietHandler, serving
from tests.clients.conftest import write_photos
from tests.service.svc_helpers import make_rule_model, running_server


@pytest.fixture(scope="module")
def rule_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real server on the rule model, whose boundaries the CRF moves (on the tiny random model, which answers
    one class everywhere, it changes nothing)."""
    with running_server(make_rule_model(tmp_path_factory.mktemp("rule") / "rule.onnx")) as url:
        yield url


def test_crf_reaches_the_server(rule_url: str, astronaut: np.ndarray) -> None:
    """`crf=True` is the API's `crf=true`: the answer of asking over HTTP directly (or the same 501 on a server
    without the CRF extra), and not the plain answer."""
    server_url = rule_url
    body, media = request_body(astronaut)
    direct = httpx.post(f"{server_url}/segment", params={"output": "labels", "crf": "true"}, content=body,
                        headers={"Content-Type": media}, timeout=60)
    with SegmentClient(server_url) as client:
        if direct.status_code == 501:  # a server without the CRF extra: the client says so, with the code
            with pytest.raises(SegmentApiError) as info:
                client.segment(astronaut, "labels", crf=True)
            assert (info.value.status, info.value.code) == (501, "crf_unavailable")
            return
        assert direct.status_code == 200, direct.text
        refined = client.segment(astronaut, "labels", crf=True).array()
        plain = client.segment(astronaut, "labels", crf=False).array()
        np.testing.assert_array_equal(client.segment(astronaut, "labels").array(), plain)

    async def refined_async() -> np.ndarray:
        async with AsyncSegmentClient(server_url) as client:
            return (await client.segment(astronaut, "labels", crf=True)).array()

    expected = np.asarray(Image.open(io.BytesIO(direct.content)))
    np.testing.assert_array_equal(refined, expected)
    np.testing.assert_array_equal(asyncio.run(refined_async()), expected)
    assert (refined != plain).any(), "the CRF changed nothing on this image: the check would be vacuous"


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A real listening socket that accepts connections and never answers (a hung server)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


def test_wait_ready_keeps_its_deadline_against_a_silent_server(silent_server: str) -> None:
    with SegmentClient(silent_server, timeout=20) as client:
        started = time.monotonic()
        with pytest.raises(SegmentConnectionError, match="not ready after 1s"):
            client.wait_ready(timeout=1.0)
        elapsed = time.monotonic() - started
        assert 1.0 <= elapsed < 3.0, f"wait_ready(timeout=1) took {elapsed:.1f} s (the client's timeout is 20 s)"
        assert not client.ready(timeout=0.2)


def test_batch_wait_keeps_its_deadline_against_a_silent_server(silent_server: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    write_photos(tmp_path / "in")
    started = time.monotonic()
    status = batch_main([str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--server", silent_server,
                         "--wait", "1", "--no-progress"])
    elapsed = time.monotonic() - started
    assert status == 2 and "not reachable or not ready" in capsys.readouterr().err
    assert elapsed < 4.0, f"segment --wait 1 took {elapsed:.1f} s"
    assert not (tmp_path / "out").exists()


@pytest.fixture
def busy_server() -> Iterator[tuple[str, list[str], dict[str, str]]]:
    """A real HTTP server that answers every request 503 `overloaded` with the Retry-After in `header["value"]`;
    the paths it was asked for, in order."""
    asked: list[str] = []
    header = {"value": "1"}

    class Busy(QuietHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            asked.append(self.path)
            body = json.dumps({"error": {"code": "overloaded", "message": "queue full", "request_id": "r"}})
            self.send_response(503)
            self.send_header("Retry-After", header["value"])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

    with serving(Busy) as url:
        yield url, asked, header


def test_a_retry_after_longer_than_the_client_waits_is_not_retried_sooner(
        busy_server: tuple[str, list[str], dict[str, str]]) -> None:
    """Retry-After: 30 is an answer for the caller (raised at once, with retry_after 30), not a retry 5 s later
    that the server said it would refuse; Retry-After: 1 is waited for and retried."""
    url, asked, header = busy_server

    async def async_attempt() -> SegmentApiError:
        async with AsyncSegmentClient(url, retries=2) as client:
            with pytest.raises(SegmentApiError) as info:
                await client.segment(b"\x89PNG", "labels")
            return info.value

    header["value"] = "30"
    with SegmentClient(url, retries=2) as client:
        started = time.monotonic()
        with pytest.raises(SegmentApiError) as info:
            client.segment(b"\x89PNG", "labels")
        assert time.monotonic() - started < 2.0
    assert (info.value.code, info.value.retry_after, len(asked)) == ("overloaded", 30.0, 1)
    error = asyncio.run(async_attempt())
    assert (error.retry_after, len(asked)) == (30.0, 2)

    header["value"] = "1"
    asked.clear()
    with SegmentClient(url, retries=2) as client:
        started = time.monotonic()
        with pytest.raises(SegmentApiError):
            client.segment(b"\x89PNG", "labels")
        assert time.monotonic() - started >= 2.0  # two waits of the second asked for
    assert len(asked) == 3
