"""Dynamic batching: `concurrency` workers, fed by one bounded waiting line, run batches on the engine.

How a batch is formed (cut at `max_batch_size` or `max_wait_ms`, at once when nobody else is on the way, split to a
preferred bucket, filled while the device is busy) is service/batch_forming.py. Inference runs in dedicated
threads so the event loop stays free.

Several batches in flight (Triton's instance group) keep a GPU busy while another batch's inputs are copied
in and its labels copied out: measured on an H100, two threads on one session raised batch-8 throughput
32-39 %.

A request that stops waiting (its client hung up, or its timeout passed) takes its image out of line at once
(service/batch_line.py): an abandoned image holds no place in the queue, a forming batch or `segment_queue_depth`,
and is never run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np

from .batch_forming import BatchForming
from .batch_line import QueuedImage, WaitingLine
from .batch_runs import InferenceResult, InferenceTimeout, RunCounter, WaitSplit
from .busy_estimate import BusyEstimate
from .core.handoff import WorkerThreads
from .core.priorities import Priority
from .errors import ApiError
from .inference_guard import InferenceGuard, InferenceHealth
from .metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")


class Batcher:
    """Collects letterboxed images into batches and runs them through `run_images`, `concurrency` at a time."""

    def __init__(self, run_images: Callable[[list[np.ndarray]], np.ndarray], *, max_batch_size: int,
                 max_wait_ms: float, max_queue: int, metrics: Metrics | None = None,
                 retry_after_s: int = 1, concurrency: int = 1,
                 padded_size: Callable[[int], int] | None = None, take: Callable[[int], int] | None = None,
                 expected_s: Callable[[int], float] | None = None, health: InferenceHealth | None = None,
                 probe_image: np.ndarray | None = None) -> None:
        self._run_images = run_images
        self._take = take or (lambda count: count)
        self._padded_size = padded_size or (lambda count: count)
        self.concurrency = max(1, concurrency)
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics
        self.retry_after_s = retry_after_s
        self._line: WaitingLine | None = None  # made on the loop, by `start`
        self._workers: list[asyncio.Task[None]] = []
        self._forming: BatchForming | None = None  # made on the loop, by `start`
        # One thread per worker: at most `concurrency` batches run at once.
        self._executor = WorkerThreads(self.concurrency, "inference")
        self._accepting = False
        self._running: list[tuple[float, list[QueuedImage]]] = []  # batches running now: start (monotonic), images
        self._timeout_s: float | None = None  # the longest request timeout (`infer`): a run older is of no use
        self.peak_in_flight = 0  # the most that ever ran at once: the proof that batches overlap
        self._incoming = 0  # requests decoding now, which will reach the queue shortly
        # Given the seconds a batch takes, a batch forming while others run fills until they are nearly done.
        self._busy = BusyEstimate(expected_s) if expected_s is not None else None
        # A failed batch: the device's fault or the batch's? (service/inference_guard.py) It tells the counter of
        # the requests' runs only, never of its probes (service/batch_runs.py).
        self._runs = RunCounter(metrics, self._padded_size)
        self._guard = InferenceGuard(lambda tensors: self._executor.run(self._timed_run, tensors),
                                     health or InferenceHealth(), probe_image, metrics, ran=self._runs.ran)

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the workers on the running loop."""
        self._line = WaitingLine(self.max_queue)
        self._forming = BatchForming(self._line, max_batch_size=self.max_batch_size, max_wait_s=self.max_wait_s,
                                     concurrency=self.concurrency, in_flight=lambda: self.in_flight,
                                     incoming=lambda: self._incoming, take=self._take, busy=self._busy,
                                     metrics=self.metrics, padded_size=self._padded_size)
        self._accepting = True
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._work(), name=f"batcher-{i}") for i in range(self.concurrency)]

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Stop accepting, let the queued and running batches finish while a request waits for them (up to a
        timeout), then stop the workers."""
        self._accepting = False
        deadline = time.monotonic() + drain_timeout_s
        # Not `in_flight`: once uvicorn's graceful shutdown has cut off the requests still in the server (answered
        # 503, service/server.py), a batch of theirs still on a slow or hung device answers nobody, and waiting
        # for it kept the process past the shutdown timeout (and an orchestrator's grace period) for nothing.
        while self._line is not None and self._waited_for() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await self._guard.close()
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        # Anything still queued after the timeout is answered rather than left hanging.
        for item in self._line.take_all() if self._line is not None else []:
            if not item.future.done():
                item.future.set_exception(ApiError(503, "shutting_down", "the server is shutting down",
                                                   self._retry_after()))
        # A run still going now gets a moment, not the drain timeout: on a hung device it never returns.
        self._executor.shutdown(wait=True, timeout_s=1.0)

    # -- state -----------------------------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Batches running now."""
        return len(self._running)

    @property
    def depth(self) -> int:
        return self._line.depth if self._line is not None else 0

    def _waited_for(self) -> bool:
        """Whether a request still waits for an image queued or running here."""
        return bool(self.depth) or any(not item.future.done() for _, batch in self._running for item in batch)

    @property
    def full(self) -> bool:
        """No more work can be taken: the queue is full, or the device is `stalled` (/readyz: overloaded)."""
        return self._line is not None and (self._line.full() or self.stalled)

    @property
    def stalled(self) -> bool:
        """Whether every inference slot holds a run that has outlived the longest request timeout (a hung device):
        an image queued now could not even start in time. Without this, /readyz stayed ready on a hung device, and
        each request waited its whole timeout for a 504, until abandoned images happened to fill the queue."""
        if self._timeout_s is None or len(self._running) < self.concurrency:
            return False
        now = time.monotonic()
        return all(now - started >= self._timeout_s for started, _ in self._running)

    @property
    def health(self) -> InferenceHealth:
        """Whether model runs work on the device (service/inference_guard.py)."""
        return self._guard.health

    @property
    def guard(self) -> InferenceGuard:
        """What tells a failing device from a failing batch; warm-up reports to it too."""
        return self._guard

    @property
    def padding_fraction(self) -> float:
        """The share of the rows run for requests that padded buckets (/readyz): the guard's probes not counted."""
        return self._runs.padding_fraction

    @property
    def fills_while_busy(self) -> bool:
        """Whether a batch forming while others run keeps filling until they are nearly done."""
        return self._busy is not None

    @property
    def running(self) -> bool:
        return self._accepting and bool(self._workers) and not any(w.done() for w in self._workers)

    def on_each_thread(self, fn: Callable[[], T]) -> list[T]:
        """`fn()` once on each thread that runs batches, all at once (warm-up: `FixedShapeRunner.warm_up`)."""
        return self._executor.run_on_each(fn)

    # -- requests --------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """Mark a request as on its way (decoding) so a forming batch waits for it, up to max_wait_ms."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1

    async def infer(self, tensor: np.ndarray, timeout_s: float, request_id: str | None = None,
                    on_abandoned: Callable[[WaitSplit], None] | None = None,
                    wait_s: float | None = None, priority: Priority = "interactive") -> InferenceResult:
        """Queue one letterboxed image and wait for its labels, at most `timeout_s` (the server's request timeout)
        or `wait_s`, a request's own shorter deadline. If the wait is cancelled (its client hung up), `on_abandoned`
        is told where the wait went before the cancellation goes on. Interactive images are taken before bulk ones
        (service/batch_line.py).

        Raises ApiError 503 `overloaded` (queue full) or `inference_unavailable` (the device is failing, or
        `stalled`), 504 `timeout` (an `InferenceTimeout`, which splits the wait into queue and run), 500
        `inference_failed`.
        """
        item = self.enqueue(tensor, timeout_s, request_id, priority)
        return await self.wait(item, timeout_s, on_abandoned, wait_s)

    def enqueue(self, tensor: np.ndarray, timeout_s: float, request_id: str | None = None,
                priority: Priority = "interactive") -> QueuedImage:
        """`infer`'s first half, with no await: the image in line (its refusals), for `wait`. Several images
        enqueued in a row are in line together before any other request's."""
        if not self.running or self._line is None:
            raise ApiError(503, "shutting_down", "the server is not accepting work", self._retry_after())
        # The server's timeout, never a request's own: a run outliving a client's 50 ms budget is no hung device.
        self._timeout_s = max(self._timeout_s or 0.0, timeout_s)
        self.refuse_if_stalled()
        future: asyncio.Future[InferenceResult] = asyncio.get_running_loop().create_future()
        item = QueuedImage(tensor, future, request_id, priority)
        try:
            self._line.put(item)
        except asyncio.QueueFull:
            raise ApiError(503, "overloaded", f"the inference queue is full ({self.max_queue}); retry shortly",
                           self._retry_after()) from None
        self._observe_depth()
        return item

    async def wait(self, item: QueuedImage, timeout_s: float,
                   on_abandoned: Callable[[WaitSplit], None] | None = None,
                   wait_s: float | None = None) -> InferenceResult:
        """`infer`'s second half: the labels of an `enqueue`d image (see `infer`). An image whose wait never
        began (its task cancelled first) is taken out of line with `withdraw`."""
        assert self._line is not None
        future = item.future
        limit_s = timeout_s if wait_s is None else min(wait_s, timeout_s)
        try:
            # A timeout or a cancelled handler (the client hung up) cancels the future.
            return await asyncio.wait_for(future, limit_s)
        except TimeoutError:  # its wait until it left the line is queueing; after that, its batch ran
            raise InferenceTimeout.after(limit_s, self._wait_of(item), own=limit_s < timeout_s) from None
        except asyncio.CancelledError:
            if on_abandoned is not None:
                on_abandoned(self._wait_of(item))
            raise
        finally:
            if future.cancelled() and self._line.discard(item):  # stopped waiting: out of line at once
                self._observe_depth()

    def withdraw(self, item: QueuedImage) -> None:
        """Take an `enqueue`d image nobody waits for out of line (nothing once it has its labels)."""
        if item.future.cancel() and self._line is not None and self._line.discard(item):
            self._observe_depth()

    @staticmethod
    def _wait_of(item: QueuedImage) -> WaitSplit:
        return WaitSplit.of(item.enqueued, item.left_line, time.perf_counter())

    def refuse_if_stalled(self) -> None:
        """503 `inference_unavailable` (with Retry-After) while the device is `stalled`."""
        if self.stalled:
            raise ApiError(503, "inference_unavailable", f"model runs on this server have not returned in "
                           f"{self._timeout_s:g}s; retry shortly or elsewhere", self._retry_after())

    def _retry_after(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}

    # -- worker ----------------------------------------------------------------------------------------------
    async def _work(self) -> None:
        assert self._forming is not None
        while True:
            batch = await self._forming.next_batch()
            self._observe_depth()
            live = [item for item in batch if not item.future.done()]  # drop timed-out / disconnected
            if not live:
                continue
            try:
                await self._run_batch(live)
            except Exception:
                # A fault of ours rather than of the run (the guard answers those): these requests get a 500, and
                # the worker carries on; were it to end, the server would stay up and never serve again.
                log.exception("a batch of %d failed outside its model run", len(live))
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(ApiError(500, "internal_error", "internal server error"))

    async def _run_batch(self, live: list[QueuedImage]) -> None:
        """Run one batch and answer each of its requests."""
        running = self._batch_started(live)
        planned_end = self._busy.started(len(live), time.perf_counter()) if self._busy is not None else 0.0
        try:
            # Copying N letterboxed images (MBs) into one batch happens in the inference thread, not on the loop.
            # A failed run fails only the requests that fail on their own; the worker carries on.
            outcomes = await self._guard.run([item.tensor for item in live],
                                             wanted=lambda index: not live[index].future.done())
        finally:
            self._batch_finished(running, planned_end)
        for item, outcome in zip(live, outcomes, strict=True):
            if item.future.done() or outcome is None:  # the client may have gone away while we ran
                continue
            if isinstance(outcome, ApiError):
                item.future.set_exception(outcome)
            else:  # the run that produced its labels: the batch, or after a failed batch its run alone
                run = outcome.run
                item.future.set_result(InferenceResult(outcome.labels, run.started - item.enqueued, run.seconds,
                                                       run.images))

    def _timed_run(self, tensors: list[np.ndarray]) -> np.ndarray:
        """`run_images` in the inference thread, its time added to the busy counter (timed there, so a busy
        event loop does not count as inference)."""
        start = time.perf_counter()
        try:
            labels = self._run_images(tensors)
        finally:
            if self.metrics is not None:
                self.metrics.inference_busy.inc(time.perf_counter() - start)
        return labels

    def _batch_started(self, live: list[QueuedImage]) -> tuple[float, list[QueuedImage]]:
        # The images leave the line here, in the loop step that cut their batch: from now on they wait for its run.
        left_line = time.perf_counter()
        for item in live:
            item.left_line = left_line
        running = (time.monotonic(), live)
        self._running.append(running)
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        if self.metrics is not None:
            self.metrics.batches_in_flight.set(self.in_flight)
        return running

    def _batch_finished(self, running: tuple[float, list[QueuedImage]], planned_end: float) -> None:
        self._running = [batch for batch in self._running if batch is not running]
        if self._busy is not None:
            self._busy.finished(planned_end, time.perf_counter(), self.in_flight)
        if self._forming is not None:
            self._forming.batch_finished()
        if self.metrics is not None:
            self.metrics.batches_in_flight.set(self.in_flight)

    def _observe_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.depth)
