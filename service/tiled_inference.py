"""One upload's model inputs through the batcher: its letterboxed image, or each of its tiles (service/core/tiles.py)
queued as an image of its own, so that the tiles of one large upload fill batches together, and with other
requests' images, as any images do."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .batch_line import QueuedImage
from .batch_runs import WaitSplit
from .batcher import Batcher
from .core.priorities import Priority


@dataclass(frozen=True)
class Labelled:
    """The labels of every model input of one upload, in order, and the facts of their runs: `queue_s` until the
    first of them left the line (after that, the upload's own inputs were running), `inference_s` the rest of the
    wait, the largest batch any ran in, and each input's own wait in the line (`queue_waits`)."""

    labels: list[np.ndarray]
    queue_s: float
    inference_s: float
    batch_size: int
    queue_waits: tuple[float, ...]


async def infer_inputs(batcher: Batcher, tensors: Sequence[np.ndarray], timeout_s: float, request_id: str | None,
                       on_abandoned: Callable[[WaitSplit], None] | None = None, wait_s: float | None = None,
                       priority: Priority = "interactive") -> Labelled:
    """Queue every input of one upload and wait for all their labels (`Batcher.infer` for each, with its errors).
    They join the line together, with no other request's images between them; the first to fail (a timeout, a full
    queue) fails the request, and the others leave the line unrun; so do they all when the wait is cancelled (the
    client hung up), `on_abandoned` told once where the wait went."""
    if len(tensors) == 1:  # the common case, without a task per input
        one = await batcher.infer(tensors[0], timeout_s, request_id, on_abandoned=on_abandoned, wait_s=wait_s,
                                  priority=priority)
        return Labelled([one.labels], one.queue_s, one.inference_s, one.batch_size, (one.queue_s,))
    started = time.perf_counter()
    hung_up = False

    def abandoned(wait: WaitSplit) -> None:  # the first input's wait stands for the request's, as when it is alone
        if hung_up and on_abandoned is not None:
            on_abandoned(wait)

    items: list[QueuedImage] = []
    try:  # no await until all are in line: the room admission checked for them is theirs
        for tensor in tensors:
            items.append(batcher.enqueue(tensor, timeout_s, request_id, priority))
    except BaseException:
        for item in items:
            batcher.withdraw(item)
        raise
    tasks = [asyncio.ensure_future(batcher.wait(item, timeout_s, abandoned if i == 0 else None, wait_s))
             for i, item in enumerate(items)]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        hung_up = True
        raise
    finally:
        for task in tasks:
            task.cancel()  # nothing for those done; the rest leave the line
        await asyncio.gather(*tasks, return_exceptions=True)
        for item in items:
            batcher.withdraw(item)  # an image whose wait was cancelled before it began
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    results = [task.result() for task in tasks]
    waits = tuple(result.queue_s for result in results)
    return Labelled([result.labels for result in results], min(waits),
                    max(0.0, time.perf_counter() - started - min(waits)), max(r.batch_size for r in results), waits)
