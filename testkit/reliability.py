"""Overload and soak runs against a live server process; used by bench.reliability_bench (long) and by
tests/reliability (short), with the same checks.

- overload: a fixed arrival rate above capacity. Every answer must be 200 or 503 `overloaded` with Retry-After,
  every 200 must carry the labels a direct onnxruntime run gives for that upload, and the server's RSS is sampled
  from /proc all along.
- soak: sequential requests over many upload sizes; RSS after warm-up versus at the end.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from service.core.engine import load_engine
from service.core.options import EngineOptions
from service.core.pipeline import Pipeline
from testkit.images import decode_labels, encode
from testkit.load import closed_loop, open_loop
from testkit.photos import PHOTOS, photo
from testkit.sampler import BackgroundSampler
from testkit.server import ServerProcess, proc_memory_kib


def direct_labels(model: Path, bodies: Sequence[bytes]) -> list[np.ndarray]:
    """Labels for each upload from a direct onnxruntime session (one image per run, no batcher, no HTTP)."""
    pipeline = Pipeline(load_engine(EngineOptions(model_path=model)))
    # The service's own decode path (a large JPEG decodes reduced for labels), so "identical" can be exact.
    return [pipeline.label_maps([pipeline.preprocess(b)])[0] for b in bodies]


class MemorySampler(BackgroundSampler):
    """Samples a process's VmRSS every `period` seconds in a thread while the block runs; keeps the trace and the
    maximum."""

    def __init__(self, pid: int, period: float = 0.25) -> None:
        super().__init__("memory-sampler", join_s=5)
        self.pid, self.period = pid, period
        self.trace: list[tuple[float, int]] = []
        self._t0 = time.perf_counter()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.trace.append((time.perf_counter() - self._t0, proc_memory_kib(self.pid)["VmRSS"]))
            except (OSError, KeyError):  # the process has gone
                return
            self._stop.wait(self.period)

    @property
    def max_kib(self) -> int:
        return max((kib for _, kib in self.trace), default=0)


@dataclass
class OverloadResult:
    capacity: float  # img/s, closed loop
    rate: float  # offered arrivals/s
    seconds: float
    statuses: dict[int, int]
    not_sent: int  # arrivals beyond the client's in-flight cap
    missing_retry_after: int  # 503s without Retry-After
    other_codes: dict[str, int]  # error codes other than 'overloaded'
    label_mismatches: int  # 200s whose labels differ from the direct run beyond tolerance
    min_agreement: float  # worst pixel agreement among the 200s
    exact: int  # 200s identical to the direct run
    accepted_p50_ms: float
    accepted_p99_ms: float
    rss_start_kib: int
    rss_max_kib: int  # sampled VmRSS
    hwm_kib: int  # VmHWM at the end (kernel's own peak)
    rss_trace: list[tuple[float, int]] = field(repr=False, default_factory=list)

    @property
    def accepted(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def rejected(self) -> int:
        return self.statuses.get(503, 0)

    @property
    def other_5xx(self) -> int:
        return sum(n for s, n in self.statuses.items() if s >= 500 and s != 503)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "rss_trace"}
        out.update(accepted=self.accepted, rejected=self.rejected, other_5xx=self.other_5xx)
        return out


def measure_capacity(server: ServerProcess, bodies: Sequence[bytes], concurrency: int, seconds: float) -> float:
    """Closed-loop throughput (img/s) with enough clients to keep the batcher fed."""
    samples, wall = asyncio.run(closed_loop(server.url, bodies, concurrency, seconds, 10_000, {"output": "labels"}))
    ok = [s for s in samples if s.status == 200]
    if len(ok) != len(samples):
        raise RuntimeError(f"errors while measuring capacity: {Counter(s.status for s in samples)}")
    return len(ok) / wall


def overload(server: ServerProcess, bodies: Sequence[bytes], expected: Sequence[np.ndarray], capacity: float,
             factor: float, seconds: float, max_inflight: int, min_agreement: float = 0.999) -> OverloadResult:
    """Offer `factor` × capacity for `seconds` and check every answer."""
    rate = capacity * factor
    rss_start = server.memory_kib()["VmRSS"]
    with MemorySampler(server.pid) as mem:
        samples, not_sent, wall = asyncio.run(open_loop(server.url, bodies, rate, seconds, max_inflight,
                                                        {"output": "labels"}, keep=True))
    statuses = Counter(s.status for s in samples)
    missing_retry = sum(1 for s in samples if s.status == 503 and not (s.retry_after and int(s.retry_after) >= 1))
    other_codes = Counter(s.error_code or "?" for s in samples if s.status != 200 and s.error_code != "overloaded")
    mismatches, exact, worst = 0, 0, 1.0
    for s in samples:
        if s.status != 200:
            continue
        got, want = decode_labels(s.content), expected[s.body_index]
        agreement = float((got == want).mean()) if got.shape == want.shape else 0.0
        worst = min(worst, agreement)
        exact += agreement == 1.0
        mismatches += agreement < min_agreement
    ok_lat = sorted(s.latency_s * 1000 for s in samples if s.status == 200) or [float("nan")]
    return OverloadResult(
        capacity=capacity, rate=rate, seconds=wall, statuses=dict(statuses), not_sent=not_sent,
        missing_retry_after=missing_retry, other_codes=dict(other_codes), label_mismatches=mismatches,
        min_agreement=worst, exact=exact, accepted_p50_ms=float(np.percentile(ok_lat, 50)),
        accepted_p99_ms=float(np.percentile(ok_lat, 99)), rss_start_kib=rss_start, rss_max_kib=mem.max_kib,
        hwm_kib=server.memory_kib()["VmHWM"], rss_trace=mem.trace)


@dataclass
class SoakResult:
    requests: int
    warmup: int
    failures: int  # non-200 answers or wrong-shaped labels
    rss_after_warmup_kib: int
    rss_end_kib: int
    rss_max_after_warmup_kib: int
    hwm_kib: int
    seconds: float
    trace: list[tuple[int, int]] = field(repr=False, default_factory=list)  # (request number, VmRSS KiB)

    @property
    def growth(self) -> float:
        """RSS at the end relative to RSS right after warm-up (0.05 = 5 % growth)."""
        return self.rss_end_kib / self.rss_after_warmup_kib - 1

    def as_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in self.__dict__.items() if k != "trace"}, "growth": self.growth}


def soak(server: ServerProcess, bodies: Sequence[tuple[bytes, str, tuple[int, int]]], requests: int, warmup: int,
         sample_every: int = 50, outputs: Sequence[str] = ("labels",)) -> SoakResult:
    """`requests` sequential uploads cycling through `bodies` (data, content type, (w, h)) and `outputs`."""
    failures = 0
    trace: list[tuple[int, int]] = []
    start = time.perf_counter()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for i in range(requests):
            data, ctype, (w, h) = bodies[i % len(bodies)]
            output = outputs[(i // len(bodies)) % len(outputs)]
            r = client.post("/segment", content=data, params={"output": output}, headers={"Content-Type": ctype})
            if r.status_code != 200 or (output == "labels" and decode_labels(r.content).shape != (h, w)):
                failures += 1
            if (i + 1) % sample_every == 0 or i + 1 == warmup:
                trace.append((i + 1, server.memory_kib()["VmRSS"]))
    after = [kib for n, kib in trace if n >= warmup]
    at_warmup = next(kib for n, kib in trace if n == warmup)
    return SoakResult(requests=requests, warmup=warmup, failures=failures, rss_after_warmup_kib=at_warmup,
                      rss_end_kib=trace[-1][1], rss_max_after_warmup_kib=max(after),
                      hwm_kib=server.memory_kib()["VmHWM"], seconds=time.perf_counter() - start, trace=trace)


def mixed_bodies(count: int, seed: int = 0) -> list[tuple[bytes, str, tuple[int, int]]]:
    """Real photos at `count` different sizes (24..1400 px a side), alternately JPEG and PNG."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        w, h = (int(v) for v in rng.integers(24, 1400, 2))
        fmt = "JPEG" if i % 2 == 0 else "PNG"
        image = photo(PHOTOS[i % len(PHOTOS)], (w, h))
        out.append((encode(image, fmt), f"image/{fmt.lower()}", (w, h)))
    return out

