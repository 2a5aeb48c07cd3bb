"""Multipart uploads against a real `segment-serve` process over raw sockets: a malformed chunk inside a chunked
multipart body counted once (the 400 the client got, not also `client_closed`), a client gone mid-upload still
`client_closed`, and a preamble before the first delimiter line (RFC 2046 5.1.1) skipped, as bytes are split into
reads in every way (service/multipart_preamble.py)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from service.multipart_preamble import MAX_PREAMBLE_BYTES, without_preamble
from testkit import rawhttp
from testkit.images import decode_labels
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
from tests.service.svc_helpers import png_bytes, scene

BOUNDARY = "b0uNdArY"
IMAGE = png_bytes(scene(48, 32))
IMAGE_PART = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
              "Content-Type: image/png\r\n\r\n").encode() + IMAGE
BODY = IMAGE_PART + f"\r\n--{BOUNDARY}--\r\n".encode()  # as browsers and HTTP libraries send it: no preamble
MULTIPART = f"Content-Type: multipart/form-data; boundary={BOUNDARY}"


@pytest.fixture(scope="module")
def server(rule_model: Path) -> Iterator[ServerProcess]:
    with ServerProcess(rule_model, SEGMENT_INTRA_OP_THREADS="1") as proc:
        yield proc.wait_ready()


def head(*fields: str) -> str:
    return "\n".join(("POST /segment?output=labels HTTP/1.1", "Host: x", MULTIPART, *fields))




def upload(server: ServerProcess, body: bytes, reads: int = 1) -> tuple[int, bytes]:
    """POST `body` with a Content-Length, sent in `reads` pieces of about equal size (each its own read)."""
    step = -(-len(body) // reads)
    with rawhttp.connect(server.url, nodelay=True) as sock:
        sock.sendall(http_request(head(f"Content-Length: {len(body)}")))
        for start in range(0, len(body), step):
            time.sleep(0.05 if start else 0)
            sock.sendall(body[start:start + step])
        status, _, answer = one_answer(sock)
    return status, answer


# -- a malformed chunk in a multipart body, counted once -----------------------------------------------------------
FIRST_CHUNKS = {"a preamble": b"This is a preamble\r\n" + IMAGE_PART[:40], "the first part": IMAGE_PART[:40]}


@pytest.mark.parametrize("first", FIRST_CHUNKS, ids=list(FIRST_CHUNKS))
@pytest.mark.parametrize("pause", [False, True], ids=["in the head's read", "while the app reads the body"])
def test_a_malformed_chunk_in_a_multipart_body_is_counted_once(server: ServerProcess, pause: bool,
                                                                 first: str) -> None:
    """The protocol answers 400 `bad_request` for the chunk size `zz` and tells the app, reading the body through
    the multipart parser, that its client is gone: that is the same refusal, not a `client_closed` as well."""
    before = rejections(server)
    with rawhttp.connect(server.url, nodelay=True) as sock:
        start = http_request(head("Transfer-Encoding: chunked"), chunk(FIRST_CHUNKS[first]))
        if pause:
            sock.sendall(start)
            time.sleep(0.3)  # the app has begun reading the body
            sock.sendall(b"zz\r\n")
        else:
            sock.sendall(start + b"zz\r\n")
        status, _, body = one_answer(sock)
        assert (status, code_of(body)) == (400, "bad_request")
        assert closed_by_server(sock)
    assert counted_since(before, server) == {"bad_request": 1}


@pytest.mark.parametrize("first", FIRST_CHUNKS, ids=list(FIRST_CHUNKS))
def test_a_client_gone_mid_multipart_upload_is_client_closed_once(server: ServerProcess, first: str) -> None:
    before = rejections(server)
    with rawhttp.connect(server.url, nodelay=True) as sock:
        sock.sendall(http_request(head(f"Content-Length: {len(BODY) + 100}"), FIRST_CHUNKS[first]))
        time.sleep(0.3)  # the app is reading the body
    deadline = time.monotonic() + 10
    while (counted := counted_since(before, server)) == {} and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.2)  # nothing else follows
    assert counted_since(before, server) == counted == {"client_closed": 1}


# -- a preamble before the first delimiter line --------------------------------------------------------------------
PREAMBLES = {
    "one line": b"This is a preamble\r\n",
    "MIME's, after a blank line": b"\r\nThis is a multi-part message in MIME format.\r\n",
    "lines like delimiters": f"--{BOUNDARY[:-1]}\r\nnot --{BOUNDARY}\r\n-- {BOUNDARY}\r\n".encode(),
    "empty lines": b"\r\n\r\n\r\n",
}


@pytest.mark.parametrize("reads", [1, 7], ids=["one read", "seven reads"])
@pytest.mark.parametrize("preamble", PREAMBLES, ids=list(PREAMBLES))
def test_a_preamble_is_skipped_with_the_same_labels(server: ServerProcess, preamble: str, reads: int) -> None:
    status, plain = upload(server, BODY)
    assert status == 200, plain[:200]
    before = rejections(server)
    status, answer = upload(server, PREAMBLES[preamble] + BODY, reads)
    assert status == 200, answer[:200]
    labels = decode_labels(answer)
    assert labels.shape == (32, 48)
    np.testing.assert_array_equal(labels, decode_labels(plain))
    assert counted_since(before, server) == {}


NOT_SKIPPED = {
    "no delimiter at all": b"hello, this is not multipart",
    "a bare LF before the first delimiter": b"This is a preamble\n" + BODY,
    "a preamble past the limit": b"x" * (MAX_PREAMBLE_BYTES - 1) + b"\r\n" + BODY,
}


@pytest.mark.parametrize("case", NOT_SKIPPED, ids=list(NOT_SKIPPED))
def test_a_body_without_a_delimiter_line_to_skip_to_is_refused_as_invalid_multipart(server: ServerProcess,
                                                                                     case: str) -> None:
    """What is not a preamble before a CRLF-ended delimiter line within the limit reaches the parser as sent."""
    before = rejections(server)
    status, answer = upload(server, NOT_SKIPPED[case])
    assert (status, code_of(answer)) == (400, "bad_request"), answer
    assert json.loads(answer)["error"]["message"] == "Invalid multipart data."
    assert counted_since(before, server) == {"bad_request": 1}


# -- the stream as the parser gets it ------------------------------------------------------------------------------
def passed_on(pieces: list[bytes]) -> list[bytes]:
    """What `without_preamble` hands on of a body arriving as `pieces`."""

    async def reads() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    async def collect() -> list[bytes]:
        return [piece async for piece in without_preamble(reads(), BOUNDARY.encode())]

    return asyncio.run(collect())


def test_a_body_without_a_preamble_is_passed_on_read_by_read_uncopied() -> None:
    pieces = [BODY[:100], BODY[100:], b""]
    handed = passed_on(pieces)
    assert len(handed) == len(pieces) and all(a is b for a, b in zip(handed, pieces, strict=True))


@pytest.mark.parametrize("preamble", PREAMBLES, ids=list(PREAMBLES))
def test_a_preamble_is_skipped_wherever_the_reads_split(preamble: str) -> None:
    """Every split into two reads, and one byte per read: the delimiter line straddling reads is found."""
    body = PREAMBLES[preamble] + BODY
    for split in range(len(PREAMBLES[preamble]) + len(BOUNDARY) + 8):
        assert b"".join(passed_on([body[:split], body[split:]])) == BODY, split
    assert b"".join(passed_on([body[i:i + 1] for i in range(len(body))])) == BODY


@pytest.mark.parametrize("case", NOT_SKIPPED, ids=list(NOT_SKIPPED))
def test_a_body_without_a_delimiter_line_to_skip_to_is_passed_on_whole(case: str) -> None:
    body = NOT_SKIPPED[case]
    for pieces in ([body], [body[:10], body[10:]], [body[i:i + 4096] for i in range(0, len(body), 4096)]):
        assert b"".join(passed_on(pieces)) == body


@pytest.mark.parametrize("reads", [1, 3], ids=["one read", "three reads"])
def test_the_preamble_limit_is_where_the_delimiter_line_begins(reads: int) -> None:
    """A delimiter line beginning at byte `MAX_PREAMBLE_BYTES` is the last one skipped to, however the reads split."""
    for preamble, skipped in ((b"x" * (MAX_PREAMBLE_BYTES - 2) + b"\r\n", True),
                              (b"x" * (MAX_PREAMBLE_BYTES - 1) + b"\r\n", False)):
        body = preamble + BODY
        step = -(-len(body) // reads)
        handed = b"".join(passed_on([body[i:i + step] for i in range(0, len(body), step)]))
        assert handed == (BODY if skipped else body), (len(preamble), reads)
