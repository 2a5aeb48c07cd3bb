"""Worker threads that hand a call's answer back to the event loop with one wake-up: the codec's, the batcher's, and
each bound session's own thread (`service.core.bound`).

`loop.run_in_executor` on a `ThreadPoolExecutor` costs 26-56 CPU-µs a call, 17-33 of them on the event loop
(uvloop, `python -m bench.handoff_bench`, runs on a shared machine): a concurrent `Future` with its own
`Condition`, the executor's Python-level idle semaphore, `wrap_future`'s chaining both ways and the state copied
back under locks. A `POST /segment` makes three (decode, inference, encode). `WorkerThreads.run` puts one tuple
on a queue and answers with one `call_soon_threadsafe`: 14-25 CPU-µs, 7-14 on the event loop (same runs, on a
`queue.SimpleQueue`). The queue is a `queue.PriorityQueue`, so that the codec can take a finished request's encode
before newer requests' decodes (`service.codec`): ~2.5 CPU-µs more a call, ~1 of them on the event loop (both
queues alternating in one process). It is still an `Executor` (`submit`, `shutdown`), for any other caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")

# A job: the call, and where its answer goes (an asyncio future and its loop, or a concurrent future and None).
_Job = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any] | Future[Any]",
             "asyncio.AbstractEventLoop | None"]
# A queue entry: (minus the priority, the submission count, the job or None for shutdown). The count is unique, so
# entries never compare their jobs, and keeps submission order within one priority.
_Entry = tuple[float, int, "_Job | None"]
# Shutdown's entry sorts after every job, as it did after every queued job in a FIFO: `shutdown(cancel_futures=
# False)` still runs what was queued first.
_LAST = math.inf


def _resolve(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():  # its awaiter may have been cancelled meanwhile
        future.set_result(result)


def _reject(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class WorkerThreads(Executor):
    """Up to `workers` threads named `<name>_<i>`, taking jobs from one queue: the highest `priority` first, in
    submission order within one priority (`submit`'s jobs have priority 0). As in `ThreadPoolExecutor`,
    a thread is added only when none is idle, so sequential requests keep to one thread (and one malloc arena:
    with both codec threads taking turns, the soak test's RSS rose past its bound). Daemon threads: one that is
    never shut down cannot hold the interpreter open."""

    def __init__(self, workers: int, name: str, initializer: Callable[[], object] | None = None) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.workers, self.name = workers, name
        self._initializer = initializer
        self._jobs: queue.PriorityQueue[_Entry] = queue.PriorityQueue()
        self._order = itertools.count()  # next() is atomic in CPython: safe from any submitting thread
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._idle = 0  # threads done with a job and not yet given another (ThreadPoolExecutor's idle semaphore)
        self._closed = False

    async def run(self, fn: Callable[..., T], *args: Any, priority: int = 0) -> T:
        """`fn(*args)` in a worker thread, awaited; queued ahead of every job of lower `priority` not yet taken.
        Cancelling the wait before a worker takes the job skips it, as `run_in_executor` does."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._put((fn, args, future, future.get_loop()), priority)
        return await future

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        self._put((fn, args, future, None) if not kwargs else (lambda: fn(*args, **kwargs), (), future, None), 0)
        return future

    def run_on_each(self, fn: Callable[[], T]) -> list[T]:
        """`fn()` once on every one of the `workers` threads (starting any not yet started), all at once; their
        results. What must happen on each thread that will run jobs, such as onnxruntime's per-thread CUDA
        handles made during warm-up rather than on a thread's first batch. Not from one of these threads (it
        would wait for itself); a busy thread takes its turn when its job is done."""
        if threading.current_thread() in self._threads:
            raise RuntimeError(f"run_on_each called from {threading.current_thread().name}, one of its own threads")
        # A party waits at the barrier until every thread holds one, so no thread can take two of them.
        gate = threading.Barrier(self.workers)

        def once() -> T:
            gate.wait()
            return fn()

        return [future.result() for future in [self.submit(once) for _ in range(self.workers)]]

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False, timeout_s: float | None = None) -> None:
        """As `Executor.shutdown`; with `timeout_s`, wait at most that long in all (a job that never returns, such
        as a run on a hung device, is then left to its daemon thread)."""
        with self._lock:
            self._closed = True
            if cancel_futures:
                self._cancel_queued()
            self._jobs.put((_LAST, next(self._order), None))  # each worker passes it on to the next, then ends
        if wait:
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            for thread in self._threads:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _put(self, job: _Job, priority: int) -> None:
        if self._closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        with self._lock:
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self.workers:
                thread = threading.Thread(target=self._work, name=f"{self.name}_{len(self._threads)}", daemon=True)
                thread.start()
                self._threads.append(thread)
        self._jobs.put((-priority, next(self._order), job))

    def _done(self) -> None:
        with self._lock:
            self._idle += 1

    def _cancel_queued(self) -> None:
        while True:
            try:
                _, _, job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is None:
                continue
            _, _, future, loop = job
            if loop is None:
                future.cancel()
            else:
                _call_soon(loop, future.cancel)

    def _work(self) -> None:
        if self._initializer is not None:
            self._initializer()
        while True:
            entry = self._jobs.get()
            job = entry[2]
            if job is None:
                self._jobs.put(entry)
                return
            del entry  # as `job` below: an idle worker holds nothing of its last job
            fn, args, future, loop = job
            # In functions of their own, so that an idle worker holds no reference to the last job's arrays. Each
            # marks this thread idle (`_done`) before it delivers the answer: the awaiter's next job, submitted as
            # soon as it has the answer, found no idle thread and started another (a second malloc arena).
            if loop is None:
                _run_concurrent(fn, args, future, self._done)  # type: ignore[arg-type]
            else:
                _run_async(fn, args, future, loop, self._done)  # type: ignore[arg-type]
            del job, fn, args, future, loop


def _run_async(fn: Callable[..., Any], args: tuple[Any, ...], future: asyncio.Future[Any],
               loop: asyncio.AbstractEventLoop, idle: Callable[[], None]) -> None:
    if future.cancelled():
        idle()
        return
    try:
        result = fn(*args)
    except BaseException as exc:  # every failure belongs to the awaiter
        idle()
        _call_soon(loop, _reject, future, exc)
    else:
        idle()
        _call_soon(loop, _resolve, future, result)


def _run_concurrent(fn: Callable[..., Any], args: tuple[Any, ...], future: Future[Any],
                    idle: Callable[[], None]) -> None:
    if not future.set_running_or_notify_cancel():
        idle()
        return
    try:
        result = fn(*args)
    except BaseException as exc:
        idle()
        future.set_exception(exc)
    else:
        idle()
        future.set_result(result)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        loop.call_soon_threadsafe(callback, *args)
