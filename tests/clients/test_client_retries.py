"""The client's retries against real servers on loopback ports.

503 `overloaded`: eight threads sharing one client (as `segment -j 8` does), refused by a real server whose queue
is full (its onnxruntime runs wait on a gate), came back all at the same millisecond, one Retry-After (1 s) later
and again 1 s after that, then gave up. Now each wait is stretched at random (Retry-After x 1-1.5) and doubles per
retry. A connection refused (nothing was sent) is retried with the same backoff, so a server that is restarting is
waited for; a request that may have reached the server (the connection broke before the answer, or the answer
timed out) is not sent again. The attempts are recorded by a real httpx transport, on real sockets.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.client import AsyncSegmentClient, SegmentApiError, SegmentClient, SegmentConnectionError
from service.settings import Settings
from tests.reliability.rule_helpers import rule_labels
from tests.service.gated_server import GatedServer
from tests.service.svc_helpers import LiveServer, make_rule_model, png_bytes, scene

THREADS = 8
RETRY_AFTER = 1.0  # what the service sends with 503 overloaded


class Recording(httpx.HTTPTransport):
    """A real HTTP transport that notes who sent each request, and when."""

    def __init__(self) -> None:
        super().__init__(limits=httpx.Limits(max_connections=THREADS + 2))
        self.sent: list[tuple[int, float]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((threading.get_ident(), time.monotonic()))
        return super().handle_request(request)


class AsyncRecording(httpx.AsyncHTTPTransport):
    """The asyncio twin of `Recording`; the sender is the asyncio task."""

    def __init__(self) -> None:
        super().__init__(limits=httpx.Limits(max_connections=THREADS + 2))
        self.sent: list[tuple[int, float]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((id(asyncio.current_task()), time.monotonic()))
        return await super().handle_async_request(request)


def gaps(sent: list[tuple[int, float]]) -> list[list[float]]:
    """Per sender, the seconds between its consecutive attempts."""
    times: dict[int, list[float]] = defaultdict(list)
    for sender, at in sent:
        times[sender].append(at)
    return [[b - a for a, b in itertools.pairwise(ts)] for ts in times.values()]


@pytest.fixture
def full_server(tmp_path: Path) -> Iterator[GatedServer]:
    """A real server whose one inference slot and one queue place are taken (its model runs wait on the gate):
    every other `/segment` is refused 503 `overloaded` with Retry-After until the test ends."""
    server = GatedServer(make_rule_model(tmp_path / "rule.onnx"), max_batch_size=1, max_queue=1,
                         concurrent_batches=1, max_wait_ms=1, worker_threads=2)
    def post(i: int) -> httpx.Response:
        return httpx.post(f"{server.live.url}/segment", content=png_bytes(scene(96, 60 + i)), timeout=60)

    with server.running(), ThreadPoolExecutor(2) as pool:
        server.gate.clear()
        held = [pool.submit(post, 0)]
        server.wait_metric("segment_batches_in_flight", 1)
        held.append(pool.submit(post, 1))
        server.wait_metric("segment_queue_depth", 1)
        yield server
        server.gate.set()
        assert [f.result().status_code for f in held] == [200, 200]


def assert_spread_and_growing(sent: list[tuple[int, float]], codes: list[str]) -> None:
    assert codes == ["overloaded"] * THREADS
    waits = gaps(sent)
    assert len(waits) == THREADS and all(len(w) == 2 for w in waits), waits  # retries=2: three attempts each
    firsts = [w[0] for w in waits]
    # Never sooner than the server asked, and the second wait is at least double it: the retries back off.
    assert min(firsts) >= RETRY_AFTER, firsts
    assert min(w[1] for w in waits) >= 2 * RETRY_AFTER, waits
    # Spread at random over [1, 1.5] x Retry-After, not all at once (before: all within a few ms of 1.000 s).
    assert max(firsts) - min(firsts) >= 0.1, firsts


def test_threads_refused_together_retry_apart_and_back_off(full_server: GatedServer) -> None:
    transport = Recording()
    start = threading.Barrier(THREADS)

    def one(client: SegmentClient) -> str:
        start.wait()
        with pytest.raises(SegmentApiError) as info:
            client.segment(png_bytes(scene(96, 70)), "labels")
        assert info.value.retry_after == RETRY_AFTER
        return info.value.code

    with SegmentClient(full_server.live.url, retries=2, transport=transport) as client, \
            ThreadPoolExecutor(THREADS) as pool:
        codes = list(pool.map(lambda _: one(client), range(THREADS)))
    assert_spread_and_growing(transport.sent, codes)


def test_async_tasks_refused_together_retry_apart_and_back_off(full_server: GatedServer) -> None:
    transport = AsyncRecording()

    async def run() -> list[str]:
        async with AsyncSegmentClient(full_server.live.url, retries=2, transport=transport) as client:
            async def one() -> str:
                with pytest.raises(SegmentApiError) as info:
                    await client.segment(png_bytes(scene(96, 70)), "labels")
                return info.value.code

            return list(await asyncio.gather(*(one() for _ in range(THREADS))))

    assert_spread_and_growing(transport.sent, asyncio.run(run()))


@pytest.fixture
def refused_url() -> Iterator[str]:
    """The URL of a port bound but not listening: every connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_a_refused_connection_is_retried_with_backoff_then_raised(refused_url: str) -> None:
    transport = Recording()
    with SegmentClient(refused_url, retries=3, transport=transport) as client, \
            pytest.raises(SegmentConnectionError) as info:
        client.segment(png_bytes(scene(96, 60)), "labels")
    assert info.value.code == "connection_error" and "after 4 attempts" in str(info.value)
    (waits,) = gaps(transport.sent)
    assert len(waits) == 3  # the first attempt and three retries
    for i, wait in enumerate(waits):  # 0.2 s doubled per retry, stretched by at most 1.5 (plus scheduling)
        assert 0.2 * 2**i <= wait < 0.3 * 2**i + 0.5, waits


def test_the_retry_budget_bounds_the_waiting(refused_url: str) -> None:
    """retries=50, retry_budget=1: waits of 0.2-0.3 and 0.4-0.6 s fit in 1 s, the next (0.8-1.2 s) would not."""
    transport = AsyncRecording()

    async def run() -> SegmentConnectionError:
        async with AsyncSegmentClient(refused_url, retries=50, retry_budget=1.0, transport=transport) as client:
            with pytest.raises(SegmentConnectionError) as info:
                await client.segment(png_bytes(scene(96, 60)), "labels")
            return info.value

    started = time.monotonic()
    error = asyncio.run(run())
    assert time.monotonic() - started < 2.0  # without the budget: 50 retries, minutes
    assert len(transport.sent) == 3 and error.code == "connection_error"


def test_a_server_that_comes_back_is_waited_for(tmp_path: Path) -> None:
    """Refused while the server is down, then 503 not_ready while it loads, then the answer: one call, no error."""
    server = LiveServer(Settings(model_path=make_rule_model(tmp_path / "rule.onnx"), host="127.0.0.1", port=0,
                                 intra_op_threads=1, worker_threads=1))  # bound, not yet listening: refused
    transport = Recording()
    image = scene(96, 60)
    starter = threading.Timer(0.5, server.start)
    starter.start()
    try:
        with SegmentClient(server.url, retries=8, transport=transport) as client:
            labels = client.segment(png_bytes(image), "labels").array()
    finally:
        starter.join()
        server.stop()
    np.testing.assert_array_equal(labels, rule_labels(image))
    assert len(transport.sent) >= 3, transport.sent


class Disconnecting:
    """A real HTTP server that reads each request whole, then closes the connection without answering (a crash
    mid-request) or, with `answer_after`, answers only after that many seconds (a slow device)."""

    def __init__(self, answer_after: float | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests = 0
        self.answer_after = answer_after
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            while len(body) < length:
                body += conn.recv(65536)
            self.requests += 1
            if self.answer_after is not None:
                time.sleep(self.answer_after)

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("answer_after", [None, 2.0])
def test_a_request_that_may_have_been_run_is_not_sent_again(answer_after: float | None) -> None:
    """POST /segment broken after it was sent (the server may be running it): raised at once, sent once."""
    server = Disconnecting(answer_after)
    try:
        with SegmentClient(server.url, retries=3, timeout=0.5) as client, \
                pytest.raises(SegmentConnectionError) as info:
            client.segment(png_bytes(scene(96, 60)), "labels")
        time.sleep(0.3)  # a retry, if one were made, would have arrived by now
    finally:
        server.close()
    assert server.requests == 1 and info.value.code == "connection_error"
    assert "attempts" not in str(info.value)
