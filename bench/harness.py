"""Shared pieces of the service benchmarks: bounded httpx load drivers (closed loop and open loop, loopback only),
and metric scraping. The server process itself is testkit.server.ServerProcess.

The tests in tests/reliability use the same code with smaller bounds, so what CI checks is what the bench runs.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

# -- load drivers ---------------------------------------------------------------------------------------------

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
                      content_type: str = "image/jpeg") -> tuple[list[Sample], float]:
    """`concurrency` clients, each sending its next request when the last one is answered, until `seconds`
    have passed or `max_requests` were sent. Returns the samples and the wall time."""
    samples: list[Sample] = []
    sent = 0
    start = time.perf_counter()
    deadline = start + seconds
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

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
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


# -- summaries ------------------------------------------------------------------------------------------------

def latency_summary(latencies_s: Sequence[float], wall_s: float) -> dict[str, float]:
    """Throughput (per second over the wall time) and p50/p95/p99 latency in ms."""
    lat = np.asarray(latencies_s, dtype=float) * 1000
    if lat.size == 0:
        return {"n": 0, "throughput": 0.0, "p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    return {"n": int(lat.size), "throughput": lat.size / wall_s, "p50": float(p50), "p95": float(p95),
            "p99": float(p99)}


def histogram_totals(metrics_text: str, name: str, label: str) -> dict[str, tuple[float, float]]:
    """(sum, count) per label value of a Prometheus histogram, from the text exposition."""
    out: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name in (f"{name}_sum", f"{name}_count") and label in s.labels:
                slot = out.setdefault(s.labels[label], [0.0, 0.0])
                slot[0 if s.name.endswith("_sum") else 1] = s.value
    return {k: (v[0], v[1]) for k, v in out.items()}


def stage_means_ms(before: str, after: str) -> dict[str, float]:
    """Mean ms per request in each service stage between two /metrics scrapes."""
    b = histogram_totals(before, "segment_stage_duration_seconds", "stage")
    a = histogram_totals(after, "segment_stage_duration_seconds", "stage")
    means = {}
    for stage, (total, count) in a.items():
        total0, count0 = b.get(stage, (0.0, 0.0))
        if count > count0:
            means[stage] = (total - total0) / (count - count0) * 1000
    return means


def machine_note() -> str:
    """CPU count and load average, to print beside every figure (this machine is shared)."""
    one, five, fifteen = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min)"
