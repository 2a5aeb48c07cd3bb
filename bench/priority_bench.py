"""Interactive latency under a flood of offline work, with the flood sent as `priority=bulk` against the same flood
sent as interactive requests (what a server without priorities does: one first-come-first-served line).

Method: one `segment-serve` of this checkout (the embedded model, default settings). Each round runs, for
`--seconds`, `--flood` one-connection clients uploading 1024x768 JPEGs back to back (the flood; a 503 waits its
Retry-After, as the project's clients do) and, at the
same time, one interactive client sending the same uploads one after another; the rounds alternate the flood's
priority, so both see the same machine load. An idle round (the interactive client alone) comes first. Per mode:
medians over rounds of the interactive client's p50/p99 latency and of the mean queue wait by priority from
`segment_queue_wait_seconds`, and the flood's throughput and refusals. Written to docs/BENCHMARKS.md.

Usage:
    python -m bench.priority_bench [--rounds 4] [--seconds 15] [--flood 16] [--out docs/BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import httpx

from bench.harness import histogram_means_ms, latency_summary, machine_note
from bench.markdown import write_section
from testkit.images import encode
from testkit.load import Sample, closed_loop
from testkit.photos import PHOTOS, photo
from testkit.server import ServerProcess

MODES = ("bulk", "interactive")  # the flood's priority


async def _flood(url: str, bodies: list[bytes], clients: int, seconds: float, priority: str) -> list[int]:
    """`clients` one-connection clients sending uploads back to back for `seconds`, each waiting the Retry-After
    of a 503 as the project's clients do (resent at once, a refusal would only burn the CPU it is measured on);
    the statuses."""
    statuses: list[int] = []
    deadline = time.perf_counter() + seconds
    params = {"output": "labels", "priority": priority}

    async def one(index: int) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            while time.perf_counter() < deadline:
                r = await client.post("/segment", content=bodies[index % len(bodies)], params=params,
                                      headers={"Content-Type": "image/jpeg"})
                statuses.append(r.status_code)
                index += 1
                if r.status_code == 503:
                    await asyncio.sleep(float(r.headers.get("retry-after", "1")))

    await asyncio.gather(*(one(i) for i in range(clients)))
    return statuses


async def _round(url: str, bodies: list[bytes], flood: int, seconds: float,
                 mode: str | None) -> tuple[list[Sample], list[int], float]:
    """The interactive client's samples and the flood's statuses (none when `mode` is None), and the wall time."""
    interactive = closed_loop(url, bodies, 1, seconds, 10**9, params={"output": "labels"}, per_connection=True)
    if mode is None:
        (samples, wall), flooded = await interactive, []
        return samples, flooded, wall
    (samples, wall), flooded = await asyncio.gather(interactive, _flood(url, bodies, flood, seconds, mode))
    return samples, flooded, wall


def one_round(server: ServerProcess, bodies: list[bytes], flood: int, seconds: float,
              mode: str | None) -> dict[str, float]:
    before = server.metrics()
    samples, flooded, wall = asyncio.run(_round(server.url, bodies, flood, seconds, mode))
    if any(s.status != 200 for s in samples):
        raise RuntimeError(f"an interactive answer was not 200: {[s.status for s in samples if s.status != 200]}")
    point = latency_summary([s.latency_s for s in samples], wall)
    waits = histogram_means_ms(before, server.metrics(), "segment_queue_wait_seconds", "priority")
    point.update({"interactive_wait_ms": waits.get("interactive", float("nan")),
                  "bulk_wait_ms": waits.get("bulk", float("nan")),
                  "flood_throughput": sum(status == 200 for status in flooded) / wall,
                  "flood_refused": float(sum(status == 503 for status in flooded))})
    return point


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--flood", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path("docs/BENCHMARKS.md"))
    args = ap.parse_args()
    bodies = [encode(photo(name, size=(1024, 768))) for name in PHOTOS]
    server = ServerProcess(None)
    points: dict[str, list[dict[str, float]]] = {"idle": [], **{f"flood as {m}": [] for m in MODES}}
    try:
        server.wait_ready(300)
        one_round(server, bodies, args.flood, 3, "bulk")  # warm-up: every pool thread started
        points["idle"].append(one_round(server, bodies, args.flood, args.seconds, None))
        for r in range(args.rounds):
            for mode in (MODES if r % 2 == 0 else MODES[::-1]):
                points[f"flood as {mode}"].append(one_round(server, bodies, args.flood, args.seconds, mode))
    finally:
        server.terminate()
    keys = [("p50", "interactive p50 (ms)"), ("p99", "interactive p99 (ms)"),
            ("interactive_wait_ms", "interactive queue wait (ms)"), ("bulk_wait_ms", "flood queue wait (ms)"),
            ("flood_throughput", "flood img/s"), ("flood_refused", "flood 503s")]
    lines = ["### Interactive requests under a flood of offline work (`priority=bulk`)", "",
             f"Command: `python -m bench.priority_bench --rounds {args.rounds} --seconds {args.seconds:g} "
             f"--flood {args.flood}`. {args.flood} clients flood the server with 1024x768 JPEGs while one "
             f"interactive client sends the same, one after another; medians of {args.rounds} alternating rounds "
             f"per mode (idle: one round). {machine_note()}.", "",
             "| flood sent as | " + " | ".join(title for _, title in keys) + " |", "|---|" + "---|" * len(keys)]
    for name, got in points.items():
        cells = [statistics.median(p[key] for p in got) for key, _ in keys]
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in cells) + " |")
    text = "\n".join(lines)
    print(text)
    write_section(args.out, "priority", text)


if __name__ == "__main__":
    main()
