"""GPU benchmark, one command on a GPU host: raw onnxruntime per batch bucket (NCHW vs NHWC), IOBinding and CUDA
graphs, PyTorch eager fp16 channels_last, and the service (batching on and off, fp16 and fp32, and the old
dynamic-shape configuration) at several concurrencies with p50/p99, the first request after readiness for every
bucket, and GPU memory. All figures come from one run on one device.

    python -m bench.gpu_bench --out docs            # writes a GPU section into docs/BENCHMARKS.md
    python -m bench.gpu_bench --render results.json  # rewrites that section from a saved run

Results are saved as JSON after every stage (`--json`), so a run cut short still reports what it measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort

from bench.gpu_raw import (
    bound_variants,
    eager,
    export_models,
    raw_ort,
    release_gpu_memory,
    synthetic_photo,
    two_threads,
)
from bench.gpu_report import render
from bench.harness import latency_summary, stage_means_ms
from bench.markdown import write_section
from service.core.sessions import CPU, CUDA
from testkit.images import encode
from testkit.load import closed_loop
from testkit.server import ServerProcess


def device_info() -> dict[str, Any]:
    info: dict[str, Any] = {"onnxruntime": ort.__version__, "providers": ort.get_available_providers(),
                            "python": sys.version.split()[0], "cpus": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    except ImportError:
        info["torch"] = None
    try:
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        info["gpu"] = query.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["gpu"] = None
    return info


def gpu_memory_of(pid: int) -> int | None:
    """MiB of GPU memory a process holds (nvidia-smi), or None."""
    try:
        query = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in query.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid):
            return int(parts[1])
    return None


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """CPU seconds (user + system) of a process, or of one of its threads (the event loop is the main thread,
    whose tid is the pid)."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _client(args: tuple[str, list[bytes], int, float, str]) -> tuple[list[tuple[int, float, int]], float]:
    url, bodies, concurrency, seconds, output = args
    samples, wall = asyncio.run(closed_loop(url, bodies, concurrency, seconds, 10**9, {"output": output}))
    return [(s.status, s.latency_s, s.batch_size) for s in samples], wall


def load_point(pool: ProcessPoolExecutor, server: ServerProcess, bodies: list[bytes], concurrency: int,
               seconds: float, processes: int, output: str = "labels") -> dict[str, Any]:
    """A closed loop of `concurrency` clients spread over load-generator processes (one Python client
    process tops out near the GPU's rate)."""
    procs = max(1, min(processes, concurrency))
    shares = [concurrency // procs + (i < concurrency % procs) for i in range(procs)]
    before = server.metrics()
    cpu0, loop0 = cpu_seconds(server.pid), cpu_seconds(server.pid, server.pid)
    results = list(pool.map(_client, [(server.url, bodies, share, seconds, output) for share in shares]))
    cpu1, loop1 = cpu_seconds(server.pid), cpu_seconds(server.pid, server.pid)
    after = server.metrics()
    samples = [s for part, _ in results for s in part]
    wall = max(w for _, w in results)
    bad = sorted({status for status, _, _ in samples if status != 200})
    summary = latency_summary([lat for status, lat, _ in samples if status == 200], wall)
    summary.update(concurrency=concurrency, errors=len([s for s in samples if s[0] != 200]), statuses=bad,
                   mean_batch=float(np.mean([b for _, _, b in samples])) if samples else 0.0,
                   stages_ms=stage_means_ms(before, after), server_cores=(cpu1 - cpu0) / wall,
                   loop_cores=(loop1 - loop0) / wall,
                   server_cpu_ms_per_request=(cpu1 - cpu0) * 1000 / max(1, len(samples)))
    return summary


async def _first_batches(url: str, body: bytes, buckets: list[int]) -> list[dict[str, Any]]:
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for size in buckets:
            t0 = time.perf_counter()
            responses = await asyncio.gather(*(client.post("/segment", content=body, params={"output": "labels"},
                                                           headers={"Content-Type": "image/jpeg"})
                                               for _ in range(size)))
            out.append({"bucket": size, "max_ms": (time.perf_counter() - t0) * 1000,
                        "statuses": sorted({r.status_code for r in responses}),
                        "batch_sizes": sorted({int(r.headers.get("x-batch-size", 0)) for r in responses})})
    return out


def service_config(pool: ProcessPoolExecutor, model: Path, bodies: list[bytes], concurrencies: list[int],
                   seconds: float, processes: int, env: dict[str, str], first_batches: list[int] | None = None
                   ) -> dict[str, Any]:
    """Start the service with `env`, optionally time the first batch of every bucket, then each load point.
    An `output` key in `env` picks the output kind the clients ask for (labels by default)."""
    env = dict(env)
    output = env.pop("output", "labels")
    out: dict[str, Any] = {"env": env, "output": output, "points": []}
    start = time.perf_counter()
    with ServerProcess(model, **env) as server:
        server.wait_ready(timeout=600)
        out["ready_s"] = time.perf_counter() - start
        out["readyz"] = httpx.get(f"{server.url}/readyz", timeout=30).json()
        if first_batches:
            out["first_batches"] = asyncio.run(_first_batches(server.url, bodies[0], first_batches))
        for concurrency in concurrencies:
            point = load_point(pool, server, bodies, concurrency, seconds, processes, output)
            out["points"].append(point)
            print(f"  c={concurrency}: {point['throughput']:.1f} img/s, p50 {point['p50']:.1f} ms, "
                  f"p99 {point['p99']:.1f} ms; server {point['server_cores']:.1f} cores "
                  f"(loop {point['loop_cores']:.2f}), {point['server_cpu_ms_per_request']:.1f} CPU-ms/request, "
                  f"batch {point['mean_batch']:.1f}, stages {point['stages_ms']}", flush=True)
        out["gpu_memory_mib"] = gpu_memory_of(server.pid)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="deeplabv3_resnet101")
    ap.add_argument("--input-size", type=int, default=513)
    ap.add_argument("--upload", default="1024x768", help="upload size WxH (JPEG)")
    ap.add_argument("--max-batch", type=int, default=16, help="the service's SEGMENT_MAX_BATCH_SIZE")
    ap.add_argument("--raw-sizes", default="1,2,4,8,16,32")
    ap.add_argument("--eager-sizes", default="1,8,16,32")
    ap.add_argument("--concurrency", default="1,8,32,64")
    ap.add_argument("--seconds", type=float, default=6.0, help="per load point")
    ap.add_argument("--raw-seconds", type=float, default=1.5, help="per raw/eager measurement")
    ap.add_argument("--clients", type=int, default=4, help="load-generator processes")
    ap.add_argument("--skip", default="", help="comma list of stages to skip: raw,bound,eager,off,fp32,before")
    ap.add_argument("--variant", action="append", default=[],
                    help="extra service run NAME:KEY=VALUE,... (SEGMENT_* variables, or output=KIND), repeatable")
    ap.add_argument("--variant-concurrency", default="32,64")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/gpu_bench"))
    ap.add_argument("--json", type=Path, default=Path("gpu_bench.json"))
    ap.add_argument("--out", type=Path, default=Path("docs"))
    ap.add_argument("--render", type=Path, help="only rewrite the docs section from a saved JSON run")
    args = ap.parse_args(argv)
    if args.render:
        write_section(args.out / "BENCHMARKS.md", "gpu", render(json.loads(args.render.read_text())))
        return

    skip = set(filter(None, args.skip.split(",")))
    ints = lambda spec: [int(v) for v in spec.split(",") if v]  # noqa: E731
    on_gpu = CUDA in ort.get_available_providers()
    provider, device = (CUDA, "cuda") if on_gpu else (CPU, "cpu")
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "device": device_info(),
                               "errors": {}}

    def save() -> None:
        args.json.write_text(json.dumps(results, indent=1, default=str))

    def stage(name: str, fn: Any) -> None:
        if name in skip:
            return
        print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
        try:
            results[name] = fn()
        except Exception:
            results["errors"][name] = traceback.format_exc()[-2000:]
            print(results["errors"][name], flush=True)
        save()

    holder: dict[str, Any] = {}

    def export() -> dict[str, Any]:
        info, holder["model"] = export_models(args.workdir, args.arch, args.input_size, device)
        return info

    stage("model", export)
    model_info = results.get("model") or {}
    fp32, fp16 = Path(model_info.get("fp32", "")), Path(model_info.get("fp16", ""))
    size = args.input_size
    best = fp16 if on_gpu else fp32
    stage("raw", lambda: raw_ort(best, ints(args.raw_sizes), size, args.raw_seconds, provider,
                                 {"nhwc": {"prefer_nhwc": "1"}, "nchw": {"prefer_nhwc": "0"}}))
    stage("raw_fp32", lambda: raw_ort(fp32, [8, 16], size, args.raw_seconds, provider, {"nhwc": {}}))
    stage("two_threads", lambda: {n: two_threads(best, n, size, args.raw_seconds, provider) for n in (8, 16)})
    if on_gpu:
        stage("bound", lambda: {n: bound_variants(best, n, size, args.raw_seconds) for n in (8, 16)})
    stage("eager", lambda: eager(holder["model"], ints(args.eager_sizes), size, args.raw_seconds, device))
    holder.clear()
    release_gpu_memory()

    width, height = (int(v) for v in args.upload.split("x"))
    bodies = [encode(synthetic_photo(width, height, seed)) for seed in range(8)]
    concurrencies = ints(args.concurrency)
    base = {"SEGMENT_MAX_BATCH_SIZE": str(args.max_batch), "SEGMENT_LOG_LEVEL": "warning"}
    buckets = sorted({*[2**i for i in range(8) if 2**i < args.max_batch], args.max_batch})
    context = multiprocessing.get_context("spawn")  # the parent holds CUDA and threads: no fork
    with ProcessPoolExecutor(args.clients, mp_context=context) as pool:
        run = lambda env, conc, first=None: service_config(  # noqa: E731
            pool, fp32, bodies, conc, args.seconds, args.clients, {**base, **env}, first)
        stage("service", lambda: run({}, concurrencies, buckets))
        stage("off", lambda: run({"SEGMENT_MAX_BATCH_SIZE": "1"}, concurrencies))
        stage("fp32", lambda: run({"SEGMENT_PRECISION": "fp32"}, [32]))
        stage("before", lambda: run({"SEGMENT_FIXED_SHAPES": "off", "SEGMENT_CONCURRENT_BATCHES": "1",
                                     "SEGMENT_CUDA_OPTIONS": "prefer_nhwc=0", "SEGMENT_MAX_BATCH_SIZE": "8"},
                                    [8, 32]))
        for spec in args.variant:
            name, _, pairs = spec.partition(":")
            env = dict(pair.split("=", 1) for pair in pairs.split(",") if pair)
            stage(f"variant_{name}", lambda env=env: run(env, ints(args.variant_concurrency)))
    save()
    write_section(args.out / "BENCHMARKS.md", "gpu", render(results))
    print(render(results))


if __name__ == "__main__":
    main()
