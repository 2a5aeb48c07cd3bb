"""Summaries for the service benchmarks: latency percentiles, per-stage means from two /metrics scrapes, a note
on the machine's load, and alternating closed-loop rounds against several servers. The server process, load
drivers and request bodies are in testkit/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from testkit.images import encode
from testkit.load import closed_loop
from testkit.metrics import bucket_quantile, histogram
from testkit.photos import PHOTOS, photo
from testkit.procstat import tree_cpu_seconds
from testkit.server import ServerProcess

T = TypeVar("T")


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


def histogram_means_ms(before: str, after: str, name: str, label: str) -> dict[str, float]:
    """Mean ms per observation of histogram `name` for each value of `label` between two /metrics scrapes (values
    with no new observation left out)."""
    b = histogram_totals(before, name, label)
    a = histogram_totals(after, name, label)
    means = {}
    for value, (total, count) in a.items():
        total0, count0 = b.get(value, (0.0, 0.0))
        if count > count0:
            means[value] = (total - total0) / (count - count0) * 1000
    return means


def stage_means_ms(before: str, after: str) -> dict[str, float]:
    """Mean ms per request in each service stage between two /metrics scrapes."""
    return histogram_means_ms(before, after, "segment_stage_duration_seconds", "stage")


def loop_lag_ms(before: str, after: str) -> dict[str, float]:
    """The event loop's lag (`segment_event_loop_lag_seconds`) between two /metrics scrapes: `mean` and `p99`
    (the upper bound of the bucket holding the 99th percentile), in ms; empty when no tick was observed."""
    buckets0, count0, sum0 = histogram(before, "segment_event_loop_lag_seconds")
    buckets1, count1, sum1 = histogram(after, "segment_event_loop_lag_seconds")
    count = count1 - count0
    if count <= 0:
        return {}
    buckets = {bound: value - buckets0.get(bound, 0.0) for bound, value in buckets1.items()}
    return {"mean": (sum1 - sum0) / count * 1000, "p99": bucket_quantile(buckets, count, 0.99) * 1000}


def thread_cpu_ms(fn: Callable[[], object], reps: int) -> float:
    """This thread's CPU-ms per call of `fn` over `reps` calls, after one (steadier than wall time on a loaded
    machine; work `fn` hands to other threads is not counted)."""
    fn()
    start = time.thread_time()
    for _ in range(reps):
        fn()
    return (time.thread_time() - start) / reps * 1000


def machine_note() -> str:
    """CPU count and load average, to print beside every figure (this machine is shared)."""
    one, five, fifteen = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min)"


def alternating_rounds(servers: Mapping[str, ServerProcess], bodies: Sequence[bytes], concurrencies: Sequence[int],
                       rounds: int, seconds: float, output: str = "labels") -> dict[tuple[str, int], list[dict]]:
    """Closed-loop rounds (one connection per client) against ready servers, the servers' order reversed every
    other round so that all see the same machine load. Per (server name, concurrency), one `latency_summary` per
    round plus `cpu_ms`, the CPU-ms (utime + stime) per request of the server and its worker processes. Raises if
    an answer is not a 200."""
    runs: dict[tuple[str, int], list[dict]] = {}
    for round_index in range(rounds):
        order = list(servers.items()) if round_index % 2 == 0 else list(reversed(servers.items()))
        for concurrency in concurrencies:
            for name, server in order:
                before = tree_cpu_seconds(server.pid)
                samples, wall = asyncio.run(closed_loop(server.url, bodies, concurrency, seconds, 10**9,
                                                        params={"output": output}, per_connection=True))
                if not samples or any(s.status != 200 for s in samples):
                    raise RuntimeError(f"{name}: an answer was not 200")
                point = latency_summary([s.latency_s for s in samples], wall)
                point["cpu_ms"] = (tree_cpu_seconds(server.pid) - before) / len(samples) * 1000
                runs.setdefault((name, concurrency), []).append(point)
    return runs


def comparison_args(doc: str, rounds: int, seconds: float, concurrency: str,
                    argv: list[str] | None) -> argparse.Namespace:
    """The options of a same-run comparison of servers: --rounds, --seconds (per round and concurrency),
    --concurrency (a comma list, parsed into `concurrencies`) and --out (the markdown file to write into)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--seconds", type=float, default=seconds, help="per round and concurrency")
    ap.add_argument("--concurrency", default=concurrency)
    ap.add_argument("--out", type=Path, help="write the section into this markdown file")
    args = ap.parse_args(argv)
    args.concurrencies = [int(c) for c in args.concurrency.split(",")]
    return args


def compare_servers(configs: Mapping[str, Mapping[str, str]], args: argparse.Namespace,
                    while_up: Callable[[dict[str, ServerProcess]], T] | None = None
                    ) -> tuple[dict[tuple[str, int], list[dict]], T | None]:
    """One `segment-serve` on the embedded model per configuration (name → environment), all ready (every
    worker), driven with 1024x768 JPEG uploads in `alternating_rounds`; then `while_up(servers)` before they
    stop. The rounds' points, and what `while_up` returned."""
    bodies = [encode(photo(name, size=(1024, 768))) for name in PHOTOS]
    servers = {name: ServerProcess(None, **env) for name, env in configs.items()}
    try:
        for server in servers.values():
            server.wait_ready(300)
        runs = alternating_rounds(servers, bodies, args.concurrencies, args.rounds, args.seconds)
        return runs, while_up(servers) if while_up else None
    finally:
        for server in servers.values():
            server.terminate()


def median_of(points: Sequence[Mapping[str, Any]], key: str) -> float:
    """The median of one figure over a configuration's rounds."""
    return statistics.median(p[key] for p in points)
