"""CPU: one batch on every core, or one batch per core? Or one process per core? Latency and throughput (same run).

On CPU the server's default runs one batch at a time with onnxruntime's intra-op threads on every CPU: the lowest
latency for a lone request. The alternative, Triton's CPU instance groups, is one intra-op thread per batch and as
many batches in flight as CPUs (`SEGMENT_INTRA_OP_THREADS=1`, `SEGMENT_CONCURRENT_BATCHES=<CPUs>`): each core runs
a whole model, which wastes nothing on splitting every operator, but a lone request then gets one core. The third
runs as many worker processes (`SEGMENT_WORKERS`), each with one intra-op thread: the same split of the cores,
without one interpreter for all of them. This runs one real `segment-serve` per configuration on the embedded
model, alternating short closed-loop rounds of 1024x768 JPEG uploads (`labels`) so all see the same machine load,
and reports medians of img/s, p50/p99 latency and server CPU-ms per request (utime + stime of its processes, from
/proc).

Usage: python -m bench.cpu_instances_bench [--rounds 4] [--seconds 8] [--concurrency 1,8] [--out docs/BENCHMARKS.md]
"""

from __future__ import annotations

from bench.harness import compare_servers, comparison_args, machine_note, median_of
from bench.markdown import write_section
from service.settings import available_cpus


def configurations(cpus: int) -> dict[str, dict[str, str]]:
    """Name → environment of the configurations compared."""
    return {"one batch, all cores (default)": {"SEGMENT_INTRA_OP_THREADS": str(cpus)},
            f"{cpus} batches, one core each": {"SEGMENT_INTRA_OP_THREADS": "1",
                                                "SEGMENT_CONCURRENT_BATCHES": str(cpus)},
            f"{cpus} worker processes, one core each": {"SEGMENT_INTRA_OP_THREADS": "1", "SEGMENT_WORKERS": str(cpus)}}


def main(argv: list[str] | None = None) -> None:
    args = comparison_args(__doc__, rounds=4, seconds=8.0, concurrency="1,8", argv=argv)
    configs = configurations(available_cpus())
    runs, _ = compare_servers(configs, args)
    lines = ["### CPU: one batch on every core, one batch per core, or one process per core (same run)", "",
             f"Command: `python -m bench.cpu_instances_bench --rounds {args.rounds} --seconds {args.seconds:g} "
             f"--concurrency {args.concurrency}`. {machine_note()}. Embedded model, 1024×768 JPEG → `labels`, "
             "closed loop; medians of the alternating rounds.", "",
             "| concurrency | configuration | img/s | p50 ms | p99 ms | server CPU-ms per request |",
             "|---|---|---|---|---|---|"]
    for concurrency in args.concurrencies:
        for name in configs:
            ips, p50, p99, cpu = (median_of(runs[(name, concurrency)], key)
                                  for key in ("throughput", "p50", "p99", "cpu_ms"))
            lines.append(f"| {concurrency} | {name} | {ips:.1f} | {p50:.1f} | {p99:.1f} | {cpu:.1f} |")
    section = "\n".join(lines)
    if args.out:
        write_section(args.out, "cpu-instances", section)
    print(section)


if __name__ == "__main__":
    main()
