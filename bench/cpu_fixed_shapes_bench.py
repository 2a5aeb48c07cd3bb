"""Fixed-shape buckets on CPU: CPU per request, throughput and memory, with and without (same run).

Bucket sessions are built with their one shape fixed, so onnxruntime folds the model's shape computations and
plans its memory once; measured model-only on the embedded model that is 7-11 % less CPU per image. This runs
two real `segment-serve` processes on the embedded model (SEGMENT_FIXED_SHAPES=off, the CPU default, and on),
alternating short closed-loop rounds of 1024x768 JPEG uploads (`labels`) so both see the same machine load, and
reports medians of img/s and server CPU-ms per request (utime + stime from /proc), and the resident memory
after the load.

Usage: python -m bench.cpu_fixed_shapes_bench [--rounds 6] [--seconds 5] [--concurrency 1,4] [--out docs/BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import httpx

from bench.harness import alternating_rounds, machine_note
from bench.markdown import write_section
from testkit.images import encode
from testkit.photos import PHOTOS, photo
from testkit.server import ServerProcess

MODES = ("off", "on")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=5.0, help="per round and concurrency")
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--out", type=Path, help="write the section into this markdown file")
    args = ap.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    bodies = [encode(photo(name, size=(1024, 768))) for name in PHOTOS]
    servers = {mode: ServerProcess(None, SEGMENT_FIXED_SHAPES=mode, SEGMENT_INTRA_OP_THREADS="2")
               for mode in MODES}
    try:
        for server in servers.values():
            server.wait_ready(300)
        runs = alternating_rounds(servers, bodies, concurrencies, args.rounds, args.seconds)
        memory = {mode: server.memory_kib()["VmRSS"] / 1024 for mode, server in servers.items()}
        plan = httpx.get(f"{servers['on'].url}/readyz", timeout=30).json().get("batch_plan")
    finally:
        for server in servers.values():
            server.terminate()
    lines = ["### Fixed-shape buckets on CPU (same run)", "",
             f"Command: `python -m bench.cpu_fixed_shapes_bench --rounds {args.rounds} --seconds {args.seconds:g} "
             f"--concurrency {args.concurrency}`. {machine_note()}. Embedded model, 2 intra-op threads, 1024×768 "
             "JPEG → `labels`; medians of the alternating rounds.", "",
             "| concurrency | `SEGMENT_FIXED_SHAPES` | img/s | server CPU-ms per request |", "|---|---|---|---|"]
    for concurrency in concurrencies:
        for mode in MODES:
            points = runs[(mode, concurrency)]
            lines.append(f"| {concurrency} | {mode} | {statistics.median(p['throughput'] for p in points):.1f} | "
                         f"{statistics.median(p['cpu_ms'] for p in points):.1f} |")
    lines += ["", f"Resident memory after the load: off {memory['off']:.0f} MiB, on {memory['on']:.0f} MiB; "
              f"the buckets' batch plan on CPU: {plan}."]
    section = "\n".join(lines)
    if args.out:
        write_section(args.out, "cpu-fixed-shapes", section)
    print(section)


if __name__ == "__main__":
    main()
