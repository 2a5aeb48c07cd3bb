"""The GPU benchmark's diagnostics: what limits the service below raw onnxruntime.

- `null`: the same closed-loop clients (processes, bodies, concurrencies) against a null server that reads each
  body and answers a fixed PNG the size of a real `labels` answer: the most the load generator can drive.
- `multi`: K independent service processes on one GPU, the clients' connections spread evenly over them: what
  a second interpreter (its own GIL and event loop) buys.

The per-thread CPU split, /healthz latency and GIL sampling ride along every load point (`bench.gpu_load`).
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.gpu_load import gpu_memory_of, idle_healthz, load_point, start_service, wait_until_ready
from bench.gpu_stages import PARTIAL, keep_partial
from testkit.images import encode
from testkit.server import ServerProcess


def label_like_png(width: int, height: int) -> bytes:
    """A stand-in for a `labels` answer (flat regions of a few classes), when no real one was kept."""
    yy, xx = np.mgrid[0:height, 0:width]
    return encode(((xx * 4 // width) + 4 * (yy * 3 // height)).astype(np.uint8), "PNG")


def null_ceiling(pool: ProcessPoolExecutor, bodies: list[bytes], answer: bytes, concurrencies: list[int],
                 seconds: float, processes: int, workdir: Path) -> dict[str, Any]:
    """Closed-loop clients against `bench.null_server`, with each way of holding connections: req/s, the
    clients' CPU and the null server's own."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "null_answer.png"
    path.write_bytes(answer)
    out: dict[str, Any] = {"answer_bytes": len(answer), "points": []}
    with ServerProcess(None, command=[sys.executable, "-m", "bench.null_server"], log_level=None,
                       NULL_BODY=str(path)) as server:
        server.wait_ready(timeout=60)
        for per_connection, concurrency in itertools.product((False, True), concurrencies):
            point = load_point(pool, server, bodies, concurrency, seconds, processes, service=False,
                               per_connection=per_connection)
            out["points"].append(point)
            print(f"  null {point['client_pool']} c={concurrency}: {point['throughput']:.1f} req/s, p50 "
                  f"{point['p50']:.1f} ms; clients "
                  f"{point['client_cores']:.2f} cores ({point['client_processes']} processes, busiest "
                  f"{point['client_core_max']:.2f}), null server {point['server_cores']:.2f} cores", flush=True)
    return out


def multi_process(pool: ProcessPoolExecutor, model: Path, bodies: list[bytes], counts: list[int],
                  concurrencies: list[int], seconds: float, processes: int, env: dict[str, str],
                  per_connection: bool = False, ready_timeout: float = 180.0) -> dict[str, Any]:
    """For each K in `counts`: K service processes (same model, same settings) at each concurrency; each
    must be ready within `ready_timeout` of the start. A failure keeps what was measured before it
    (`keep_partial`)."""
    out: dict[str, Any] = {"env": env}
    count = 0
    try:
        for count in counts:
            out[str(count)] = _k_processes(pool, model, bodies, count, concurrencies, seconds, processes, env,
                                           per_connection, ready_timeout)
    except Exception as exc:
        if getattr(exc, PARTIAL, None) is not None:  # the points of the K that failed
            out[str(count)] = getattr(exc, PARTIAL)
        if any(isinstance(v, dict) and v.get("points") for v in out.values()):
            keep_partial(exc, out)
        raise
    return out


def _k_processes(pool: ProcessPoolExecutor, model: Path, bodies: list[bytes], count: int, concurrencies: list[int],
                 seconds: float, processes: int, env: dict[str, str], per_connection: bool,
                 ready_timeout: float) -> dict[str, Any]:
    """`count` service processes at each concurrency (see `multi_process`)."""
    start = time.perf_counter()
    # Each process's thread pools default to every CPU: K of them would oversubscribe the host, so each
    # gets its share (unless the run's settings name the counts).
    share = str(max(1, (os.cpu_count() or 1) // count))
    env_k = {"SEGMENT_INTRA_OP_THREADS": share, "SEGMENT_WORKER_THREADS": share, **env}
    servers: list[ServerProcess] = []
    result: dict[str, Any] = {"points": []}
    try:
        for _ in range(count):  # all load and warm up at once; one by one, so a failed start stops the others
            servers.append(start_service(model, **env_k))
        for server in servers:  # they warm up together: the deadline is shared
            wait_until_ready(server, max(1.0, ready_timeout - (time.perf_counter() - start)))
        result.update(ready_s=time.perf_counter() - start, healthz_idle=idle_healthz(servers[0].url))
        for concurrency in concurrencies:
            point = load_point(pool, servers, bodies, concurrency, seconds, processes,
                               per_connection=per_connection)
            result["points"].append(point)
            split = ", ".join(f"{p['throughput']:.0f}" for p in point["servers"])
            print(f"  K={count} c={concurrency}: {point['throughput']:.1f} img/s ({split}), p50 "
                  f"{point['p50']:.1f} ms, p99 {point['p99']:.1f} ms; servers {point['server_cores']:.1f} cores, "
                  f"clients {point['client_cores']:.1f}", flush=True)
        result["gpu_memory_mib"] = [gpu_memory_of(server.pid) for server in servers]
    except Exception as exc:
        if result["points"]:
            keep_partial(exc, result)
        raise
    finally:
        for server in servers:
            server.terminate()
    return result
