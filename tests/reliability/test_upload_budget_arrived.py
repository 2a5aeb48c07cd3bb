"""The upload budget (SEGMENT_UPLOAD_BUFFER_BYTES) holds the bytes uploads have sent, not the sizes they declare,
against a real `segment-serve` process over raw sockets: connections that declare large bodies (or chunked ones)
and send nothing no longer lock every other client out of /segment; bytes that really arrived still fill it, and
the excess is refused 503 `overloaded` (before reading when the declared size cannot fit, else as it arrives, with
`Connection: close`)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from testkit import rawhttp
from testkit.rawhttp import http_request, read_response, status_of
from testkit.server import ServerProcess
from tests.service.svc_helpers import png_bytes, scene

BUDGET, BODY_S = 100_000, 3.0
ENV = {"SEGMENT_UPLOAD_BUFFER_BYTES": str(BUDGET), "SEGMENT_BODY_TIMEOUT_S": str(BODY_S),
       "SEGMENT_INTRA_OP_THREADS": "1"}
TINY = png_bytes(scene(32, 24))
PNG = "Content-Type: image/png"


@pytest.fixture(scope="module")
def server(rel_rule_model: Path) -> Iterator[ServerProcess]:
    with ServerProcess(rel_rule_model, **ENV) as proc:
        yield proc.wait_ready()


def opened(server: ServerProcess, framing: str, body: bytes = b"") -> socket.socket:
    """A /segment upload whose head (`framing`: its Content-Length or Transfer-Encoding field) and `body` are
    sent, and nothing more."""
    sock = rawhttp.connect(server.url)
    sock.sendall(http_request(f"POST /segment HTTP/1.1\nHost: x\n{PNG}\n{framing}", body))
    return sock


def chunked(data: bytes, size: int = 4096) -> bytes:
    """`data` in chunked framing, the last chunk included."""
    pieces = (data[i:i + size] for i in range(0, len(data), size))
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def chunked_iter(data: bytes) -> Iterator[bytes]:
    """`data` as an iterator, which httpx sends chunked."""
    yield data[:100]
    yield data[100:]


def answer_of(raw: bytes) -> tuple[int, str, dict]:
    """Status, lower-cased head and error object of a raw JSON error response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    return status_of(raw), head.decode("latin-1").lower(), json.loads(body)["error"]


def segment(url: str, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{url}/segment", params={"output": "stats"}, timeout=10, **kwargs)  # type: ignore[arg-type]


def assert_timed_out(socks: list[socket.socket]) -> None:
    """Each stalled upload is answered 408 `body_timeout` and closed, by its deadline."""
    for sock in socks:
        raw, took = read_response(sock, timeout=BODY_S + 5)
        status, head, error = answer_of(raw)
        assert (status, error["code"]) == (408, "body_timeout"), raw[:300]
        assert "connection: close" in head and took < BODY_S + 4


@pytest.mark.parametrize("framing", [f"Content-Length: {BUDGET // 4}", "Transfer-Encoding: chunked"])
def test_uploads_that_send_nothing_hold_nothing(server: ServerProcess, framing: str) -> None:
    """Four uploads declaring a quarter of the budget each (or chunked, once reserved as the whole budget) and
    sending no body byte: before, they held all of it and every other /segment was 503 while /readyz said 200;
    now raw, chunked and multipart uploads are all served, and the stalled ones still end at their deadline."""
    stalled = [opened(server, framing) for _ in range(4)]
    try:
        time.sleep(0.3)  # their heads have been read and their requests routed
        answers = [segment(server.url, content=TINY, headers={"Content-Type": "image/png"}) for _ in range(3)]
        answers.append(segment(server.url, content=chunked_iter(TINY), headers={"Content-Type": "image/png"}))
        answers.append(segment(server.url, files={"image": ("x.png", TINY, "image/png")}))
        assert [r.status_code for r in answers] == [200] * 5, [r.text[:200] for r in answers]
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        assert_timed_out(stalled)
    finally:
        for sock in stalled:
            sock.close()


def test_bytes_that_arrived_fill_the_budget(server: ServerProcess) -> None:
    """Three uploads send 30 000 bytes each of 30 001 and stall: 90 000 of the 100 000 are really held. An upload
    declaring more than the 10 000 left is refused 503 before reading; a chunked one is refused 503 with
    `Connection: close` as it grows past them; one that fits is served, and the server stays ready. Once the
    deadline has answered the stalled ones, the larger upload is served too."""
    held = 30_000
    fillers = [opened(server, f"Content-Length: {held + 1}", b"\0" * held) for _ in range(3)]
    large = png_bytes(np.random.default_rng(0).integers(0, 256, (72, 72, 3), np.uint8))
    assert BUDGET - 3 * held < len(large) < BUDGET
    try:
        time.sleep(0.5)  # their bytes have been read
        r = segment(server.url, content=large, headers={"Content-Type": "image/png"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded", r.text
        assert "90000 of 100000 bytes held" in r.json()["error"]["message"]
        assert int(r.headers["retry-after"]) >= 1

        grown = opened(server, "Transfer-Encoding: chunked", chunked(large))
        raw, took = read_response(grown, timeout=10)
        grown.close()
        status, head, error = answer_of(raw)
        assert (status, error["code"]) == (503, "overloaded"), raw[:300]
        assert "retry-after: 1" in head and "connection: close" in head
        assert took < 5  # the server closed the connection: it reads no more of that body

        assert segment(server.url, content=TINY, headers={"Content-Type": "image/png"}).status_code == 200
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        assert_timed_out(fillers)
    finally:
        for sock in fillers:
            sock.close()
    for body in (large, chunked_iter(large)):
        r = segment(server.url, content=body, headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text
