"""Pipelined requests are taken one at a time: a client that writes megabytes of tiny pipelined requests and reads
no answer costs the server a bounded amount of memory and stalls no one else, and a client that
pipelines and reads its answers has every request answered, in order.

uvicorn parsed every request of a read at once and queued a request cycle and scope (about 2.3 KB) for each, and
resumed reading after every answer: ten such clients writing 1 MB each took the server from 141 to 872 MiB and held
/healthz up to 6 s and a /segment 12 s (service/http_requests.py has the fix)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from service.http_requests import HELD_LIMIT
from service.server import HardenedHttpToolsProtocol
from service.settings import Settings
from testkit import rawhttp
from testkit.load import HealthProbe
from testkit.rawhttp import read_responses
from testkit.server import ServerProcess
from tests.service.svc_helpers import png_bytes, scene
from tests.service.test_http_protocol import CountingParser, FakeTransport, body_app, feed

TINY = png_bytes(scene(32, 24))
FLOOD_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture(scope="module")
def server(rel_rule_model: Path) -> Iterator[ServerProcess]:
    with ServerProcess(rel_rule_model, SEGMENT_INTRA_OP_THREADS="1") as proc:
        yield proc.wait_ready()


# -- in-process: where the parser stops -----------------------------------------------------------------------------
class PausingTransport(FakeTransport):
    """The fake transport, remembering whether reading is paused."""

    paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def test_a_read_of_thousands_of_pipelined_requests_is_parsed_one_request_at_a_time() -> None:
    """5,000 GETs in one read (150 KB), then another read: the parser takes two requests of the first, holds the
    rest unparsed and pauses reading; every request is then answered, in order, with never more than one queued."""
    requests = [b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5000)]
    first, second = b"".join(requests[:4990]), b"".join(requests[4990:])
    queued_at_start: list[int] = []

    async def run() -> tuple[bytes, int, bool, int]:
        cls = HardenedHttpToolsProtocol.configured(Settings(header_timeout_s=5))
        proto: Any = None

        async def echo_path(scope: dict, receive: Any, send: Any) -> None:
            queued_at_start.append(len(proto.pipeline))
            body = scope["path"].encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        proto = cls(config=Config(app=echo_path, http=cls), server_state=ServerState(), app_state={},
                    _loop=asyncio.get_running_loop())
        transport = PausingTransport()
        proto.connection_made(transport)
        parser = proto.parser = CountingParser(proto.parser)
        proto.data_received(first)
        fed_of_first = parser.fed
        proto.data_received(second)  # arrives while the first read is held: held too
        paused = transport.paused
        deadline = time.monotonic() + 30
        while transport.written.count(b"HTTP/1.1 200") < len(requests) and time.monotonic() < deadline:
            await asyncio.sleep(0)  # each answer starts the queued request, whose task answers on a later turn
        resumed = not transport.paused
        proto.connection_lost(None)
        return bytes(transport.written), fed_of_first, paused, parser.fed, resumed

    written, fed_of_first, paused, fed, resumed = asyncio.run(run())
    assert fed_of_first == len(requests[0]) + len(requests[1]), fed_of_first  # the running one and one queued
    assert len(first) - fed_of_first > HELD_LIMIT and paused  # more than the limit held: reading paused
    assert fed == len(first) + len(second) and resumed  # all parsed in the end, and reading resumed
    answered = [line.rsplit(b"\r\n", 1)[-1] for line in written.split(b"HTTP/1.1 ")[1:]]
    assert answered == [b"/%d" % i for i in range(len(requests))]
    assert max(queued_at_start) <= 1, max(queued_at_start)


BIG = bytes(range(256)) * 400 + b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"  # a blank line, a request: body
CHUNKED_BIG = b"".join(b"%x\r\n%s\r\n" % (len(BIG[i:i + 5000]), BIG[i:i + 5000]) for i in range(0, len(BIG), 5000))
BODIES = {
    "content-length": b"Content-Length: %d\r\n\r\n" % len(BIG) + BIG,
    "chunked": b"Transfer-Encoding: chunked\r\n\r\n" + CHUNKED_BIG + b"0\r\n\r\n",
}


@pytest.mark.parametrize("framing", BODIES, ids=list(BODIES))
@pytest.mark.parametrize("read", [0, 7000], ids=["one read", "7000-byte reads"])
def test_bodies_pipelined_behind_requests_are_held_and_read_whole(framing: str, read: int) -> None:
    """Two 100 KB uploads (holding a blank line and a request line, as binary data may), each pipelined behind a
    GET and followed by one, in one read or many: every request answered in order, each body whole."""
    post = b"POST /up HTTP/1.1\r\nHost: x\r\n" + BODIES[framing]
    get = b"GET /get HTTP/1.1\r\nHost: x\r\n\r\n"
    data = get + post + get + post + get
    written, _, fed, refused = feed([data[i:i + read] for i in range(0, len(data), read)] if read else [data],
                                         body_app)
    answers = re.findall(rb"\r\n\r\n(\d+) ", written)
    assert answers == [b"0", b"%d" % len(BIG)] * 2 + [b"0"], written[-300:]
    assert fed == len(data) and not refused


# -- a real server, real sockets --------------------------------------------------------------------------------
def flood(url: str, connections: int, per_connection: int) -> tuple[list[socket.socket], int]:
    """`connections` clients each writing `per_connection` bytes of pipelined GET /healthz in one non-blocking
    send and reading nothing (a tiny receive buffer, as a client that never reads): the sockets, bytes sent."""
    blob = FLOOD_REQUEST * (per_connection // len(FLOOD_REQUEST))
    socks, sent = [], 0
    for _ in range(connections):
        sock = rawhttp.connect(url)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):  # the kernel took none of it
            sent += sock.send(blob)
        socks.append(sock)
    return socks, sent


def timed_segment(url: str) -> tuple[int, float]:
    """A normal client's POST /segment: its status and seconds."""
    t0 = time.perf_counter()
    try:
        r = httpx.post(f"{url}/segment", content=TINY, params={"output": "labels"},
                       headers={"Content-Type": "image/png"}, timeout=60)
        return r.status_code, time.perf_counter() - t0
    except httpx.HTTPError:
        return 0, time.perf_counter() - t0


def test_pipelined_floods_that_read_nothing_leave_memory_and_latency_bounded(server: ServerProcess) -> None:
    """Ten clients each write 1 MB of pipelined GET /healthz (30,000 requests) and read no answer: the server's
    RSS grows by tens of MiB at most (it grew by 690 MiB), and a normal client's /healthz and /segment are
    answered meanwhile (/healthz waited up to 6 s, /segment 7 to 12 s); the server serves on once they leave."""
    rss_before = server.memory_kib()["VmRSS"]
    peak = rss_before
    segments: list[tuple[int, float]] = []
    with HealthProbe(server.url, interval=0.05) as health:
        time.sleep(0.3)
        socks, sent = flood(server.url, 10, 1_000_000)
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                segments.append(timed_segment(server.url))
                peak = max(peak, server.memory_kib()["VmRSS"])
                time.sleep(0.2)
        finally:
            for sock in socks:
                sock.close()
    peak = max(peak, server.memory_kib()["VmRSS"])  # RSS stays near its peak: freed memory stays in the heap
    growth_mib = (peak - rss_before) / 1024
    summary = health.summary()
    print(f"sent {sent / 1e6:.1f} MB; RSS {rss_before // 1024} -> peak {peak // 1024} MiB (+{growth_mib:.0f}); "
          f"/healthz {summary}; /segment {segments}")
    assert sent >= 5_000_000, sent  # the kernel took the flood: the server could have read it all
    assert growth_mib < 100, growth_mib
    assert health.errors == 0 and set(health.statuses) == {200}
    assert summary["max"] < 1000, summary
    # The flood's requests are served meanwhile (about 5,000 a second: the kernel takes their answers), so a /segment
    # shares the event loop and the two CPUs with them: a few hundred ms, not the 60 ms of an idle server.
    assert segments and all(status == 200 for status, _ in segments), segments
    assert max(seconds for _, seconds in segments) < 5.0, segments
    assert timed_segment(server.url)[0] == 200


def test_every_pipelined_request_of_a_client_that_reads_is_answered_in_order(server: ServerProcess) -> None:
    """200 requests in one write, every tenth a POST /segment with its image, the rest GET /healthz, each with its
    own X-Request-ID, the answers read as they come: 200 answers, in the order sent, each with its status."""
    requests, expected = [], []
    for i in range(200):
        rid = f"pipe-{i}"
        if i % 10 == 5:
            requests.append(rawhttp.http_request(
                f"POST /segment?output=stats HTTP/1.1\nHost: x\nX-Request-ID: {rid}\nContent-Type: image/png\n"
                f"Content-Length: {len(TINY)}", TINY))
        else:
            requests.append(rawhttp.http_request(f"GET /healthz HTTP/1.1\nHost: x\nX-Request-ID: {rid}"))
        expected.append(rid.encode())
    sock = rawhttp.connect(server.url, timeout=30)
    writer = threading.Thread(target=sock.sendall, args=(b"".join(requests),), daemon=True)
    writer.start()
    try:
        answers = read_responses(sock, len(requests), timeout=60)
    finally:
        writer.join(10)
        sock.close()
    ids = [next((line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                 if line.lower().startswith(b"x-request-id:")), b"") for _, head, _ in answers]
    assert ids == expected
    assert all(status == 200 for status, _, _ in answers), [status for status, _, _ in answers]
