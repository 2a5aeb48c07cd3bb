"""The images waiting for the batcher (service/batcher.py): the bounded queue, those a split batch held back, and
the batch being formed; and taking out, wherever it waits, the image of a request that stopped waiting.

An abandoned image (its client hung up, or its timeout passed) left in line held a queue place until a worker
came by, refusing live requests 503 and turning /readyz `overloaded` meanwhile, then a place in a batch.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .batch_runs import InferenceResult


@dataclass(eq=False)  # identity: an image is found in line by `is`, never by comparing its tensor
class QueuedImage:
    """One request's letterboxed image, and where its answer goes. `enqueued` and `left_line` (perf_counter): when
    it was queued, and when it left the line, taken into a batch that runs (None until then)."""

    tensor: np.ndarray
    future: asyncio.Future[InferenceResult]
    request_id: str | None
    enqueued: float = field(default_factory=time.perf_counter)
    left_line: float | None = None


class _Queue(asyncio.Queue[QueuedImage]):
    """asyncio's bounded queue, from which an image can be taken out wherever it stands. `_queue` is the deque
    asyncio.Queue keeps its items in (what its own subclasses override)."""

    def discard(self, image: QueuedImage) -> bool:
        """Take `image` out; whether it was there."""
        items: deque[Any] = self._queue  # type: ignore[attr-defined]
        try:
            items.remove(image)
        except ValueError:
            return False
        return True


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
        """The next image in line whose request still waits (held ones first), or None. One whose request has just
        stopped waiting may not have left the line yet (`discard` runs as its handler resumes): passed over."""
        while self.held or not self.queue.empty():
            image = self.held.popleft() if self.held else self.queue.get_nowait()
            if not image.future.done():
                return image
        return None

    def hold(self, images: list[QueuedImage]) -> None:
        """Put `images` (left by a split batch) first in line for the next batch, in arrival order."""
        self.held.extendleft(reversed(images))

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
