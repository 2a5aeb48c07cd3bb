"""Load points for the GPU benchmark: closed-loop clients spread over load-generator processes (and over one or
more servers), with what each side spent: the server's CPU split per thread group, the clients' CPU, the
latency of /healthz probed beside the load, and optionally the GIL (py-spy)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.gil_probe import GilSampler
from bench.harness import latency_summary, loop_lag_ms, stage_means_ms
from testkit.load import HealthProbe, closed_loop
from testkit.procstat import descendants, thread_times, tree_cpu_seconds
from testkit.server import ServerProcess

POOLS = {False: "shared", True: "per-connection"}  # how each load-generator process holds its connections


def python_threads(server: ServerProcess, taken_after: float, wait_s: float = 2.0) -> dict[int, str]:
    """tid -> Python thread name, from the map `bench.thread_map` keeps (empty without one). It waits up to
    `wait_s` for a map listed after `taken_after` (wall time): a pool thread started near the end of a short load
    point is otherwise missing from it, and its CPU would count as `native`."""
    path = server.env.get("BENCH_THREAD_MAP")
    if not path:
        return {}
    deadline = time.monotonic() + wait_s
    threads: dict[int, str] = {}
    while True:
        try:
            snapshot = json.loads(Path(path).read_text())
            threads = {int(k): v for k, v in snapshot["threads"].items()}
            if snapshot["checked_at"] >= taken_after:
                return threads
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if time.monotonic() >= deadline:
            return threads  # the server stopped writing it: the last map read, if any
        time.sleep(0.05)


def thread_group(pid: int, tid: int, name: str | None, comm: str = "", main_comm: str = "") -> str:
    """The group a thread's CPU is counted in: `loop` (the main thread, where uvicorn's event loop runs), a
    Python pool by its name less the numbers (`codec`, `inference`, `asyncio`, ...), `native` for unnamed native
    threads (onnxruntime's intra-op pool, mostly), `native:<name>` for native threads that name themselves."""
    if tid == pid:
        return "loop"
    if name:
        return re.sub(r"[_-]?\d+", "", name).strip() or name
    if not comm or comm == main_comm:
        return "native"
    return "native:" + re.sub(r"\d+", "", comm)


def thread_split(pid: int, before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                 names: dict[int, str], wall: float) -> dict[str, dict[str, float]]:
    """{group: {cores, threads}} between two `thread_times` snapshots."""
    main_comm = after.get(pid, ("", 0.0))[0]
    cores: Counter[str] = Counter()
    count: Counter[str] = Counter()
    for tid, (comm, cpu) in after.items():
        group = thread_group(pid, tid, names.get(tid), comm, main_comm)
        cores[group] += (cpu - before.get(tid, (comm, 0.0))[1]) / wall
        count[group] += 1
    return {g: {"cores": c, "threads": count[g]} for g, c in cores.most_common()}


def _drive(args: tuple[list[tuple[int, str, int]], list[bytes], float, str, bool]
           ) -> tuple[list[tuple[int, int, float, int]], float, float]:
    """One load-generator process: `share` connections to each (server, url, share), in one event loop.
    Returns (server, status, latency, batch) per request, the wall time and this process's CPU seconds."""
    targets, bodies, seconds, output, per_connection = args
    cpu0 = time.process_time()

    async def run() -> list[tuple[Any, float]]:
        return await asyncio.gather(*(closed_loop(url, bodies, share, seconds, 10**9, {"output": output},
                                                  per_connection=per_connection) for _, url, share in targets))

    parts = asyncio.run(run())
    samples = [(k, s.status, s.latency_s, s.batch_size) for (k, _, _), (part, _) in zip(targets, parts, strict=True)
               for s in part]
    return samples, max(wall for _, wall in parts), time.process_time() - cpu0


def connection_plan(concurrency: int, processes: int, servers: Sequence[str]) -> list[list[tuple[int, str, int]]]:
    """Connections spread evenly over the load-generator processes, and each process's over the servers."""
    procs = max(1, min(processes, concurrency))
    shares = [concurrency // procs + (i < concurrency % procs) for i in range(procs)]
    plan, slot = [], 0
    for share in shares:
        per_server: Counter[int] = Counter()
        for _ in range(share):
            per_server[slot % len(servers)] += 1
            slot += 1
        plan.append([(k, servers[k], n) for k, n in sorted(per_server.items())])
    return plan


def load_point(pool: ProcessPoolExecutor, servers: ServerProcess | Sequence[ServerProcess], bodies: list[bytes],
               concurrency: int, seconds: float, processes: int, output: str = "labels", *,
               service: bool = True, gil: bool = False, per_connection: bool = False) -> dict[str, Any]:
    """A closed loop of `concurrency` clients spread over load-generator processes (one Python client process
    tops out near the GPU's rate) and over `servers`. `service`: the servers are the service (stage means from
    /metrics, /healthz probed); `gil`: sample the first server's GIL with py-spy meanwhile; `per_connection`:
    one httpx client per connection instead of one pool per load-generator process."""
    servers = [servers] if isinstance(servers, ServerProcess) else list(servers)
    before = [s.metrics() for s in servers] if service else []
    probe = HealthProbe(servers[0].url, "/healthz" if service else "/")
    threads0 = [thread_times(s.pid) for s in servers]
    cpu0 = [tree_cpu_seconds(s.pid) for s in servers]  # with its worker processes, if any
    sampler = GilSampler(servers[0].pid, seconds - 0.5) if gil else None
    plan = connection_plan(concurrency, processes, [s.url for s in servers])
    try:
        with probe:
            results = list(pool.map(_drive, [(targets, bodies, seconds, output, per_connection) for targets in plan]))
        cpu1 = [tree_cpu_seconds(s.pid) for s in servers]
        threads1 = [thread_times(s.pid) for s in servers]
        threads_listed = time.time()
        after = [s.metrics() for s in servers] if service else []
    except BaseException:
        if sampler is not None:  # its result will not be read: stop py-spy and remove its file
            sampler.close()
        raise
    samples = [s for part, _, _ in results for s in part]
    wall = max(w for _, w, _ in results)
    answered = [s for s in samples if s[1] == 200]
    ok = [lat for _, _, lat, _ in answered]
    summary: dict[str, Any] = latency_summary(ok, wall)
    per_server = []
    for k, server in enumerate(servers):
        names = python_threads(server, threads_listed)
        mine = [s for s in samples if s[0] == k]
        per_server.append({"throughput": len([s for s in mine if s[1] == 200]) / wall,
                           "cores": (cpu1[k] - cpu0[k]) / wall,
                           "loop_cores": (threads1[k].get(server.pid, ("", 0.0))[1]
                                          - threads0[k].get(server.pid, ("", 0.0))[1]) / wall,
                           "threads": thread_split(server.pid, threads0[k], threads1[k], names, wall),
                           "stages_ms": stage_means_ms(before[k], after[k]) if service else {}})
    client_cpu = [cpu for _, _, cpu in results]
    summary.update(concurrency=concurrency, client_pool=POOLS[per_connection],
                   errors=len([s for s in samples if s[1] != 200]),
                   statuses=sorted({s[1] for s in samples if s[1] != 200}),
                   # Over answered images only: an error answer ran in no batch (its batch reads 0).
                   mean_batch=float(np.mean([s[3] for s in answered])) if answered else 0.0,
                   stages_ms=per_server[0]["stages_ms"], server_cores=sum(p["cores"] for p in per_server),
                   loop_cores=max(p["loop_cores"] for p in per_server), threads=per_server[0]["threads"],
                   # What each served image cost the servers, refusals included: quick 503s would otherwise
                   # dilute it and make an overloaded point look cheap.
                   server_cpu_ms_per_request=sum(cpu1[k] - cpu0[k] for k in range(len(servers))) * 1000
                   / max(1, len(answered)),
                   client_processes=len(plan), client_cores=sum(client_cpu) / wall,
                   client_core_max=max(client_cpu) / wall, healthz=probe.summary(),
                   loop_lag_ms=loop_lag_ms(before[0], after[0]) if service else {})
    if len(servers) > 1:
        summary["servers"] = per_server
    if sampler is not None:
        summary["gil"] = sampler.result(lambda tid, name, pid=servers[0].pid: thread_group(pid, tid, name))
    return summary


def idle_healthz(url: str, seconds: float = 1.0) -> dict[str, float]:
    """/healthz latency with no load: the baseline the loaded figures compare to."""
    with HealthProbe(url) as probe:
        time.sleep(seconds)
    return probe.summary()


def warm_up_error(url: str) -> str | None:
    """The warm-up error `/readyz` reports (a service retries a failed warm-up while it answers 503), or None."""
    try:
        body = httpx.get(f"{url}/readyz", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return None
    return body.get("error") if isinstance(body, dict) else None


def wait_until_ready(server: ServerProcess, timeout: float, retries_s: float = 10.0, poll_s: float = 1.0) -> None:
    """`server.wait_ready`, given up once `/readyz` has reported a failed warm-up for `retries_s`: the service
    retries it every few seconds for a minute before it stops itself (under a supervisor a failing worker is
    replaced for ever), which a run with ten minutes for every stage cannot wait for; a few retries still let a
    passing failure (memory another process was freeing) recover."""
    deadline = time.monotonic() + timeout
    failing_since: float | None = None
    while True:
        left = deadline - time.monotonic()
        try:
            server.wait_ready(timeout=max(0.0, min(poll_s, left)))
            return
        except RuntimeError as exc:
            if server.proc.poll() is not None:  # it exited: its own message has the log
                raise
            if left <= poll_s:
                raise RuntimeError(f"not ready after {timeout:.0f} s:\n{server.log[-4000:]}") from exc
        error = warm_up_error(server.url)
        failing_since = None if error is None else failing_since or time.monotonic()
        if failing_since is not None and time.monotonic() - failing_since >= retries_s:
            raise RuntimeError(f"warm-up failed for {retries_s:.0f} s ({error}); not waiting for more retries:\n"
                               f"{server.log[-4000:]}")


class MappedServer(ServerProcess):
    """A service under `bench.thread_map`, its map in a folder of its own that goes when the server stops (the
    map's writer also leaves a half-written sibling there when the server is stopped mid-write)."""

    def __init__(self, model: Path, folder: tempfile.TemporaryDirectory[str], **env: str) -> None:
        self._folder = folder
        super().__init__(model, command=[sys.executable, "-m", "bench.thread_map"],
                         BENCH_THREAD_MAP=str(Path(folder.name) / "threads.json"), **env)

    def terminate(self, timeout: float = 60) -> int:
        """Stop the server (`ServerProcess.terminate`), then remove its thread map."""
        try:
            return super().terminate(timeout)
        finally:
            self._folder.cleanup()


def start_service(model: Path, **env: str) -> ServerProcess:
    """`segment-serve` under `bench.thread_map`, so the CPU split can name its Python threads."""
    folder = tempfile.TemporaryDirectory(prefix="threads_")
    try:
        return MappedServer(model, folder, **env)
    except BaseException:  # not started: nobody will stop it, so nobody else removes the folder
        folder.cleanup()
        raise


def gpu_memory_of(pid: int) -> int | None:
    """MiB of GPU memory a process and its worker processes hold (nvidia-smi), or None."""
    try:
        query = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    members = {str(p) for p in [pid, *descendants(pid)]}
    held = [int(parts[1]) for parts in ([p.strip() for p in line.split(",")] for line in query.stdout.splitlines())
            if len(parts) == 2 and parts[0] in members and parts[1].isdigit()]
    return sum(held) if held else None
