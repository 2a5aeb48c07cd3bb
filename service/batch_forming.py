"""Forming the next batch from the waiting line (service/batch_line.py) for the batcher (service/batcher.py).

A batch is cut when it holds `max_batch_size` images or `max_wait_s` after its first image arrived (Triton's
`max_queue_delay`), or at once when no other request is on its way (being decoded): waiting then could only add
latency, so a lone request pays no batching delay. Workers take turns to form (`next_batch`), so a forming batch is
never split between two idle workers, and a batch waits for images still being decoded only while no other worker
is free. Given a `BusyEstimate`, a batch forming while others run keeps filling until they are nearly done.

A cut batch may then run a smaller full bucket now and leave the rest at the head of the line for the next batch
(Triton's preferred batch sizes), when `take` (the engine's plan) says that costs less.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from .batch_line import QueuedImage, WaitingLine
from .busy_estimate import BusyEstimate
from .metrics import Metrics


class BatchForming:
    """Takes batches out of `line`, one forming worker at a time. `in_flight()` and `incoming()` say how many
    batches run now and how many requests are still decoding; `batch_finished()` must be called as a batch ends."""

    def __init__(self, line: WaitingLine, *, max_batch_size: int, max_wait_s: float, concurrency: int,
                 in_flight: Callable[[], int], incoming: Callable[[], int], take: Callable[[int], int],
                 busy: BusyEstimate | None, metrics: Metrics | None,
                 padded_size: Callable[[int], int] = lambda count: count) -> None:
        self._line = line
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._concurrency = concurrency
        self._in_flight = in_flight
        self._incoming = incoming
        self._take = take
        self._padded_size = padded_size
        self._busy = busy
        self._metrics = metrics
        self._forming = asyncio.Lock()  # one worker forms a batch at a time; the others run theirs
        self._batch_done = asyncio.Event()  # set whenever a batch finishes: a filling batch re-checks

    def batch_finished(self) -> None:
        """A running batch ended: a batch filling while it ran re-checks whether it should go now."""
        self._batch_done.set()

    async def next_batch(self) -> list[QueuedImage]:
        """Block for the first image, then take more until the batch is full or max_wait has passed; then keep
        back what the plan says should wait for the next batch."""
        async with self._forming:
            batch = await self._gather()
        # In the line's order: an interactive image that came while the batch filled goes before the bulk ones
        # taken earlier, so that a split runs it now and holds bulk images back.
        batch.sort()
        keep = self._take(len(batch))
        interactive = sum(item.priority == "interactive" for item in batch)
        if 0 < interactive < keep:
            # Bulk images ride with interactive ones only in the rows their bucket runs anyway (padding): each
            # other row lengthens the run (on a CPU in proportion; on a GPU batch 8 took 4.3x batch 1), and an
            # interactive request would wait for bulk work in its own batch. The rest goes first in line.
            keep = min(keep, self._padded_size(interactive))
        if keep < len(batch):
            self._line.hold(batch[keep:])
            if self._metrics is not None:
                self._metrics.held_images.inc(len(batch) - keep)
            del batch[keep:]
        return batch

    async def _gather(self) -> list[QueuedImage]:
        line = self._line
        first = line.next_waiting() or await line.get()
        batch = line.forming = [first]
        deadline = time.perf_counter() + self._max_wait_s
        while len(batch) < self._max_batch_size:
            if (item := line.next_waiting()) is not None:
                batch.append(item)
                continue
            if self._idle_worker_waiting():
                break  # a free worker will take what comes: waiting would only add latency
            fill_s = self._fill_for()
            if fill_s > 0:  # the device is busy with earlier batches: take what arrives until it is nearly free
                await self._fill_one(fill_s)
                continue  # an image came, a batch finished or the time is up: check again
            if self._incoming() == 0:
                break  # nobody on the way: waiting would only add latency
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(line.get(), remaining))
            except TimeoutError:
                break
        line.forming = []  # it runs next, in this same step of the loop: `in_flight` counts it from here on
        return batch

    def _fill_for(self) -> float:
        """Seconds the forming batch may keep filling because earlier batches still occupy the device."""
        if self._busy is None or self._in_flight() == 0:
            return 0.0
        return self._busy.fill_for(time.perf_counter())

    async def _fill_one(self, timeout_s: float) -> None:
        """Add the next queued image to the forming batch, waiting at most `timeout_s` and no longer than until
        a running batch finishes."""
        self._batch_done.clear()
        getter = asyncio.ensure_future(self._line.get())
        finished = asyncio.ensure_future(self._batch_done.wait())
        try:
            await asyncio.wait((getter, finished), timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when the worker is cancelled: a taken image is never dropped
            finished.cancel()
            if getter.done():
                self._line.forming.append(getter.result())
            else:
                getter.cancel()  # a cancelled get leaves its image in the queue for the next getter

    def _idle_worker_waiting(self) -> bool:
        """Whether another worker is free (neither running nor forming). Then images still being decoded need not
        be waited for: they will run on that worker as soon as they arrive, and under load, when every worker is
        busy, batches still fill from the queue."""
        return self._in_flight() < self._concurrency - 1
