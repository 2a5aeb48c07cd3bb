"""Where one request ends and the next begins, and what HTTP/1.1 asks of every server, against a real
`segment-serve` process over raw sockets: a request that asked for `100 Continue` and was refused before it sent
its body, `100 Continue` and HTTP/1.0, a request asking for an upgrade the server does not take, HTTP/2's connection
preface, a declared empty body that names a content coding, and the Host header."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit import rawhttp
from testkit.rawhttp import http_request, read_responses
from testkit.server import ServerProcess
from tests.service.http_checks import closed_by_server, code_of, headers_of, rejected
from tests.service.svc_helpers import png_bytes, scene

TINY = png_bytes(scene(32, 24))
HEALTHZ = http_request("GET /healthz HTTP/1.1\nHost: x")


@pytest.fixture(scope="module")
def server(rule_model: Path) -> Iterator[ServerProcess]:
    with ServerProcess(rule_model, SEGMENT_INTRA_OP_THREADS="1") as proc:
        yield proc.wait_ready()


# -- Expect: 100-continue ------------------------------------------------------------------------------------------
EXPECTING = {
    "415 content coding": ("Content-Type: image/png\nContent-Encoding: gzip", len(gzip.compress(TINY)), 415,
                           "unsupported_content_encoding"),
    "413 declared length": ("Content-Type: image/png", 500_000_000, 413, "payload_too_large"),
}


@pytest.mark.parametrize("case", EXPECTING, ids=list(EXPECTING))
def test_a_request_refused_before_it_was_told_to_continue_closes_the_connection(server: ServerProcess,
                                                                               case: str) -> None:
    """The client waits for `100 Continue` and gets the refusal instead: it may then send its body or not (RFC 9110
    10.1.1; curl does not), so the server cannot tell that body from the client's next request and must close.
    Before, the answer kept the connection open and a next request sent on it was read as the refused one's body,
    never answered."""
    headers, length, status, code = EXPECTING[case]
    head = f"POST /segment HTTP/1.1\nHost: x\nExpect: 100-continue\n{headers}\nContent-Length: {length}"
    with rawhttp.connect(server.url) as sock:
        sock.sendall(http_request(head))
        answers = read_responses(sock, 1, 10)
        assert [(answer[0], code_of(answer[2])) for answer in answers] == [(status, code)]
        assert headers_of(answers[0][1])["connection"] == "close"
        assert closed_by_server(sock)


def test_a_request_told_to_continue_keeps_the_connection(server: ServerProcess) -> None:
    head = ("POST /segment HTTP/1.1\nHost: x\nExpect: 100-continue\nContent-Type: image/png\n"
            f"Content-Length: {len(TINY)}")
    with rawhttp.connect(server.url) as sock:
        sock.sendall(http_request(head))
        sock.settimeout(10)
        assert sock.recv(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(TINY + HEALTHZ)
        answers = read_responses(sock, 2, 10)
    assert [status for status, _, _ in answers] == [200, 200]


def test_a_refused_request_whose_body_arrived_whole_keeps_the_connection(server: ServerProcess) -> None:
    """The whole body is read (discarded) by its length: the next request is where it ends, whatever Expect said."""
    coded = gzip.compress(TINY)
    head = ("POST /segment HTTP/1.1\nHost: x\nExpect: 100-continue\nContent-Type: image/png\n"
            f"Content-Encoding: gzip\nContent-Length: {len(coded)}")
    with rawhttp.connect(server.url) as sock:
        sock.sendall(http_request(head, coded) + HEALTHZ)
        answers = read_responses(sock, 2, 10)
    assert [status for status, _, _ in answers] == [415, 200]
    assert "connection" not in headers_of(answers[0][1])


def test_an_http_1_0_client_is_never_sent_100_continue(server: ServerProcess) -> None:
    """HTTP/1.0 has no 1xx answers: a server MUST ignore its `Expect: 100-continue` (RFC 9110 10.1.1) and MUST NOT
    send it a 1xx (15.2). It was sent `HTTP/1.1 100 Continue`, which such a client takes for its answer."""
    head = ("POST /segment HTTP/1.0\nHost: x\nExpect: 100-continue\nContent-Type: image/png\n"
            f"Content-Length: {len(TINY)}")
    with rawhttp.connect(server.url) as sock:
        sock.sendall(http_request(head))
        sock.settimeout(1)
        with pytest.raises(TimeoutError):  # the server waits for the body, as the client then sends it
            sock.recv(1)
        sock.sendall(TINY)
        answer, _ = rawhttp.read_response(sock, 10)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:100]


# -- an upgrade not taken -----------------------------------------------------------------------------------------
H2C = "Connection: Upgrade, HTTP2-Settings\nUpgrade: h2c\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"  # curl --http2


def test_the_body_of_a_request_asking_for_an_upgrade_not_taken_is_its_body(server: ServerProcess) -> None:
    """The server takes no upgrade but a websocket one, so it serves such a request as any other (RFC 9110 7.8).
    httptools skipped the body, as though another protocol followed the head: a body sent after the head was parsed
    as requests, so this one, a whole `GET`, was answered too (request smuggling; a proxy saw one request)."""
    smuggled = HEALTHZ
    head = (f"POST /segment HTTP/1.1\nHost: x\nConnection: Upgrade\nUpgrade: foo\nContent-Type: image/png\n"
            f"Content-Length: {len(smuggled)}")
    with rawhttp.connect(server.url, nodelay=True) as sock:
        sock.sendall(http_request(head))
        time.sleep(0.2)  # the body in a read of its own
        sock.sendall(smuggled)
        answers = read_responses(sock, 2, 3)
    assert [(status, code_of(body)) for status, _, body in answers] == [(415, "unsupported_media_type")]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_upload_asking_for_h2c_is_served_and_so_is_the_next_request(server: ServerProcess, framing: str) -> None:
    """`curl --http2` on an http:// URL asks to upgrade to h2c: the body, in the head's read, was dropped with the
    request after it (400 `empty_body`, then nothing)."""
    if framing == "chunked":
        length, body = "Transfer-Encoding: chunked", b"%x\r\n%s\r\n0\r\n\r\n" % (len(TINY), TINY)
    else:
        length, body = f"Content-Length: {len(TINY)}", TINY
    head = f"POST /segment HTTP/1.1\nHost: x\n{H2C}\nContent-Type: image/png\n{length}"
    with rawhttp.connect(server.url) as sock:
        sock.sendall(http_request(head, body) + HEALTHZ)
        answers = read_responses(sock, 2, 10)
    assert [(status, headers_of(h)["content-type"]) for status, h, _ in answers] == [
        (200, "image/png"), (200, "application/json")]
    assert json.loads(answers[1][2]) == {"status": "ok"}


def test_a_request_pipelined_behind_an_upgrade_not_taken_is_answered(server: ServerProcess) -> None:
    with rawhttp.connect(server.url) as sock:
        sock.sendall(http_request(f"GET /healthz HTTP/1.1\nHost: x\n{H2C}") + HEALTHZ)
        answers = read_responses(sock, 2, 5)
    assert [(status, json.loads(body)) for status, _, body in answers] == [(200, {"status": "ok"})] * 2


# -- HTTP/2's connection preface -----------------------------------------------------------------------------------
def test_the_http2_connection_preface_is_505_like_any_http2_request(server: ServerProcess) -> None:
    """`PRI * HTTP/2.0` (a client with prior knowledge of HTTP/2, `curl --http2-prior-knowledge`) was 400
    `bad_request` "malformed HTTP request", while `GET / HTTP/2.0` was 505."""
    before = rejected(server, "unsupported_http_version")
    with rawhttp.connect(server.url) as sock:
        sock.sendall(HEALTHZ + b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        answers = read_responses(sock, 3, 10)
        assert closed_by_server(sock)
    assert [status for status, _, _ in answers] == [200, 505]
    _, head, body = answers[1]
    assert (code_of(body), headers_of(head)["connection"]) == ("unsupported_http_version", "close")
    assert "HTTP/2" in json.loads(body)["error"]["message"]
    assert headers_of(head)["x-request-id"] == json.loads(body)["error"]["request_id"]
    assert rejected(server, "unsupported_http_version") == before + 1


# -- a content coding on no body -----------------------------------------------------------------------------------
@pytest.mark.parametrize("length", ["0", "00"])
def test_a_content_coding_on_a_declared_empty_body_is_not_refused(server: ServerProcess, length: str) -> None:
    """`Content-Length: 00` is 0 (1*DIGIT, RFC 9110 8.6): it was 415, while `0` was the empty body's 400."""
    head = (f"POST /segment HTTP/1.1\nHost: x\nContent-Type: image/png\nContent-Encoding: gzip\n"
            f"Content-Length: {length}")
    with rawhttp.connect(server.url) as sock:
        sock.sendall(http_request(head))
        answers = read_responses(sock, 1, 10)
    assert [(status, code_of(body)) for status, _, body in answers] == [(400, "empty_body")]


# -- Host ----------------------------------------------------------------------------------------------------------
BAD_HOSTS = {
    "HTTP/1.1 without Host": "GET /healthz HTTP/1.1",
    "two Host lines": "GET /healthz HTTP/1.1\nHost: a.example\nHost: b.example",
    "two Host lines, HTTP/1.0": "GET /healthz HTTP/1.0\nHost: a.example\nHost: a.example",
    "a path in Host": "GET /healthz HTTP/1.1\nHost: a.example/b",
    "a space in Host": "GET /healthz HTTP/1.1\nHost: a.example b.example",
    "userinfo in Host": "GET /healthz HTTP/1.1\nHost: user@a.example",
}


@pytest.mark.parametrize("case", BAD_HOSTS, ids=list(BAD_HOSTS))
def test_a_request_without_exactly_one_valid_host_is_400_and_closed(server: ServerProcess, case: str) -> None:
    """RFC 9112 3.2: a server MUST answer 400 to these; llhttp passed them on and they were answered 200."""
    before = rejected(server, "bad_request")
    with rawhttp.connect(server.url) as sock:
        sock.sendall(http_request(BAD_HOSTS[case]))
        answers = read_responses(sock, 1, 10)
        assert closed_by_server(sock)
    assert [(status, code_of(body)) for status, _, body in answers] == [(400, "bad_request")]
    _, head, body = answers[0]
    assert "Host" in json.loads(body)["error"]["message"]
    assert headers_of(head)["x-request-id"] == json.loads(body)["error"]["request_id"]
    assert rejected(server, "bad_request") == before + 1


@pytest.mark.parametrize("head", ["GET /healthz HTTP/1.0", "GET /healthz HTTP/1.1\nHost: 127.0.0.1:8000",
                                  "GET /healthz HTTP/1.1\nHost: [::1]:8000", "GET /healthz HTTP/1.1\nHost: ",
                                  "GET /healthz HTTP/1.1\nhost: seg-01.example.com",
                                  "GET /healthz HTTP/1.1\nHost: segment_api:8000"])
def test_one_host_or_none_in_http_1_0_is_served(server: ServerProcess, head: str) -> None:
    with rawhttp.connect(server.url) as sock:
        sock.sendall(http_request(f"{head}\nConnection: close"))
        answers = read_responses(sock, 1, 10)
    assert [(status, json.loads(body)) for status, _, body in answers] == [(200, {"status": "ok"})]
