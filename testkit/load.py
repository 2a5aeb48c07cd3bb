"""Load on a live server over loopback: bounded httpx drivers (closed loop and open loop) that keep every
answer, a probe that times tiny requests on fresh connections (what a new client sees while others load or
attack the server), and `HealthProbe`, which times /healthz in the background while a block runs."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np

from testkit.rawhttp import split_url
from testkit.sampler import BackgroundSampler


@dataclass
class Sample:
    """One request's outcome as the client saw it."""

    body_index: int
    status: int
    latency_s: float
    started_s: float  # since the run's start
    batch_size: int = 0
    retry_after: str | None = None
    request_id: str | None = None
    error_code: str | None = None
    content: bytes = field(default=b"", repr=False)


def _sample(index: int, r: httpx.Response, t0: float, start: float, keep: bool) -> Sample:
    code = None
    if r.status_code >= 400 and r.headers.get("content-type", "").startswith("application/json"):
        code = r.json().get("error", {}).get("code")
    return Sample(index, r.status_code, time.perf_counter() - t0, t0 - start,
                  int(r.headers.get("x-batch-size", 0)), r.headers.get("retry-after"),
                  r.headers.get("x-request-id"), code, r.content if keep and r.status_code == 200 else b"")


async def closed_loop(url: str, bodies: Sequence[bytes], concurrency: int, seconds: float, max_requests: int,
                      params: dict[str, str] | None = None, keep: bool = False,
                      content_type: str = "image/jpeg", per_connection: bool = False) -> tuple[list[Sample], float]:
    """`concurrency` clients, each sending its next request when the last one is answered, until `seconds`
    have passed or `max_requests` were sent. Returns the samples and the wall time.

    `per_connection`: each client its own httpx client (one connection) instead of one shared pool. httpx's
    pool costs CPU that grows with its number of connections (encode/httpx#3215): against a server that does
    no work, one process with 32 connections in one pool sent a quarter of what 32 one-connection clients did.
    """
    samples: list[Sample] = []
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < max_requests and time.perf_counter() < deadline:
            index = sent % len(bodies)
            sent += 1
            t0 = time.perf_counter()
            r = await client.post("/segment", content=bodies[index], params=params,
                                  headers={"Content-Type": content_type})
            samples.append(_sample(index, r, t0, start, keep))

    async with contextlib.AsyncExitStack() as stack:
        if per_connection:
            one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
            tls = httpx.create_ssl_context()  # shared: building one per client costs ~40 ms each
            clients = [await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=120, limits=one,
                                                                         verify=tls)) for _ in range(concurrency)]
        else:
            shared = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=120, limits=limits))
            clients = [shared] * concurrency
        start = time.perf_counter()  # the clients are built: the clock runs from the first request
        deadline = start + seconds
        await asyncio.gather(*(client_loop(client) for client in clients))
    return samples, time.perf_counter() - start


async def open_loop(url: str, bodies: Sequence[bytes], rate: float, seconds: float, max_inflight: int,
                    params: dict[str, str] | None = None, keep: bool = False,
                    content_type: str = "image/jpeg") -> tuple[list[Sample], int, float]:
    """Requests at a fixed arrival rate for `seconds`, whatever the answers (the way real traffic overloads a
    server). At most `max_inflight` are open at once; arrivals beyond that are counted as not sent.
    Returns the samples, the number not sent, and the wall time."""
    samples: list[Sample] = []
    not_sent = 0
    start = time.perf_counter()
    limits = httpx.Limits(max_connections=max_inflight, max_keepalive_connections=max_inflight)
    gate = asyncio.Semaphore(max_inflight)

    async def one(client: httpx.AsyncClient, index: int) -> None:
        try:
            t0 = time.perf_counter()
            r = await client.post("/segment", content=bodies[index], params=params,
                                  headers={"Content-Type": content_type})
            samples.append(_sample(index, r, t0, start, keep))
        finally:
            gate.release()

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        tasks = []
        n = int(rate * seconds)
        for i in range(n):
            # Sleep until this arrival's scheduled time (no catch-up burst beyond the schedule).
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if gate.locked():
                not_sent += 1
                continue
            await gate.acquire()
            tasks.append(asyncio.ensure_future(one(client, i % len(bodies))))
        await asyncio.gather(*tasks)
    return samples, not_sent, time.perf_counter() - start


@dataclass
class Probe:
    """Tiny requests' latencies (ms) and statuses."""

    latencies_ms: list[float]
    statuses: list[int]

    @property
    def p50(self) -> float:
        return float(np.percentile(self.latencies_ms, 50))

    @property
    def p95(self) -> float:
        return float(np.percentile(self.latencies_ms, 95))


def probe(url: str, body: bytes, count: int, path: str = "/segment", pause_s: float = 0.02,
          max_s: float = 60.0) -> Probe:
    """`count` sequential tiny requests, each on a fresh connection (as a new client would arrive); fewer if
    they take more than `max_s` in all. A request that fails or takes over 30 s counts as status 0."""
    latencies, statuses = [], []
    start = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        try:
            with httpx.Client(base_url=url, timeout=30) as client:
                if path == "/segment":
                    r = client.post(path, content=body, params={"output": "stats"},
                                    headers={"Content-Type": "image/png"})
                else:
                    r = client.get(path)
            statuses.append(r.status_code)
        except httpx.HTTPError:
            statuses.append(0)
        latencies.append((time.perf_counter() - t0) * 1000)
        if time.perf_counter() - start > max_s:
            break
        time.sleep(pause_s)
    return Probe(latencies, statuses)


class HealthProbe(BackgroundSampler):
    """GET `path` every `interval` s on one kept-alive connection of its own, in a thread of this process, while
    the block runs: the time a trivial request waits for the server's event loop (and its GIL) meanwhile. Each
    answer's latency and status is kept; a request that fails counts in `errors` (and reconnects)."""

    def __init__(self, url: str, path: str = "/healthz", interval: float = 0.05) -> None:
        super().__init__("healthz-probe", join_s=15)
        self.host, self.port = split_url(url)
        self.path, self.interval = path, interval
        self.latencies_ms: list[float] = []
        self.statuses: list[int] = []
        self.errors = 0

    def _run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                conn.request("GET", self.path)
                response = conn.getresponse()
                response.read()
                self.latencies_ms.append((time.perf_counter() - t0) * 1000)
                self.statuses.append(response.status)
            except (OSError, http.client.HTTPException):
                self.errors += 1
                conn.close()  # reconnects on the next request
            self._stop.wait(max(0.0, self.interval - (time.perf_counter() - t0)))
        conn.close()

    def summary(self) -> dict[str, float]:
        """Latency p50, p99 and max (ms), the number of answers and of errors."""
        lat = np.asarray(self.latencies_ms or [np.nan])
        p50, p99 = np.percentile(lat, [50, 99])
        return {"n": len(self.latencies_ms), "p50": float(p50), "p99": float(p99), "max": float(lat.max()),
                "errors": self.errors}
