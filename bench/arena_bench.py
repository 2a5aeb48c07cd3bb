"""What a bucket session's memory arena reserves, growing by powers of two (onnxruntime's default) or by exactly
what is asked (`arena_extend_strategy=kSameAsRequested`, the CUDA option bucket sessions now get).

A GPU is not needed to see the rounding: the CUDA arena and the CPU arena are the same allocator (BFCArena), and
the CPU one can be given either strategy through an environment allocator. Each bucket is built and warmed (two
runs, as the service's warm-up does) alone in a fresh process, one per strategy, and the process's address space
growth is read from /proc (VmSize: what the arena reserved, weights included; on a GPU that memory is committed
by cudaMalloc, on a CPU only the pages touched are). The default per-session arena is measured too, to show that
the environment allocator with power-of-two growth stands for it. Address space moves by tens of MiB between
identical processes (glibc's per-thread malloc arenas, onnxruntime's start-up), so each child runs with one intra-op
thread and `MALLOC_ARENA_MAX=1`, and each cell is the median of `--repeats` fresh processes.

Usage: python -m bench.arena_bench [--model M.onnx | --arch deeplabv3_resnet101] [--input-size 513]
       [--buckets 1,2,4,8] [--repeats 3] [--out docs/BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.markdown import write_section
from testkit.server import proc_memory_kib

STRATEGIES = {"default": None, "power_of_two": 0, "exact": 1}  # OrtArenaCfg's arena_extend_strategy


def _vm_mib() -> float:
    return proc_memory_kib(os.getpid())["VmSize"] / 1024


def child(strategy: str, model: str, size: int, batch: int) -> None:
    """In a fresh process: build one bucket session with `strategy`, warm it, print the VmSize growth in MiB."""
    import numpy as np
    import onnxruntime as ort

    from service.core.sessions import fixed_dims, session_options

    shape = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).get_inputs()[0].shape
    start = _vm_mib()
    options = session_options(1, fixed_dims(shape, batch, size, size))
    if STRATEGIES[strategy] is not None:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, STRATEGIES[strategy], -1, -1))
        options.add_session_config_entry("session.use_env_allocators", "1")
    session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    batch_input = np.zeros((batch, size, size, 3), np.uint8)
    for _ in range(2):
        session.run(None, {"image": batch_input})
    print(f"{_vm_mib() - start:.1f}")


def measure(model: Path, size: int, buckets: list[int], repeats: int) -> dict[int, dict[str, list[float]]]:
    """MiB reserved per bucket and strategy, `repeats` fresh processes each (interleaved, so that the machine's
    state drifts over all strategies alike)."""
    env = {**os.environ, "MALLOC_ARENA_MAX": "1"}
    table: dict[int, dict[str, list[float]]] = {}
    for batch in buckets:
        for _ in range(repeats):
            for strategy in STRATEGIES:
                out = subprocess.run([sys.executable, "-m", "bench.arena_bench", "--child", strategy, str(model),
                                      str(size), str(batch)], check=True, capture_output=True, text=True,
                                     env=env).stdout
                table.setdefault(batch, {}).setdefault(strategy, []).append(float(out.split()[-1]))
                print(f"bucket {batch} {strategy}: {table[batch][strategy][-1]:.0f} MiB", flush=True)
    return table


def render(runs: dict[int, dict[str, list[float]]], label: str, command: str) -> str:
    table = {batch: {k: statistics.median(v) for k, v in row.items()} for batch, row in runs.items()}
    spread = max(max(v) - min(v) for row in runs.values() for v in row.values())
    count = min(len(v) for row in runs.values() for v in row.values())
    lines = ["### Bucket memory: the arena's growth (CPU arena, same allocator as CUDA's)", "",
             f"Command: `{command}`. Model: {label}. MiB of address space a bucket session reserves once built and "
             f"warmed (weights included), each alone in a fresh process; medians of {count} processes per cell (the "
             f"widest range within a cell: {spread:.0f} MiB).", "",
             "| bucket | default arena | power-of-two growth | exact growth | exact / power of two |",
             "|---|---|---|---|---|"]
    for batch, row in table.items():
        lines.append(f"| {batch} | {row['default']:.0f} | {row['power_of_two']:.0f} | {row['exact']:.0f} | "
                     f"{row['exact'] / row['power_of_two']:.2f} |")
    totals = {k: sum(row[k] for row in table.values()) for k in STRATEGIES}
    lines.append(f"| all | {totals['default']:.0f} | {totals['power_of_two']:.0f} | {totals['exact']:.0f} | "
                 f"{totals['exact'] / totals['power_of_two']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1], argv[2], int(argv[3]), int(argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="a contract ONNX file (default: export --arch with random weights)")
    ap.add_argument("--arch", default="deeplabv3_resnet101")
    ap.add_argument("--input-size", type=int, default=513)
    ap.add_argument("--buckets", default="1,2,4,8")
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per bucket and strategy (median)")
    ap.add_argument("--out", type=Path, help="write the table into this Markdown file")
    args = ap.parse_args(argv)
    buckets = [int(b) for b in args.buckets.split(",")]
    command = "python -m bench.arena_bench " + " ".join(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model, label = args.model, f"`{args.model}`"
        if model is None:
            from bench.models import bench_model  # torch: only when exporting

            model, _ = bench_model(Path(tmp) / "model.onnx", args.arch, args.input_size)
            label = f"{args.arch} at {args.input_size}×{args.input_size}, fp32, random weights"
        section = render(measure(model, args.input_size, buckets, args.repeats), label, command.strip())
    if args.out:
        write_section(args.out, "arena", section)
    print(section)


if __name__ == "__main__":
    main()
