"""Request heads at and around the head-size limit, pipelined and keep-alive requests, and malformed heads,
against a real `segment-serve` process over raw sockets. The limit covers the request line and the headers,
including the blank line that ends them; how the bytes are split into writes must not matter. The same limit
bounds what a chunked body may send in a row that is not body: chunk extensions and trailer fields."""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testkit import rawhttp
from testkit.load import probe
from testkit.metrics import metric_sum
from testkit.procstat import cpu_seconds
from testkit.rawhttp import http_request, read_response, read_responses, status_of
from testkit.server import ServerProcess
from tests.service.svc_helpers import png_bytes, scene

LIMIT = 16 * 1024
HEAD_S = 1.0
ENV = {"SEGMENT_MAX_HEADER_BYTES": str(LIMIT), "SEGMENT_HEADER_TIMEOUT_S": str(HEAD_S),
       "SEGMENT_INTRA_OP_THREADS": "1"}
TINY = png_bytes(scene(32, 24))


@pytest.fixture(scope="module")
def server(rel_rule_model: Path) -> Iterator[ServerProcess]:
    with ServerProcess(rel_rule_model, **ENV) as proc:
        yield proc.wait_ready()


def connect(server: ServerProcess) -> socket.socket:
    return rawhttp.connect(server.url, nodelay=True)  # each write its own segment, so its own read


def head_of(size: int, path: str = "/healthz") -> bytes:
    """A GET head of exactly `size` bytes, blank line included, padded with one header."""
    start, end = f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Pad: ".encode(), b"\r\n\r\n"
    pad = size - len(start) - len(end)
    assert pad >= 0
    return start + b"a" * pad + end


def request_line_of(size: int, pad: int = 0) -> bytes:
    """A GET head whose request line, CRLF included, is exactly `size` bytes, then `pad` bytes of headers."""
    start, end = b"GET /", b" HTTP/1.1\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end + b"Host: x\r\nX-Pad: " + b"a" * pad + b"\r\n\r\n"


def send_in_pieces(sock: socket.socket, data: bytes, cuts: list[int], pause_s: float = 0.02) -> None:
    """Send `data` cut at the offsets `cuts`, pausing between pieces so that each arrives in its own read;
    stop quietly when the server has answered and closed."""
    bounds = [0, *cuts, len(data)]
    try:
        for a, b in itertools.pairwise(bounds):
            sock.sendall(data[a:b])
            time.sleep(pause_s)
    except OSError:
        pass


def trickle(sock: socket.socket, piece: bytes, up_to: int) -> int | None:
    """Send `piece` again and again, 1 ms apart, until `up_to` bytes; the bytes sent when the server closed the
    connection on us, or None if it never did."""
    sent = 0
    try:
        while sent < up_to:
            sock.sendall(piece)
            sent += len(piece)
            time.sleep(0.001)
    except OSError:
        return sent
    return None


def error_of(raw: bytes) -> dict:
    return json.loads(raw.partition(b"\r\n\r\n")[2])["error"]


def assert_refused(raw: bytes, status: int, code: str) -> None:
    """A JSON refusal with `Connection: close`, and the server closed the connection."""
    assert status_of(raw) == status, raw[:300]
    assert error_of(raw)["code"] == code
    assert b"connection: close" in raw.partition(b"\r\n\r\n")[0].lower()


def rejected(server: ServerProcess, reason: str) -> float:
    return metric_sum(server.metrics(), "segment_rejected_total", reason=reason)


SPLITS = {
    "one write": lambda n: [],
    "blank line split across writes": lambda n: [n - 2],
    "1000-byte writes": lambda n: list(range(1000, n, 1000)),
    "a byte, then the rest": lambda n: [1],
}


@pytest.mark.parametrize("split", SPLITS, ids=list(SPLITS))
def test_a_head_at_the_limit_is_served_and_one_byte_more_refused(server: ServerProcess, split: str) -> None:
    for size, expected in ((LIMIT, 200), (LIMIT + 1, 431)):
        sock = connect(server)
        data = head_of(size)
        send_in_pieces(sock, data, SPLITS[split](len(data)))
        got = read_responses(sock, 1, 5)
        sock.close()
        assert [status for status, _, _ in got] == [expected], (size, got[:1])
        if expected == 431:
            _, head, body = got[0]
            assert_refused(head + b"\r\n\r\n" + body, 431, "headers_too_large")


def test_an_oversized_head_trickled_in_small_writes_is_refused_at_the_limit(server: ServerProcess) -> None:
    """Headers trickled 100 bytes at a time, never ending: refused once the limit is passed, not at the end."""
    before = rejected(server, "headers_too_large")
    sock = connect(server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    refused_after = trickle(sock, b"X-Many: " + b"a" * 90 + b"\r\n", 4 * LIMIT)
    raw, _ = read_response(sock, 5)
    sock.close()
    assert_refused(raw, 431, "headers_too_large")
    assert refused_after is None or refused_after < 3 * LIMIT, refused_after
    assert rejected(server, "headers_too_large") == before + 1


@pytest.mark.parametrize("split", ["one write", "1000-byte writes"])
def test_a_request_line_over_the_limit_is_414(server: ServerProcess, split: str) -> None:
    """A request line (CRLF included) longer than the limit is 414; one that fits, in a head that does not, 431."""
    for size, status, code in ((LIMIT + 1, 414, "uri_too_long"), (LIMIT - 10, 431, "headers_too_large")):
        data = request_line_of(size, pad=100)
        sock = connect(server)
        send_in_pieces(sock, data, SPLITS[split](len(data)))
        raw, _ = read_response(sock, 5)
        sock.close()
        assert_refused(raw, status, code)


def test_keep_alive_and_pipelined_requests_are_answered_in_order(server: ServerProcess) -> None:
    """Requests one after another on a connection, then five pipelined in one write (a POST with its body among
    them), then one more after a pause: every answer, in order."""
    sock = connect(server)
    for _ in range(3):
        sock.sendall(http_request("GET /healthz HTTP/1.1\nHost: x"))
        assert [s for s, _, _ in read_responses(sock, 1, 5)] == [200]
    post = http_request(f"POST /segment?output=stats HTTP/1.1\nHost: x\nContent-Type: image/png\n"
                        f"Content-Length: {len(TINY)}", TINY)
    gets = [http_request(f"GET {path} HTTP/1.1\nHost: x") for path in ("/healthz", "/nope", "/readyz")]
    sock.sendall(gets[0] + post + b"".join(gets[1:]) + http_request("GET /healthz HTTP/1.1\nHost: x"))
    got = read_responses(sock, 5, 10)
    assert [s for s, _, _ in got] == [200, 200, 404, 200, 200], [g[:2] for g in got]
    assert json.loads(got[1][2])["width"] == 32
    time.sleep(0.2)
    sock.sendall(http_request("GET /healthz HTTP/1.1\nHost: x"))
    assert [s for s, _, _ in read_responses(sock, 1, 5)] == [200]
    sock.close()


@pytest.mark.parametrize("first", ["get", "post"])
def test_an_oversized_head_pipelined_behind_a_request_is_refused_after_its_answer(server: ServerProcess,
                                                                                  first: str) -> None:
    """The request before it is answered first; then 431 and the connection closes."""
    before = (http_request("GET /healthz HTTP/1.1\nHost: x") if first == "get" else
              http_request(f"POST /segment?output=stats HTTP/1.1\nHost: x\nContent-Type: image/png\n"
                           f"Content-Length: {len(TINY)}", TINY))
    sock = connect(server)
    sock.sendall(before + head_of(LIMIT + 500))
    got = read_responses(sock, 3, 10)
    sock.close()
    assert [s for s, _, _ in got] == [200, 431], [g[:2] for g in got]
    assert error_of(got[1][1] + b"\r\n\r\n" + got[1][2])["code"] == "headers_too_large"


@pytest.mark.parametrize("data", [
    b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n",
    b"NOT AN HTTP REQUEST\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"GET /healthz HTTP/1.1\nHost: x\n\n",
], ids=["header-without-colon", "garbage", "two-content-lengths", "bare-LF-line-ends"])
def test_malformed_heads_are_json_400(server: ServerProcess, data: bytes) -> None:
    before = rejected(server, "bad_request")
    sock = connect(server)
    sock.sendall(data)
    raw, _ = read_response(sock, 5)
    sock.close()
    assert_refused(raw, 400, "bad_request")
    assert rejected(server, "bad_request") == before + 1


def test_a_malformed_head_after_a_request_is_refused_after_its_answer(server: ServerProcess) -> None:
    sock = connect(server)
    sock.sendall(http_request("GET /healthz HTTP/1.1\nHost: x") + b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n")
    got = read_responses(sock, 3, 5)
    sock.close()
    assert [s for s, _, _ in got] == [200, 400], [g[:2] for g in got]


def test_a_head_cut_off_behind_a_pipelined_request_times_out_after_its_answer(server: ServerProcess) -> None:
    before = rejected(server, "header_timeout")
    sock = connect(server)
    t0 = time.perf_counter()
    sock.sendall(http_request("GET /healthz HTTP/1.1\nHost: x") + b"GET /healthz HTTP/1.1\r\nHo")
    got = read_responses(sock, 3, HEAD_S + 5)
    took = time.perf_counter() - t0
    sock.close()
    assert [s for s, _, _ in got] == [200, 408] and took < HEAD_S + 4, ([g[:2] for g in got], took)
    assert rejected(server, "header_timeout") == before + 1


def test_ordinary_clients_are_unaffected(server: ServerProcess) -> None:
    r = httpx.post(f"{server.url}/segment", content=TINY, params={"output": "stats"},
                   headers={"X-Normal": "a" * 8000, "Content-Type": "image/png"}, timeout=10)
    assert r.status_code == 200 and r.json()["width"] == 32


CHUNKED = "POST /segment HTTP/1.1\nHost: x\nContent-Type: image/png\nTransfer-Encoding: chunked"
# After a first chunk: the start of framing that never ends, and what one more 100-byte piece of it is.
FRAMINGS = {"trailer fields": (b"5\r\nhello\r\n0\r\n", b"X-T: " + b"a" * 93 + b"\r\n"),
            "one trailer value": (b"5\r\nhello\r\n0\r\nX-T: ", b"a" * 100),
            "chunk extension": (b"5\r\nhello\r\n5;x=", b"a" * 100)}


@pytest.mark.parametrize("framing", FRAMINGS, ids=list(FRAMINGS))
def test_chunked_framing_trickled_past_the_limit_is_refused_at_the_limit(server: ServerProcess,
                                                                         framing: str) -> None:
    """Trailer fields (or a chunk extension) after a chunked body, trickled 100 bytes at a time and never ending:
    431 once about the head limit has arrived, as for a head. They used to be parsed without limit, each trailer
    field added to the request's headers (2.5 GB of server memory for 98 MiB of them)."""
    before = rejected(server, "headers_too_large")
    start, piece = FRAMINGS[framing]
    sock = connect(server)
    sock.sendall(http_request(CHUNKED) + start)
    refused_after = trickle(sock, piece, 6 * LIMIT)
    raw, _ = read_response(sock, 5)
    sock.close()
    assert_refused(raw, 431, "headers_too_large")
    assert refused_after is None or refused_after < 3 * LIMIT, refused_after
    assert rejected(server, "headers_too_large") == before + 1


def test_a_streamed_trailer_is_refused_without_stalling_others(server: ServerProcess) -> None:
    """One trailer value streamed in 1 MiB writes: refused after about the limit, the server spends next to no
    CPU on it and /healthz on other connections stays fast. It used to be joined again on every read (3 s of
    server CPU for 46 MiB, /healthz taking 2 s meanwhile)."""
    health: list[float] = []
    streaming = threading.Event()
    streaming.set()

    def probe_health() -> None:
        while streaming.is_set():
            health.extend(probe(server.url, b"", 1, path="/healthz", pause_s=0).latencies_ms)

    prober = threading.Thread(target=probe_health, daemon=True)
    prober.start()
    cpu0, t0 = cpu_seconds(server.pid), time.perf_counter()
    sock = connect(server)
    sock.sendall(http_request(CHUNKED) + FRAMINGS["one trailer value"][0])
    sent = 0
    try:
        while sent < 32 << 20:
            sent += sock.send(b"a" * (1 << 20))
    except OSError:
        pass  # the server answered and closed
    took, cpu = time.perf_counter() - t0, cpu_seconds(server.pid) - cpu0
    streaming.clear()
    prober.join(30)
    sock.close()
    # What the kernel's socket buffers absorbed before the refusal reached us: far less than the cap.
    assert sent < 32 << 20 and took < 5, (sent, took)
    assert cpu < 1.0, cpu
    health += probe(server.url, b"", 5, path="/healthz", pause_s=0).latencies_ms
    assert max(health) < 500, health


@pytest.mark.parametrize("body, status, code", [
    (b"zz\r\nhello\r\n0\r\n\r\n", 400, "bad_request"),
    (b"5\r\nhello\r\n0\r\n" + b"X-T: a\r\n" * (LIMIT // 2) + b"\r\n", 431, "headers_too_large"),
], ids=["bad chunk size", "oversized trailers"])
def test_a_bad_chunked_body_pipelined_behind_a_request_is_refused_after_its_answer(
        server: ServerProcess, body: bytes, status: int, code: str) -> None:
    """The request before it is answered first, then the refusal (it used to come first, and alone)."""
    sock = connect(server)
    sock.sendall(http_request("GET /outputs HTTP/1.1\nHost: x") + http_request(CHUNKED) + body)
    got = read_responses(sock, 3, 10)
    sock.close()
    assert [s for s, _, _ in got] == [200, status], [g[:2] for g in got]
    assert error_of(got[1][1] + b"\r\n\r\n" + got[1][2])["code"] == code
    assert b"connection: close" in got[1][1].lower()
