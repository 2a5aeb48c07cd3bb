"""Clients that stop reading their answers, against a real `segment-serve` process over raw sockets: an answer left
unread is dropped with its connection at the send deadline (it used to stay in the server's memory for as long as
the client kept the connection open), while a slow reader that keeps reading gets the whole answer, and other
clients are answered meanwhile. The deadline is set short (2 s) so that every case takes seconds."""

from __future__ import annotations

import io
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from testkit import rawhttp
from testkit.metrics import metric_sum
from testkit.rawhttp import http_request, status_of
from testkit.server import ServerProcess
from tests.service.svc_helpers import png_bytes, scene

SEND_S = 2.0
MIN_RATE = 256 * 1024
ENV = {"SEGMENT_SEND_TIMEOUT_S": str(SEND_S), "SEGMENT_SEND_MIN_RATE": str(MIN_RATE),
       "SEGMENT_INTRA_OP_THREADS": "1", "SEGMENT_MAX_BATCH_SIZE": "4"}
UNREAD = 3  # connections that never read their answers
TINY = png_bytes(scene(32, 24))


def noisy_jpeg(side: int) -> bytes:
    """A photo of noise: its overlay PNG barely compresses, so the answer is several MB (more than the kernel's
    socket buffers hold)."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), np.uint8)).save(buf, "JPEG",
                                                                                             quality=40)
    return buf.getvalue()


PHOTO = noisy_jpeg(1600)


def overlay_request(connection: str = "keep-alive") -> bytes:
    return http_request("POST /segment?output=overlay&format=png HTTP/1.1\nHost: x\nContent-Type: image/jpeg\n"
                        f"Connection: {connection}\nContent-Length: {len(PHOTO)}", PHOTO)


@pytest.fixture(scope="module")
def server(rel_rule_model: Path) -> Iterator[ServerProcess]:
    with ServerProcess(rel_rule_model, log_level="info", **ENV) as proc:
        yield proc.wait_ready()


@pytest.fixture(scope="module")
def answer(server: ServerProcess) -> bytes:
    """The overlay PNG, read at full speed (which also warms the server's allocations up)."""
    r = httpx.post(f"{server.url}/segment", params={"output": "overlay", "format": "png"}, content=PHOTO,
                   headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
    assert len(r.content) > 5_000_000, len(r.content)  # more than loopback's socket buffers take in
    return r.content


def unread_request(server: ServerProcess, connection: str) -> socket.socket:
    """A connection whose client sends the request and reads nothing (a small receive buffer, as an attacker's)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(rawhttp.split_url(server.url))
    sock.sendall(overlay_request(connection))
    return sock


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """What arrives until the server closes or resets the connection (True), or `timeout` passes (False)."""
    sock.settimeout(timeout)
    got = b""
    try:
        while chunk := sock.recv(1 << 20):
            got += chunk
    except TimeoutError:
        return got, False
    except OSError:  # reset: the server aborted it
        pass
    return got, True


def server_side(server: ServerProcess, socks: list[socket.socket]) -> list[tuple[str, int]]:
    """The server's end of these client connections as the kernel lists it (/proc/net/tcp): (TCP state in hex,
    bytes queued to send) for each that still exists; '01' is ESTABLISHED."""
    port = rawhttp.split_url(server.url)[1]
    clients = {sock.getsockname()[1] for sock in socks}
    found = []
    for line in Path(f"/proc/{server.pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
        if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) in clients:
            found.append((state, int(queues.split(":")[0], 16)))
    return found


@pytest.mark.parametrize("connection", ["keep-alive", "close"])
def test_an_unread_answer_is_dropped_at_the_send_deadline(server: ServerProcess, answer: bytes,
                                                          connection: str) -> None:
    """Clients that never read their multi-MB answers: each connection is aborted about SEND_S after its answer
    stalled (not kept for as long as the client likes; with `Connection: close`, not kept open by the close waiting
    for the answer to go out), with what it held, while others get 200."""
    done = metric_sum(server.metrics(), "segment_rejected_total", reason="send_timeout")
    aborted_before = server.log.count("aborted a connection whose client stopped reading")
    socks = [unread_request(server, connection) for _ in range(UNREAD)]
    try:
        others, t0 = [], time.monotonic()
        while True:  # another client's request first: on a busy host the aborts can come before a scrape does
            others.append(httpx.post(f"{server.url}/segment", content=TINY, params={"output": "stats"},
                                     timeout=10).status_code)
            if metric_sum(server.metrics(), "segment_rejected_total", reason="send_timeout") >= done + UNREAD:
                break
            assert time.monotonic() - t0 < 30, f"unread answers still held after 30 s:\n{server.log[-3000:]}"
            time.sleep(0.2)
        assert set(others) == {200}, others
        aborts = re.findall(r"aborted a connection whose client stopped reading: (\d+) bytes unsent after (\d+) s",
                            server.log)[aborted_before:]
        assert len(aborts) == UNREAD, server.log[-3000:]
        assert all(int(unsent) > 0 and int(after) <= SEND_S + 1.5 for unsent, after in aborts), aborts
        # Gone from the server, the kernel's send queue with it (a reset, not a FIN behind MBs still to send).
        assert server_side(server, socks) == [], server_side(server, socks)
        for sock in socks:
            got, closed = read_until_closed(sock, 10)
            assert closed and len(got) < len(answer), (closed, len(got))  # cut off, not the whole answer
    finally:
        for sock in socks:
            sock.close()


def test_a_slow_reader_gets_the_whole_answer(server: ServerProcess, answer: bytes) -> None:
    """A client reading at 1 MiB/s (4x SEND_MIN_RATE) takes several times SEND_S over the answer and is never cut
    off: every byte it takes earns it time."""
    rate = 4 * MIN_RATE
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.connect(rawhttp.split_url(server.url))
    try:
        sock.sendall(overlay_request())
        sock.settimeout(30)
        got, t0 = b"", None
        head, _, body = b"", b"", b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
            if t0 is None:
                t0 = time.monotonic()  # the answer has begun: from here on, read at `rate`
            head, sep, body = got.partition(b"\r\n\r\n")
            if sep and len(body) >= len(answer):
                break
            time.sleep(max(0.0, t0 + len(got) / rate - time.monotonic()))
        assert t0 is not None
        took = time.monotonic() - t0
    finally:
        sock.close()
    assert status_of(head) == 200 and body == answer, (head[:200], len(body), len(answer))
    assert took > 2 * SEND_S, took  # slower than the deadline alone allows: the rate is what kept it
