"""Latency under load with the codec pool taking encodes before queued decodes (`service.codec.ENCODE_PRIORITY`)
against the same tree with every codec job at one priority (FIFO, as before).

Method: two `segment-serve` processes of this checkout (the embedded model), one of them started with
`ENCODE_PRIORITY = 0` set before the app is built, so that the only difference is the queue order. Closed-loop
rounds of 1024x768 JPEG uploads (`--concurrency` one-connection clients), the servers alternating every round so
both see the same machine load. Per server: medians over rounds of the client-side p50/p99 latency and throughput,
the mean per-stage time from `/metrics` (`decode` and `encode` include their wait in the codec queue), and the
mean and peak of `segment_request_memory_bytes` (what requests hold from decode to answer), sampled every 0.2 s.

Usage:
    python -m bench.codec_priority_bench [--rounds 4] [--seconds 20] [--concurrency 16] [--output labels]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading

from prometheus_client.parser import text_string_to_metric_families

from bench.harness import latency_summary, machine_note, stage_means_ms
from testkit.images import encode
from testkit.load import closed_loop
from testkit.photos import PHOTOS, photo
from testkit.server import ServerProcess

FIFO_SERVER = ("import service.codec, service.main; service.codec.ENCODE_PRIORITY = 0; "
               "service.main.main()")


def _request_memory(server: ServerProcess) -> float:
    for family in text_string_to_metric_families(server.metrics()):
        if family.name == "segment_request_memory_bytes":
            return sum(s.value for s in family.samples)
    raise RuntimeError("no segment_request_memory_bytes in /metrics")


def _sampled(server: ServerProcess, stop: threading.Event, into: list[float]) -> None:
    while not stop.wait(0.2):
        into.append(_request_memory(server))


def one_round(server: ServerProcess, bodies: list[bytes], concurrency: int, seconds: float,
              output: str) -> dict[str, float]:
    """One closed-loop run: latency summary, stage means (ms) and request memory (MB, mean and peak)."""
    before, memory, stop = server.metrics(), [], threading.Event()
    sampler = threading.Thread(target=_sampled, args=(server, stop, memory), daemon=True)
    sampler.start()
    try:
        samples, wall = asyncio.run(closed_loop(server.url, bodies, concurrency, seconds, 10**9,
                                                params={"output": output}, per_connection=True))
    finally:
        stop.set()
        sampler.join(5)
    if not samples or any(s.status != 200 for s in samples):
        raise RuntimeError("an answer was not 200")
    point = latency_summary([s.latency_s for s in samples], wall)
    point.update({f"{stage}_ms": ms for stage, ms in stage_means_ms(before, server.metrics()).items()})
    point["memory_mean_mb"] = statistics.fmean(memory) / 1e6 if memory else float("nan")
    point["memory_peak_mb"] = max(memory, default=float("nan")) / 1e6
    return point


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--output", default="labels")
    args = ap.parse_args()
    bodies = [encode(photo(name, size=(1024, 768))) for name in PHOTOS]
    servers = {"encode first": ServerProcess(None),
               "FIFO": ServerProcess(None, command=[sys.executable, "-c", FIFO_SERVER])}
    points: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    try:
        for server in servers.values():
            server.wait_ready(300)
        for server in servers.values():  # warm-up: every pool thread started, first-use costs paid
            one_round(server, bodies, args.concurrency, 3, args.output)
        for r in range(args.rounds):
            for name in (list(servers) if r % 2 == 0 else list(reversed(servers))):
                points[name].append(one_round(servers[name], bodies, args.concurrency, args.seconds, args.output))
    finally:
        for server in servers.values():
            server.terminate()
    keys = ["throughput", "p50", "p99", "decode_ms", "queue_ms", "inference_ms", "encode_ms", "memory_mean_mb",
            "memory_peak_mb"]
    print(f"Command: `python -m bench.codec_priority_bench --rounds {args.rounds} --seconds {args.seconds} "
          f"--concurrency {args.concurrency} --output {args.output}`. Medians of {args.rounds} alternating rounds; "
          f"{machine_note()}.\n")
    print("| server | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for name, got in points.items():
        print(f"| {name} | " + " | ".join(f"{statistics.median(p.get(k, float('nan')) for p in got):.1f}"
                                          for k in keys) + " |")


if __name__ == "__main__":
    main()
