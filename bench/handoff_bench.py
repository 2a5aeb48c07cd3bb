"""CPU cost of one hand-off to a worker thread and back to the event loop: `loop.run_in_executor` on a
`ThreadPoolExecutor` against `service.core.handoff.WorkerThreads.run`, and of one timed body read (`asyncio.wait_for`
on a coroutine against `asyncio.timeout`), on uvloop as the service runs.

Method: 3000 sequential calls of a no-op per round, the event loop's thread CPU (`time.thread_time`) and the
process's (`time.process_time`, the worker threads included) per call, medians of `--rounds` rounds, the
variants alternating so that both see the same machine load.

Usage:
    python -m bench.handoff_bench [--rounds 7] [--calls 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import uvloop

from service.core.handoff import WorkerThreads


def _noop() -> int:
    return 1


async def _message() -> dict[str, str]:
    return {"type": "http.request"}


async def measure(rounds: int, calls: int) -> dict[str, tuple[float, float]]:
    """name -> (event-loop µs, process µs) per call."""
    loop = asyncio.get_running_loop()
    pool, threads = ThreadPoolExecutor(2, "pool"), WorkerThreads(2, "threads")

    async def executor() -> object:
        return await loop.run_in_executor(pool, _noop)

    async def worker_threads() -> object:
        return await threads.run(_noop)

    async def wait_for() -> object:
        return await asyncio.wait_for(_message(), 10)

    async def timeout() -> object:
        async with asyncio.timeout(10):
            return await _message()

    variants: dict[str, Callable[[], Awaitable[object]]] = {
        "run_in_executor(ThreadPoolExecutor)": executor, "WorkerThreads.run": worker_threads,
        "wait_for(receive())": wait_for, "asyncio.timeout + receive()": timeout}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, call in variants.items():
            for _ in range(100):
                await call()
            t0, p0 = time.thread_time(), time.process_time()
            for _ in range(calls):
                await call()
            samples[name].append(((time.thread_time() - t0) / calls * 1e6, (time.process_time() - p0) / calls * 1e6))
    pool.shutdown()
    threads.shutdown()
    return {name: (statistics.median(s[0] for s in got), statistics.median(s[1] for s in got))
            for name, got in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=3000)
    args = ap.parse_args()
    results = uvloop.run(measure(args.rounds, args.calls))
    print("| call | event-loop CPU-µs | process CPU-µs |\n|---|---|---|")
    for name, (loop_us, proc_us) in results.items():
        print(f"| `{name}` | {loop_us:.1f} | {proc_us:.1f} |")


if __name__ == "__main__":
    main()
