"""Refusals below the app against a real `segment-serve` process over raw sockets: a request line without a version
(HTTP/0.9's) answered at once, a refused request's chunked body that proves malformed after its answer counted once,
and the client's own X-Request-ID echoed by a head refused part-way (431, 408, 400)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testkit import rawhttp
from testkit.metrics import metric_sum
from testkit.rawhttp import http_request
from testkit.server import ServerProcess
from tests.service.http_checks import (
    chunk,
    closed_by_server,
    code_of,
    counted_since,
    one_answer,
    rejections,
)

HEAD_TIMEOUT_S = 2.0
MAX_UPLOAD = 4096
HEALTHZ = "GET /healthz HTTP/1.1\nHost: x"


@pytest.fixture(scope="module")
def server(rule_model: Path) -> Iterator[ServerProcess]:
    with ServerProcess(rule_model, SEGMENT_INTRA_OP_THREADS="1", SEGMENT_HEADER_TIMEOUT_S=str(HEAD_TIMEOUT_S),
                       SEGMENT_MAX_UPLOAD_BYTES=str(MAX_UPLOAD)) as proc:
        yield proc.wait_ready()


def send_in_reads(server: ServerProcess, pieces: list[bytes]) -> socket.socket:
    """A connection that sent each piece as a read of its own."""
    sock = rawhttp.connect(server.url, nodelay=True)
    for i, piece in enumerate(pieces):
        if i:
            time.sleep(0.2)
        sock.sendall(piece)
    return sock



# -- a request line without a version ------------------------------------------------------------------------------
BARE_LINES = {"CRLF": [b"GET /healthz\r\n"], "LF": [b"GET /healthz\n"], "blank line after": [b"GET /healthz\r\n\r\n"],
              "CR and LF in two reads": [b"GET /healthz\r", b"\n"], "line end in a read of its own": [
                  b"GET /healthz", b"\r\n"]}


@pytest.mark.parametrize("case", BARE_LINES, ids=list(BARE_LINES))
def test_a_request_line_without_a_version_is_505_at_once(server: ServerProcess, case: str) -> None:
    """HTTP/0.9's simple request, `GET /path` and a line end: its client sends nothing more and waits. llhttp took it
    for the start of a head with header fields to come, so it waited for the head deadline (408)."""
    before = rejections(server)
    t0 = time.monotonic()
    with send_in_reads(server, BARE_LINES[case]) as sock:
        status, headers, body = one_answer(sock)
        elapsed = time.monotonic() - t0
        assert closed_by_server(sock)
    assert (status, code_of(body), headers["connection"]) == (505, "unsupported_http_version", "close")
    assert elapsed < HEAD_TIMEOUT_S / 2, elapsed
    assert "HTTP/0.9" in json.loads(body)["error"]["message"]
    assert counted_since(before, server) == {"unsupported_http_version": 1}


def test_a_request_line_without_a_version_after_a_request_is_505_at_once(server: ServerProcess) -> None:
    """On a connection's later request the parser still reads the earlier request's version: the line is looked at."""
    before = rejections(server)
    with send_in_reads(server, [http_request(HEALTHZ)]) as sock:
        assert one_answer(sock)[0] == 200
        t0 = time.monotonic()
        sock.sendall(b"GET /healthz\r\n")
        status, _, body = one_answer(sock)
        assert time.monotonic() - t0 < HEAD_TIMEOUT_S / 2
        assert closed_by_server(sock)
    assert (status, code_of(body)) == (505, "unsupported_http_version")
    assert counted_since(before, server) == {"unsupported_http_version": 1}


@pytest.mark.parametrize("pieces", [[b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n\r\n"],
                                    [b"GET /healthz", b" HTTP/1.1\r\nHost: x\r\n\r\n"]],
                         ids=["request line alone", "target alone"])
def test_a_request_line_with_a_version_waits_for_its_header_fields(server: ServerProcess,
                                                                   pieces: list[bytes]) -> None:
    with send_in_reads(server, pieces) as sock:
        status, _, body = one_answer(sock)
    assert (status, json.loads(body)) == (200, {"status": "ok"})


# -- an answer given before the body, then a malformed chunk -------------------------------------------------------

EARLY_ANSWERS = {
    "415 content coding": ("Content-Encoding: gzip", b"", 415, "unsupported_content_encoding"),
    "413 streamed": ("", chunk(b"\0" * (MAX_UPLOAD + 1)), 413, "payload_too_large"),
}


@pytest.mark.parametrize("case", EARLY_ANSWERS, ids=list(EARLY_ANSWERS))
def test_a_malformed_chunk_after_an_early_refusal_is_counted_once(server: ServerProcess, case: str) -> None:
    """The request is refused before its whole body is read; the rest of the body, still read and discarded, then
    proves malformed and the connection is closed. The client got one answer, counted under its code: the malformed
    chunk was counted too, as `bad_request`."""
    header, first, status, code = EARLY_ANSWERS[case]
    head = "\n".join(filter(None, ("POST /segment HTTP/1.1", "Host: x", "Content-Type: image/png", header,
                                   "Transfer-Encoding: chunked")))
    before = rejections(server)
    with rawhttp.connect(server.url) as sock:
        sock.sendall(http_request(head, first))
        answered, _, body = one_answer(sock)
        assert (answered, code_of(body)) == (status, code)
        sock.sendall(b"zz\r\n")  # not a chunk size
        assert closed_by_server(sock)
    assert counted_since(before, server) == {code: 1}


def test_a_malformed_chunk_after_a_success_is_counted_as_the_refusal_it_is(server: ServerProcess) -> None:
    """The answer was no refusal: the malformed body is the one refusal of the request, counted once."""
    before = rejections(server)
    with rawhttp.connect(server.url) as sock:
        sock.sendall(http_request(f"{HEALTHZ}\nTransfer-Encoding: chunked"))
        assert one_answer(sock)[0] == 200
        sock.sendall(b"zz\r\n")
        assert closed_by_server(sock)
    assert counted_since(before, server) == {"bad_request": 1}


@pytest.mark.parametrize("pause", [False, True], ids=["in the head's read", "while the app reads the body"])
def test_a_malformed_chunk_refused_below_the_app_is_counted_once(server: ServerProcess, pause: bool) -> None:
    """The protocol answers 400 for the bad chunk and tells the app its client is gone: the app must not count the
    same request again as `client_closed` (the client did not close; it was refused)."""
    head = "POST /segment HTTP/1.1\nHost: x\nContent-Type: image/png\nTransfer-Encoding: chunked"
    before = rejections(server)
    answered_400 = segment_requests(server, "400")
    with rawhttp.connect(server.url, nodelay=True) as sock:
        if pause:
            sock.sendall(http_request(head, chunk(b"\x89PNG")))
            time.sleep(0.3)  # the app has begun reading the body
            sock.sendall(b"zz\r\n")
        else:
            sock.sendall(http_request(head, b"zz\r\n"))
        status, _, body = one_answer(sock)
        assert (status, code_of(body)) == (400, "bad_request")
        assert closed_by_server(sock)
    assert counted_since(before, server) == {"bad_request": 1}
    if pause:  # the app ran: its request is counted under the status the client got, not 499
        assert segment_requests(server, "400") == answered_400 + 1
        assert segment_requests(server, "499") == 0


def segment_requests(server: ServerProcess, status: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return metric_sum(text, "segment_requests_total", route="/segment", status=status)


def test_a_client_gone_mid_upload_is_still_client_closed(server: ServerProcess) -> None:
    before = rejections(server)
    with rawhttp.connect(server.url, nodelay=True) as sock:
        sock.sendall(http_request("POST /segment HTTP/1.1\nHost: x\nContent-Type: image/png\nContent-Length: 4000",
                                  b"\x89PNG"))
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while (counted := counted_since(before, server)) == {} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert counted == {"client_closed": 1}


# -- the client's X-Request-ID in a head refused part-way ----------------------------------------------------------
PAD = "X-Pad: " + "a" * 20_000  # past the 16 KiB head limit
ECHOED = {
    "431, in the read": ([f"{HEALTHZ}\nX-Request-ID: trace-431.a\n{PAD}\n\n"], 431, "headers_too_large"),
    "431, a read before": ([f"{HEALTHZ}\nX-Request-ID: trace-431.b\n", f"{PAD}\n\n"], 431, "headers_too_large"),
    "408": ([f"{HEALTHZ}\nX-Request-ID: trace-408\n"], 408, "header_timeout"),
    "400, a field later": ([f"{HEALTHZ}\nX-Request-ID: trace-400\nX-Next: 1\nX-Bad: \x01\n\n"], 400, "bad_request"),
    "400, a malformed chunk": (["POST /segment HTTP/1.1\nHost: x\nX-Request-ID: trace-chunk\n"
                                "Transfer-Encoding: chunked\n\nzz\n"], 400, "bad_request"),
}


@pytest.mark.parametrize("case", ECHOED, ids=list(ECHOED))
def test_a_head_refused_part_way_echoes_the_request_id_it_carried(server: ServerProcess, case: str) -> None:
    """The client's id had arrived, its line whole, before the refusal: the answer carries it, as the app's do, so
    a client's or proxy's logs can find it. It carried a new id."""
    pieces, status, code = ECHOED[case]
    sent = pieces[0].partition("X-Request-ID: ")[2].partition("\n")[0]
    with send_in_reads(server, [piece.replace("\n", "\r\n").encode("latin-1") for piece in pieces]) as sock:
        answered, headers, body = one_answer(sock, HEAD_TIMEOUT_S + 10)
    assert (answered, code_of(body)) == (status, code)
    assert headers["x-request-id"] == json.loads(body)["error"]["request_id"] == sent


NOT_ECHOED = {
    "431, after the limit": f"{HEALTHZ}\n{PAD}\nX-Request-ID: trace-late\n\n",
    "408, its line not ended": f"{HEALTHZ}\nX-Request-ID: trace-cut",
    "408, not an id to echo": f"{HEALTHZ}\nX-Request-ID: bad id<script>\n",
}


@pytest.mark.parametrize("case", NOT_ECHOED, ids=list(NOT_ECHOED))
def test_a_head_refused_before_a_whole_echoable_id_gets_a_new_one(server: ServerProcess, case: str) -> None:
    with send_in_reads(server, [NOT_ECHOED[case].replace("\n", "\r\n").encode("latin-1")]) as sock:
        answered, headers, body = one_answer(sock, HEAD_TIMEOUT_S + 10)
    request_id = json.loads(body)["error"]["request_id"]
    assert answered in (408, 431) and headers["x-request-id"] == request_id
    assert len(request_id) == 32 and "trace" not in request_id, request_id
