"""One service configuration of the GPU benchmark (`bench.gpu_bench`): start the service with its settings, time
the first batch of every bucket right after readiness, then each load point with its p50/p99, the server's CPU by
thread group, /healthz under load, and the GPU memory it holds."""

from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.gpu_load import POOLS, gpu_memory_of, idle_healthz, load_point, start_service, wait_until_ready
from bench.gpu_masks import MaskReference, check_masks
from bench.gpu_stages import keep_partial

# A variant's KEY=VALUE pairs are split only at a comma that starts the next key, an environment name or one of the
# clients' two settings: a value may hold commas itself (SEGMENT_BATCH_BUCKETS=1,4,16, or
# SEGMENT_CUDA_OPTIONS=prefer_nhwc=0,arena_extend_strategy=kNextPowerOfTwo, whose keys are lower case).
VARIANT_KEY = r"(?:[A-Z_][A-Z0-9_]*|output|client_pool)"
_NEXT_PAIR = re.compile(rf",(?={VARIANT_KEY}=)")

# How long a service start may take to become ready (a healthy one: 3-30 s on a GPU, the workers' warm-ups in
# turn included); a run has ten minutes for every stage.
READY_TIMEOUT_S = 180.0


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    """`NAME:KEY=VALUE,...` (a `--variant` of `bench.gpu_bench`) as (NAME, {KEY: VALUE}); ValueError saying what
    is wrong, so that a mistyped variant stops the run before it starts rather than where the variant's turn
    comes, with the stages before it spent."""
    name, colon, pairs = spec.partition(":")
    if not colon or not name.strip() or not pairs:
        raise ValueError(f"--variant {spec!r}: expected NAME:KEY=VALUE,...")
    env: dict[str, str] = {}
    for pair in _NEXT_PAIR.split(pairs):
        key, equals, value = pair.partition("=")
        if not equals or not re.fullmatch(VARIANT_KEY, key):
            raise ValueError(f"--variant {spec!r}: {pair!r} is not KEY=VALUE with KEY an environment name "
                             "(SEGMENT_...), output or client_pool")
        env[key] = value
    if env.get("client_pool", POOLS[True]) not in POOLS.values():
        raise ValueError(f"--variant {spec!r}: client_pool is one of {', '.join(POOLS.values())}")
    return name.strip(), env


async def _first_batches(url: str, body: bytes, buckets: list[int]) -> list[dict[str, Any]]:
    """Right after readiness, for every bucket: `size` requests at once (one batch), then the same again; then
    2 x `size` at once (two batches of the bucket in flight together, first time and again). A first time far
    slower than the next would be a stall that warm-up left for the first requests."""
    async def burst(client: httpx.AsyncClient, count: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        responses = await asyncio.gather(*(client.post("/segment", content=body, params={"output": "labels"},
                                                       headers={"Content-Type": "image/jpeg"})
                                           for _ in range(count)))
        return {"max_ms": (time.perf_counter() - t0) * 1000, "statuses": sorted({r.status_code for r in responses}),
                "batch_sizes": sorted({int(r.headers.get("x-batch-size", 0)) for r in responses})}

    out = []
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for size in buckets:
            first = await burst(client, size)
            out.append({"bucket": size, **first, "again_ms": (await burst(client, size))["max_ms"]})
        for row in out:
            pair = await burst(client, 2 * row["bucket"])
            row.update(pair_ms=pair["max_ms"], pair_batch_sizes=pair["batch_sizes"],
                       pair_again_ms=(await burst(client, 2 * row["bucket"]))["max_ms"])
    return out


def gpu_metric_lines(url: str) -> list[str]:
    """The service's segment_gpu_* samples (NVML, read at scrape time): proof they work on this device."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return [line for line in text.splitlines() if line.startswith("segment_gpu_")]


def service_config(pool: ProcessPoolExecutor, model: Path, bodies: list[bytes], concurrencies: list[int],
                   seconds: float, processes: int, env: dict[str, str], first_batches: list[int] | None = None,
                   gil_from: int | None = None, keep_answer: Path | None = None, per_connection: bool = False,
                   ready_timeout: float = READY_TIMEOUT_S, masks: MaskReference | None = None) -> dict[str, Any]:
    """Start the service with `env`, optionally time the first batch of every bucket, then each load point
    (with py-spy's GIL sampling from concurrency `gil_from` on). An `output` key in `env` picks the output kind
    the clients ask for (labels by default), a `client_pool` key how they hold connections; `keep_answer`
    saves one real answer (the null server's reply). A service not ready within `ready_timeout`, or whose
    warm-up keeps failing (`wait_until_ready`), fails the configuration; one that fails later keeps the load
    points measured before (`keep_partial`). With `masks`, the labels it answers are checked against the run's
    reference first (`check_masks`), under `masks` in the result."""
    env = dict(env)
    output = env.pop("output", "labels")
    per_connection = env.pop("client_pool", POOLS[per_connection]) == POOLS[True]
    out: dict[str, Any] = {"env": env, "output": output, "client_pool": POOLS[per_connection], "points": []}
    start = time.perf_counter()
    try:
        with start_service(model, **env) as server:
            # With several workers, all of them (the server's CPU and GPU memory then count every worker; the split
            # into thread groups reads the supervisor only).
            wait_until_ready(server, ready_timeout)
            out["ready_s"] = time.perf_counter() - start
            if masks is not None:  # before any load: a wrong answer is a wrong configuration, however fast
                out["masks"] = check_masks(server.url, bodies, masks)
            out["readyz"] = httpx.get(f"{server.url}/readyz", timeout=30).json()
            out["gpu_metrics"] = gpu_metric_lines(server.url)
            if keep_answer:
                answer = httpx.post(f"{server.url}/segment", content=bodies[0], params={"output": output},
                                    headers={"Content-Type": "image/jpeg"}, timeout=120)
                if answer.status_code == 200:
                    keep_answer.write_bytes(answer.content)
                    out["answer_bytes"] = len(answer.content)
            out["healthz_idle"] = idle_healthz(server.url)
            if first_batches:
                out["first_batches"] = asyncio.run(_first_batches(server.url, bodies[0], first_batches))
            for concurrency in concurrencies:
                gil = gil_from is not None and concurrency >= gil_from
                point = load_point(pool, server, bodies, concurrency, seconds, processes, output, gil=gil,
                                   per_connection=per_connection)
                out["points"].append(point)
                groups = ", ".join(f"{g} {t['cores']:.2f}" for g, t in point["threads"].items() if t["cores"] >= 0.05)
                health = point["healthz"]
                print(f"  c={concurrency}: {point['throughput']:.1f} img/s, p50 {point['p50']:.1f} ms, "
                      f"p99 {point['p99']:.1f} ms; server {point['server_cores']:.1f} cores ({groups}), "
                      f"{point['server_cpu_ms_per_request']:.1f} CPU-ms/request, batch {point['mean_batch']:.1f}, "
                      f"stages {point['stages_ms']}; clients {point['client_cores']:.1f} cores (busiest process "
                      f"{point['client_core_max']:.2f}); /healthz p50 {health['p50']:.1f} p99 {health['p99']:.1f} "
                      f"max {health['max']:.1f} ms", flush=True)
                if "gil" in point:
                    print(f"  GIL: {point['gil']}", flush=True)
            out["gpu_memory_mib"] = gpu_memory_of(server.pid)
    except Exception as exc:
        if out["points"]:
            keep_partial(exc, out)
        raise
    return out
