"""The clients given an https:// URL for a server that speaks plain HTTP: the service under uvicorn on a loopback
port, without TLS, counting the connections it accepts. The TLS handshake cannot succeed (the server answers the
ClientHello with an HTTP 400, which OpenSSL reads as a record of a wrong version), so it is raised at once as
`SegmentTlsError` (code `tls_error`, a `SegmentConnectionError`), naming the http:// URL to use; `segment` and
`segment-webcam` stop at once (exit 2) saying so. Before: httpx raises it as a `ConnectError`, as it does a refused
connection, so every call made its retries, each a new connection answered alike, and ended with OpenSSL's
"wrong version number"; `wait_ready`, `segment` and `segment-webcam` waited out their whole timeout, then said only
"not reachable or not ready".
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from clients.webcam import main as webcam_main
from service.app import create_app
from service.client import (
    AsyncSegmentClient,
    SegmentCertificateError,
    SegmentClient,
    SegmentConnectionError,
    SegmentTlsError,
)
from service.settings import Settings
from tests.clients.test_batch_interrupts import Segment, photos
from tests.clients.test_webcam_outage import write_clip
from tests.service.svc_helpers import png_bytes, scene

RETRIES = 5  # with the client's backoff, 0.2 + 0.4 + 0.8 + 1.6 + 3.2 s and more of waiting, were they made


class PlainServer:
    """The service under uvicorn over plain HTTP on a loopback port; `accepted` counts the connections it accepted
    (each one's protocol is made when the connection is, whatever is then sent on it)."""

    def __init__(self, model: Path) -> None:
        settings = Settings(model_path=model, host="127.0.0.1", port=0, intra_op_threads=1, worker_threads=2,
                            exit_when_unhealthy=False)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        server = self

        class Counting(H11Protocol):
            def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
                server.accepted += 1
                super().connection_made(transport)

        config = uvicorn.Config(create_app(settings), log_level="critical", lifespan="on", http=Counting)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def https_url(self) -> str:
        return f"https://{self.address}"

    def __enter__(self) -> PlainServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=f"http://{self.address}") as client:
            while not (self.server.started and client.get("/readyz").status_code == 200):
                assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


@pytest.fixture(scope="module")
def module_server(tiny_onnx_model: Path) -> Iterator[PlainServer]:
    with PlainServer(tiny_onnx_model) as server:
        yield server


@pytest.fixture
def plain(module_server: PlainServer) -> PlainServer:
    """The plain-HTTP server, its count of connections reset for this test."""
    time.sleep(0.05)  # the readiness probe's or the last test's connections are in
    module_server.accepted = 0
    return module_server


def _hint(server: PlainServer) -> str:
    return (f"the server at {server.address} does not speak TLS: use http://{server.address} if it serves plain "
            "HTTP (not retried: its answer to the TLS handshake was not TLS: wrong version number)")


def test_plain_http_answers_over_http(plain: PlainServer) -> None:
    """The control: the same server answers the http:// URL the message names."""
    with SegmentClient(f"http://{plain.address}", retries=RETRIES) as client:
        assert client.segment(png_bytes(scene(96, 64)), "labels").array().shape == (64, 96)
    assert plain.accepted == 1


def test_an_https_url_for_a_plain_http_server_is_raised_at_once(plain: PlainServer) -> None:
    started = time.monotonic()
    with SegmentClient(plain.https_url, retries=RETRIES) as client, pytest.raises(SegmentTlsError) as info:
        client.segment(png_bytes(scene(96, 64)), "labels")
    took = time.monotonic() - started
    assert plain.accepted == 1, plain.accepted  # before: 1 + RETRIES
    assert took < 1.5, took  # before: the retries' waits, 6 s or more
    error = info.value
    assert error.code == "tls_error" and isinstance(error, SegmentConnectionError)
    assert not isinstance(error, SegmentCertificateError)  # nothing is wrong with a certificate: there is none
    assert str(error) == f"POST {plain.https_url}/segment: {_hint(plain)}", error


def test_the_async_client_raises_it_at_once_too(plain: PlainServer) -> None:
    async def call() -> SegmentTlsError:
        async with AsyncSegmentClient(plain.https_url, retries=RETRIES) as client:
            with pytest.raises(SegmentTlsError) as info:
                await client.classes()
            return info.value

    started = time.monotonic()
    error = asyncio.run(call())
    assert time.monotonic() - started < 1.5 and plain.accepted == 1, plain.accepted
    assert str(error) == f"GET {plain.https_url}/classes: {_hint(plain)}", error


def test_wait_ready_raises_it_at_once(plain: PlainServer) -> None:
    """Before: `wait_ready` probed until its timeout, then said the server was not ready."""
    started = time.monotonic()
    with SegmentClient(plain.https_url) as client, pytest.raises(SegmentTlsError) as info:
        client.wait_ready(timeout=30)
    assert time.monotonic() - started < 1.5 and plain.accepted == 1, plain.accepted
    assert str(info.value) == f"GET {plain.https_url}/readyz: {_hint(plain)}"


def test_segment_stops_at_once_naming_http(plain: PlainServer, tmp_path: Path) -> None:
    """Before: it waited `--wait` (here 60 s), then exit 2 with "not reachable or not ready"."""
    photos(tmp_path / "in", 3)
    run = Segment(str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--server", plain.https_url, "--wait", "60")
    try:
        started = time.monotonic()
        code = run.wait(30)
        took = time.monotonic() - started
    finally:
        run.kill()
    assert code == 2 and took < 15, (took, run.err)
    assert run.lines == [f"segment: GET {plain.https_url}/readyz: {_hint(plain)}"], run.err
    assert plain.accepted == 1
    assert not (tmp_path / "out").exists()


def test_segment_webcam_stops_at_once_naming_http(plain: PlainServer, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Before: it waited `--wait` (here 60 s) for the server to be ready, then said it was not."""
    clip = write_clip(tmp_path / "clip.avi", 10)
    started = time.monotonic()
    code = webcam_main([str(clip), "--server", plain.https_url, "--out", str(tmp_path / "seg.mkv"), "--no-hud",
                        "--wait", "60"])
    took = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2 and took < 10, (took, err)
    assert err.splitlines() == [f"segment-webcam: GET {plain.https_url}/readyz: {_hint(plain)}"], err
    assert plain.accepted == 1
