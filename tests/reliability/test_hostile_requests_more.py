"""Hostile requests beyond test_hostile_clients / test_request_heads, against a real `segment-serve` process on
loopback over raw sockets: a multipart body whose `charset` names a slow or failing decoder, and the answers of
Starlette components the app's error handlers never see (a refused CORS preflight, a bad `Range` on the web
page's files), which must come in the JSON envelope too."""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit import rawhttp
from testkit.load import HealthProbe
from testkit.metrics import metric_sum
from testkit.rawhttp import http_request, read_responses
from testkit.server import ServerProcess
from tests.service.svc_helpers import png_bytes, scene

ORIGIN = "http://app.example"
TINY = png_bytes(scene(32, 24))


@pytest.fixture(scope="module")
def server(rel_rule_model: Path) -> Iterator[ServerProcess]:
    with ServerProcess(rel_rule_model, SEGMENT_INTRA_OP_THREADS="1", SEGMENT_CORS_ORIGINS=ORIGIN) as proc:
        yield proc.wait_ready()


def exchange(server: ServerProcess, request: bytes, timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: status, headers (lower-case names), body."""
    with rawhttp.connect(server.url, timeout=timeout) as sock:
        sock.sendall(request)
        (status, head, body), = read_responses(sock, 1, timeout)
    headers = dict(line.decode("latin-1").lower().split(": ", 1) for line in head.split(b"\r\n")[1:])
    return status, headers, body


def assert_envelope(status: int, headers: dict[str, str], body: bytes, expected: int, code: str) -> dict:
    assert status == expected, body
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == code and error["message"]
    assert error["request_id"] == headers["x-request-id"]
    return error


def multipart(field: bytes, charset: str) -> bytes:
    """POST /segment with a text field `x-` of `field` and the image, declared in `charset`."""
    parts = (b'Content-Disposition: form-data; name="x-"\r\n\r\n' + field,
             b'Content-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
             + TINY)
    body = b"".join(b"--BOUND\r\n" + part + b"\r\n" for part in parts) + b"--BOUND--\r\n"
    return http_request(f"POST /segment?output=stats HTTP/1.1\nHost: x\nContent-Length: {len(body)}\n"
                        f"Content-Type: multipart/form-data; boundary=BOUND; charset={charset}", body)


@pytest.mark.parametrize("charset", ["punycode", "idna", "utf-16", "nonsense"])
def test_a_multipart_charset_other_than_utf8_ascii_latin1_is_refused_at_once(server: ServerProcess,
                                                                              charset: str) -> None:
    """Starlette decodes each multipart field with the body's charset on the event loop. Python's punycode decoder
    is quadratic and raises UnicodeError, which Starlette does not catch: 2 x 150,000 bytes held the loop ~2.7 s
    (every other request with it) and ended in a 500; idna failed the same way at once. Now 415 before parsing."""
    field = b"a" * 150_000 + b"-" + b"9" * 150_000  # valid punycode syntax, the quadratic case
    with HealthProbe(server.url, interval=0.02) as probe:
        time.sleep(0.1)
        t0 = time.perf_counter()
        status, headers, body = exchange(server, multipart(field, charset))
        took = time.perf_counter() - t0
        time.sleep(0.1)
    error = assert_envelope(status, headers, body, 415, "unsupported_media_type")
    assert charset in error["message"] and "utf-8" in error["message"]
    assert took < 1.0 and probe.latencies_ms and max(probe.latencies_ms) < 1000, (took, probe.latencies_ms)
    assert set(probe.statuses) == {200} and probe.errors == 0, (probe.statuses, probe.errors)


@pytest.mark.parametrize("charset", ["utf-8", "UTF8", '"utf-8"', "us-ascii", "iso-8859-1", "latin1"])
def test_the_usual_multipart_charsets_are_served(server: ServerProcess, charset: str) -> None:
    status, _, body = exchange(server, multipart(b"a field", charset))
    assert status == 200, body
    assert json.loads(body)["width"] == 32


def preflight(origin: str, method: str = "POST") -> bytes:
    return http_request(f"OPTIONS /segment HTTP/1.1\nHost: x\nOrigin: {origin}\n"
                        f"Access-Control-Request-Method: {method}\nAccess-Control-Request-Headers: x-api-key")


def test_a_refused_cors_preflight_is_json(server: ServerProcess) -> None:
    """Starlette's CORS middleware refused a preflight in plain text (400 `Disallowed CORS origin`)."""
    before = metric_sum(server.metrics(), "segment_rejected_total", reason="bad_request")
    status, headers, _ = exchange(server, preflight(ORIGIN))
    assert status == 200 and headers["access-control-allow-origin"] == ORIGIN
    for request, what in ((preflight("http://evil.example"), "origin"), (preflight(ORIGIN, "DELETE"), "method")):
        status, headers, body = exchange(server, request)
        error = assert_envelope(status, headers, body, 400, "bad_request")
        assert what in error["message"]
        assert "origin" in headers["vary"].lower()  # the CORS headers of the refusal are kept
    assert metric_sum(server.metrics(), "segment_rejected_total", reason="bad_request") == before + 2


@pytest.mark.parametrize("path", ["/", "/static/index.html"])
def test_a_bad_range_on_the_web_page_is_json(server: ServerProcess, path: str) -> None:
    """FileResponse answered a bad `Range` in plain text: 416 with an empty body, 400 `Only support bytes range`."""
    size = len(exchange(server, http_request(f"GET {path} HTTP/1.1\nHost: x"))[2])
    before = metric_sum(server.metrics(), "segment_rejected_total", reason="range_not_satisfiable")
    status, headers, body = exchange(server, http_request(f"GET {path} HTTP/1.1\nHost: x\nRange: bytes=99999999-"))
    assert_envelope(status, headers, body, 416, "range_not_satisfiable")
    assert headers["content-range"] == f"bytes */{size}"
    status, headers, body = exchange(server, http_request(f"GET {path} HTTP/1.1\nHost: x\nRange: lines=1-2"))
    assert "bytes" in assert_envelope(status, headers, body, 400, "bad_request")["message"]
    status, headers, body = exchange(server, http_request(f"GET {path} HTTP/1.1\nHost: x\nRange: bytes=0-9"))
    assert status == 206 and body == b"<!doctype " and headers["content-range"] == f"bytes 0-9/{size}"
    assert metric_sum(server.metrics(), "segment_rejected_total", reason="range_not_satisfiable") == before + 1


def test_a_plain_error_turned_json_keeps_the_connection(server: ServerProcess) -> None:
    """The envelope is a whole response with its own length: the next request on the connection is served."""
    with rawhttp.connect(server.url) as sock:
        sock.sendall(http_request("GET /static/index.html HTTP/1.1\nHost: x\nRange: bytes=99999999-")
                     + http_request("GET /healthz HTTP/1.1\nHost: x"))
        answers = read_responses(sock, 2, 10)
    assert [status for status, _, _ in answers] == [416, 200]
    assert json.loads(answers[1][2]) == {"status": "ok"}


def test_head_of_a_bad_range_has_no_body(server: ServerProcess) -> None:
    with socket.create_connection(rawhttp.split_url(server.url), timeout=10) as sock:
        sock.sendall(http_request("HEAD /static/index.html HTTP/1.1\nHost: x\nRange: bytes=99999999-\n"
                                  "Connection: close"))
        raw, _ = rawhttp.read_response(sock, 10)
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert rawhttp.status_of(head) == 416 and b"content-type: application/json" in head and rest == b""


def tiff_with_tags(extra: int, big: bool) -> bytes:
    """A valid 32x24 RGB TIFF (BigTIFF if `big`) whose first directory also lists `extra` private tags (Pillow
    reads each one in Python when it opens the file)."""
    pixels = scene(32, 24).tobytes()
    order_fmt, head_size, count_fmt, entry_fmt = ("<Q", 16, "<Q", "<HHQ8s") if big else ("<I", 8, "<H", "<HHI4s")
    value_size = 8 if big else 4

    def inline(*shorts: int) -> bytes:
        return struct.pack(f"<{len(shorts)}H", *shorts).ljust(value_size, b"\0")

    def offset(value: int) -> bytes:
        return struct.pack(order_fmt, value)

    bits_at = head_size + len(pixels)  # BitsPerSample's three values do not fit inline in a classic TIFF
    ifd_at = bits_at + 8
    tags = [(256, 3, 1, inline(32)), (257, 3, 1, inline(24)),
            (258, 3, 3, inline(8, 8, 8) if big else offset(bits_at)), (259, 3, 1, inline(1)),
            (262, 3, 1, inline(2)), (273, 4, 1, offset(head_size)), (277, 3, 1, inline(3)),
            (278, 3, 1, inline(24)), (279, 4, 1, offset(len(pixels)))]
    tags += [(1000 + i % 30000, 3, 1, inline(1)) for i in range(extra)]  # private tags, the same few repeated
    tags.sort(key=lambda tag: tag[0])
    header = b"II+\0" + struct.pack("<HHQ", 8, 0, ifd_at) if big else b"II*\0" + struct.pack("<I", ifd_at)
    ifd = (struct.pack(count_fmt, len(tags)) + b"".join(struct.pack(entry_fmt, *tag) for tag in tags)
           + offset(0))
    return header + pixels + struct.pack("<4H", 8, 8, 8, 0) + ifd


@pytest.mark.parametrize(("extra", "big"), [(200_000, True), (30_000, False), (2_000, False)])
def test_a_tiff_directory_flood_is_refused_before_pillow_reads_it(server: ServerProcess, extra: int,
                                                                    big: bool) -> None:
    """A 32x24 image in a directory of 200,000 entries (a BigTIFF's count is 64-bit; 900,000 in 18 MB cost 1.9 s of
    a codec thread, four at once 7.4 s each) or 30,000 (0.3 s): refused by its count, in milliseconds."""
    data = tiff_with_tags(extra, big)
    t0 = time.perf_counter()
    status, headers, body = exchange(server, http_request(
        f"POST /segment?output=stats HTTP/1.1\nHost: x\nContent-Type: image/tiff\nContent-Length: {len(data)}",
        data))
    took = time.perf_counter() - t0
    error = assert_envelope(status, headers, body, 413, "image_too_large")
    assert "entries" in error["message"] and took < 1.0, took


@pytest.mark.parametrize("big", [True, False])
def test_a_tiff_with_an_ordinary_directory_is_served(server: ServerProcess, big: bool) -> None:
    data = tiff_with_tags(500, big)  # well within the limit, and the same file layout as the refused ones
    status, _, body = exchange(server, http_request(
        f"POST /segment?output=stats HTTP/1.1\nHost: x\nContent-Type: image/tiff\nContent-Length: {len(data)}",
        data))
    assert status == 200, body
    assert (json.loads(body)["width"], json.loads(body)["height"]) == (32, 24)
