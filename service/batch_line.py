"""The images waiting for the batcher (service/batcher.py): the bounded queue, those a split batch held back, and
the batch being formed; and taking out, wherever it waits, the image of a request that stopped waiting.

An abandoned image (its client hung up, or its timeout passed) left in line held a queue place until a worker
came by, refusing live requests 503 and turning /readyz `overloaded` meanwhile, then a place in a batch.

Two priorities (Triton's priority levels): an `interactive` image is taken before every `bulk` one waiting, in
arrival order within each, so a bulk backlog (a folder of photos being labelled) adds at most the batches already
running to an interactive request's wait. How many places bulk requests may take is admission's business
(service/admission.py).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .core.priorities import PRIORITIES, Priority

if TYPE_CHECKING:
    from .batch_runs import InferenceResult


_arrivals = itertools.count()  # arrival order, which breaks ties within a priority


@dataclass(eq=False)  # identity: an image is found in line by `is`, never by comparing its tensor
class QueuedImage:
    """One request's letterboxed image, and where its answer goes. `enqueued` and `left_line` (perf_counter): when
    it was queued, and when it left the line, taken into a batch that runs (None until then). Images are ordered
    as they are taken: by `priority`, then arrival."""

    tensor: np.ndarray
    future: asyncio.Future[InferenceResult]
    request_id: str | None
    priority: Priority = "interactive"
    enqueued: float = field(default_factory=time.perf_counter)
    left_line: float | None = None
    arrival: int = field(default_factory=lambda: next(_arrivals))

    @property
    def rank(self) -> tuple[int, int]:
        return PRIORITIES.index(self.priority), self.arrival

    def __lt__(self, other: QueuedImage) -> bool:  # asyncio.PriorityQueue's order
        return self.rank < other.rank


class _Queue(asyncio.PriorityQueue[QueuedImage]):
    """asyncio's bounded priority queue, from which an image can be taken out wherever it stands. `_queue` is the
    heap asyncio.PriorityQueue keeps its items in."""

    def discard(self, image: QueuedImage) -> bool:
        """Take `image` out; whether it was there."""
        items: list[Any] = self._queue  # type: ignore[attr-defined]
        for index, item in enumerate(items):
            if item is image:
                items[index] = items[-1]
                items.pop()
                heapq.heapify(items)  # at most `max_queue` images: cheaper than a lazily deleted entry's bookkeeping
                return True
        return False

    def head(self) -> QueuedImage | None:
        """The image `get` would take next, left in place."""
        items: list[QueuedImage] = self._queue  # type: ignore[attr-defined]
        return items[0] if items else None


class WaitingLine:
    """Every image not yet running: queued (at most `max_queue`), held back by a split batch (first in line for
    the next batch), or in the batch being formed (still waiting, as far as anyone can tell)."""

    def __init__(self, max_queue: int) -> None:
        self.queue = _Queue(max_queue)
        self.held: deque[QueuedImage] = deque()
        self.forming: list[QueuedImage] = []

    @property
    def depth(self) -> int:
        return len(self.held) + len(self.forming) + self.queue.qsize()

    def full(self) -> bool:
        return self.queue.full()

    def put(self, image: QueuedImage) -> None:
        """Queue `image`; asyncio.QueueFull when the queue is full."""
        self.queue.put_nowait(image)

    async def get(self) -> QueuedImage:
        """The next queued image, waiting for one (held images are not looked at: `next_waiting`)."""
        return await self.queue.get()

    def next_waiting(self) -> QueuedImage | None:
        """The next image in line whose request still waits, or None: the first of those held back and those
        queued in priority order (an interactive image queued after a bulk one was held goes first). One whose
        request has just stopped waiting may not have left the line yet (`discard` runs as its handler resumes):
        passed over."""
        while self.held or not self.queue.empty():
            head = self.queue.head()
            held_first = bool(self.held) and (head is None or self.held[0] < head)
            image = self.held.popleft() if held_first else self.queue.get_nowait()
            if not image.future.done():
                return image
        return None

    def hold(self, images: list[QueuedImage]) -> None:
        """Put `images` (left by a split batch) back at the head of the line for the next batch, among any held
        already in the line's order (by priority, then arrival)."""
        self.held = deque(sorted([*images, *self.held]))

    def discard(self, image: QueuedImage) -> bool:
        """Take `image` out of line, wherever it waits; whether it was there (a batch already cut skips it)."""
        if self.queue.discard(image):
            return True
        for line in (self.held, self.forming):
            if image in line:  # by identity (`QueuedImage`)
                line.remove(image)
                return True
        return False

    def take_all(self) -> list[QueuedImage]:
        """Every image in line, in order (the forming batch first), leaving the line empty."""
        images = [*self.forming, *self.held]
        self.forming, self.held = [], deque()
        while not self.queue.empty():
            images.append(self.queue.get_nowait())
        return images
