"""What a request asks of HTTP rather than of the service, against a real `segment-serve` process over raw sockets:
a version other than HTTP/1.0 and 1.1 (505), a transfer coding besides chunked (501), a content-coded body (415,
before it is read), and a multipart body cut off before its closing boundary (400, not a 422 naming a field that
was sent). Each answer is the JSON envelope with its stable code, counted in `segment_rejected_total`."""

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
BOUNDARY = "b0uNdArY"


@pytest.fixture(scope="module")
def server(rule_model: Path) -> Iterator[ServerProcess]:
    with ServerProcess(rule_model, SEGMENT_INTRA_OP_THREADS="1") as proc:
        yield proc.wait_ready()


def exchange(server: ServerProcess, data: bytes) -> tuple[int, dict[str, str], bytes, bool]:
    """Send `data` on a fresh connection and read one answer: status, headers, body, and whether the server
    closed the connection right after it (within 1 s, with nothing more sent)."""
    with rawhttp.connect(server.url) as sock:
        sock.sendall(data)
        answers = read_responses(sock, 1, 10)
        assert answers, f"no answer to {data[:80]!r}"
        status, head, body = answers[0]
        closed = closed_by_server(sock, 1)
    return status, headers_of(head), body, closed


def segment_head(*headers: str) -> str:
    return "\n".join(("POST /segment HTTP/1.1", "Host: x", *headers))


# -- HTTP versions -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/0.9", "HTTP/1.2", "HTTP/3.0"])
def test_a_version_other_than_1_0_and_1_1_is_505_and_closed(server: ServerProcess, version: str) -> None:
    before = rejected(server, "unsupported_http_version")
    status, headers, body, closed = exchange(server, http_request(f"GET /healthz {version}\nHost: x"))
    assert (status, code_of(body), headers["connection"], closed) == (505, "unsupported_http_version", "close", True)
    assert "HTTP/1.1" in json.loads(body)["error"]["message"]
    assert headers["x-request-id"] == json.loads(body)["error"]["request_id"]
    assert rejected(server, "unsupported_http_version") == before + 1


@pytest.mark.parametrize("version", ["HTTP/1.0", "HTTP/1.1"])
def test_http_1_0_and_1_1_are_served(server: ServerProcess, version: str) -> None:
    status, _, body, _ = exchange(server, http_request(f"GET /healthz {version}\nHost: x\nConnection: close"))
    assert (status, json.loads(body)) == (200, {"status": "ok"})


def test_an_unsupported_version_pipelined_behind_a_request_is_answered_after_it(server: ServerProcess) -> None:
    with rawhttp.connect(server.url) as sock:
        sock.sendall(http_request("GET /healthz HTTP/1.1\nHost: x") + http_request("GET /healthz HTTP/2.0\nHost: x"))
        answers = read_responses(sock, 3, 5)
    assert [(status, code_of(body) if status != 200 else None) for status, _, body in answers] == [
        (200, None), (505, "unsupported_http_version")]


# -- transfer codings ----------------------------------------------------------------------------------------------
def chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


@pytest.mark.parametrize("codings", [["gzip, chunked"], ["deflate,chunked"], ["gzip", "chunked"], ["x-foo, chunked"]],
                         ids=["gzip, chunked", "deflate,chunked", "two header lines", "unknown coding"])
def test_a_transfer_coding_besides_chunked_is_501_and_closed(server: ServerProcess, codings: list[str]) -> None:
    """The body is a plain PNG: before, the coding named was ignored and it was segmented (200)."""
    before = rejected(server, "unsupported_transfer_encoding")
    head = segment_head("Content-Type: image/png", *(f"Transfer-Encoding: {c}" for c in codings))
    status, headers, body, closed = exchange(server, http_request(head, chunked(TINY)))
    assert (status, code_of(body), headers["connection"], closed) == (501, "unsupported_transfer_encoding", "close",
                                                                      True)
    assert rejected(server, "unsupported_transfer_encoding") == before + 1


def test_chunked_alone_is_served_and_a_list_not_ending_in_chunked_is_400(server: ServerProcess) -> None:
    status, headers, body, _ = exchange(server, http_request(
        segment_head("Content-Type: image/png", "Transfer-Encoding: chunked", "Connection: close"), chunked(TINY)))
    assert (status, headers["content-type"]) == (200, "image/png"), body[:200]
    status, _, body, closed = exchange(server, http_request(
        segment_head("Content-Type: image/png", "Transfer-Encoding: chunked, gzip"), chunked(TINY)))
    assert (status, code_of(body), closed) == (400, "bad_request", True)


def test_an_http_1_0_request_with_a_transfer_encoding_is_400_and_closed(server: ServerProcess) -> None:
    """HTTP/1.0 has no transfer codings: a proxy speaking it frames this body by the connection's end while the
    server framed it by chunks (llhttp did, and answered 200), the gap request smuggling goes through."""
    head = "\n".join(("POST /segment HTTP/1.0", "Host: x", "Content-Type: image/png", "Transfer-Encoding: chunked"))
    status, _, body, closed = exchange(server, http_request(head, chunked(TINY)))
    assert (status, code_of(body), closed) == (400, "bad_request", True)
    assert "HTTP/1.0" in json.loads(body)["error"]["message"]


# -- content codings -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "GZIP", "identity, gzip"])
def test_a_content_coded_body_is_415_before_it_is_read(server: ServerProcess, coding: str) -> None:
    """The head announces a gzip'd PNG, and no body byte is sent: the answer comes at once (not at the body
    deadline), names the coding, and says what is accepted."""
    before = rejected(server, "unsupported_content_encoding")
    size = len(gzip.compress(TINY))
    head = segment_head("Content-Type: image/png", f"Content-Encoding: {coding}", f"Content-Length: {size}",
                        "Connection: close")
    t0 = time.monotonic()
    status, headers, body, _ = exchange(server, http_request(head))
    assert time.monotonic() - t0 < 5
    assert (status, code_of(body), headers["accept-encoding"]) == (415, "unsupported_content_encoding", "identity")
    assert coding.split(", ")[-1].lower() in json.loads(body)["error"]["message"]
    assert rejected(server, "unsupported_content_encoding") == before + 1


def test_a_content_coded_body_sent_whole_is_415_and_the_connection_serves_on(server: ServerProcess) -> None:
    coded = gzip.compress(TINY)
    head = segment_head("Content-Type: image/png", "Content-Encoding: gzip", f"Content-Length: {len(coded)}")
    plain = segment_head("Content-Type: image/png", f"Content-Length: {len(TINY)}")
    with rawhttp.connect(server.url) as sock:
        sock.sendall(http_request(head, coded) + http_request(plain, TINY))
        answers = read_responses(sock, 2, 10)
    assert [status for status, _, _ in answers] == [415, 200]
    assert code_of(answers[0][2]) == "unsupported_content_encoding"


@pytest.mark.parametrize("coding", ["identity", ""])
def test_identity_or_an_empty_content_encoding_is_served(server: ServerProcess, coding: str) -> None:
    head = segment_head("Content-Type: image/png", f"Content-Encoding: {coding}", f"Content-Length: {len(TINY)}",
                        "Connection: close")
    status, headers, body, _ = exchange(server, http_request(head, TINY))
    assert (status, headers["content-type"]) == (200, "image/png"), body[:200]


def test_a_content_encoding_on_a_request_without_a_body_is_ignored(server: ServerProcess) -> None:
    status, _, body, _ = exchange(server, http_request("GET /healthz HTTP/1.1\nHost: x\nContent-Encoding: gzip\n"
                                                       "Connection: close"))
    assert (status, json.loads(body)) == (200, {"status": "ok"})


# -- multipart cut short -------------------------------------------------------------------------------------------
IMAGE_PART = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
              "Content-Type: image/png\r\n\r\n").encode() + TINY
CLOSING = f"\r\n--{BOUNDARY}--\r\n".encode()
CUTS = {"inside the image": IMAGE_PART[:-10], "after the image": IMAGE_PART,
        "after the image's line end": IMAGE_PART + b"\r\n", "at the boundary": IMAGE_PART + CLOSING[:-4],
        "one hyphen short": IMAGE_PART + CLOSING[:-3], "inside a next part": IMAGE_PART + CLOSING[:-4] + b"\r\n"}


def multipart(body: bytes) -> bytes:
    return http_request(segment_head(f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
                                     f"Content-Length: {len(body)}"), body)


@pytest.mark.parametrize("cut", CUTS, ids=list(CUTS))
def test_a_multipart_body_cut_before_its_closing_boundary_is_400(server: ServerProcess, cut: str) -> None:
    before = rejected(server, "incomplete_multipart")
    status, _, body, _ = exchange(server, multipart(CUTS[cut]))
    assert (status, code_of(body)) == (400, "incomplete_multipart"), body
    assert "closing boundary" in json.loads(body)["error"]["message"]
    assert rejected(server, "incomplete_multipart") == before + 1


def test_a_whole_multipart_body_is_served_and_one_without_image_is_still_422(server: ServerProcess) -> None:
    status, headers, body, _ = exchange(server, multipart(IMAGE_PART + CLOSING))
    assert (status, headers["content-type"]) == (200, "image/png"), body[:200]
    other = IMAGE_PART.replace(b'name="image"', b'name="photo"') + CLOSING
    status, _, body, _ = exchange(server, multipart(other))
    assert (status, code_of(body)) == (422, "invalid_request")


def test_an_empty_multipart_body_is_empty_body_not_a_body_cut_short(server: ServerProcess) -> None:
    before = rejected(server, "empty_body")
    status, _, body, _ = exchange(server, multipart(b""))
    assert (status, code_of(body)) == (400, "empty_body"), body
    assert rejected(server, "empty_body") == before + 1


def test_a_refused_whole_head_echoes_its_own_request_id_as_the_app_does(server: ServerProcess) -> None:
    """A refusal made below the app (505 here) answers with the request's own well-formed `X-Request-ID`, so a
    client's or proxy's logs can find it; an id the middleware would not echo gets a fresh one."""
    for sent, echoed in (("trace-42.a:b", True), ("bad id<script>", False)):
        head = f"GET /healthz HTTP/2.0\nHost: x\nX-Request-ID: {sent}"
        status, headers, body, _ = exchange(server, http_request(head))
        request_id = json.loads(body)["error"]["request_id"]
        assert (status, headers["x-request-id"]) == (505, request_id)
        assert (request_id == sent) is echoed, request_id
        assert len(request_id) == 32 or echoed
