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

from typing import Any

import httpx

from bench.harness import compare_servers, comparison_args, machine_note, median_of
from bench.markdown import write_section
from testkit.server import ServerProcess

MODES = ("off", "on")


def memory_and_plan(servers: dict[str, ServerProcess]) -> tuple[dict[str, float], Any]:
    """Resident MiB of each server after the load, and the buckets' batch plan."""
    memory = {mode: server.memory_kib()["VmRSS"] / 1024 for mode, server in servers.items()}
    return memory, httpx.get(f"{servers['on'].url}/readyz", timeout=30).json().get("batch_plan")


def main(argv: list[str] | None = None) -> None:
    args = comparison_args(__doc__, rounds=6, seconds=5.0, concurrency="1,4", argv=argv)
    configs = {mode: {"SEGMENT_FIXED_SHAPES": mode, "SEGMENT_INTRA_OP_THREADS": "2"} for mode in MODES}
    runs, (memory, plan) = compare_servers(configs, args, memory_and_plan)
    lines = ["### Fixed-shape buckets on CPU (same run)", "",
             f"Command: `python -m bench.cpu_fixed_shapes_bench --rounds {args.rounds} --seconds {args.seconds:g} "
             f"--concurrency {args.concurrency}`. {machine_note()}. Embedded model, 2 intra-op threads, 1024×768 "
             "JPEG → `labels`; medians of the alternating rounds.", "",
             "| concurrency | `SEGMENT_FIXED_SHAPES` | img/s | server CPU-ms per request |", "|---|---|---|---|"]
    for concurrency in args.concurrencies:
        for mode in MODES:
            points = runs[(mode, concurrency)]
            lines.append(f"| {concurrency} | {mode} | {median_of(points, 'throughput'):.1f} | "
                         f"{median_of(points, 'cpu_ms'):.1f} |")
    lines += ["", f"Resident memory after the load: off {memory['off']:.0f} MiB, on {memory['on']:.0f} MiB; "
              f"the buckets' batch plan on CPU: {plan}."]
    section = "\n".join(lines)
    if args.out:
        write_section(args.out, "cpu-fixed-shapes", section)
    print(section)


if __name__ == "__main__":
    main()
