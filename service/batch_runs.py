"""The model runs behind the answers: which run produced an image's labels, and which runs count in the batch-size
and padding metrics.

A request is answered with the facts of the model run that produced its labels: `X-Batch-Size` is that run's
image count, and Server-Timing's (and `timing_ms`'s) `inference` is that run's time, `queue` everything from being
queued until it started. Usually that run is the batch the image was formed into. After a failed batch the guard
(service/inference_guard.py) runs each image again alone, so an image answered then ran in a batch of one: its
labels owe nothing to the batch that failed, whose run (and the probe after it) is time it waited, so counts in
its `queue`, not its `inference`.

A request that times out (504, `InferenceTimeout`) or whose client hangs up while it waits is told its wait the same
way (`WaitSplit`): `queue` until its image left the line, taken into a batch, and the rest, spent while that batch
ran, `inference`. Counting it all as queueing made a slow or hung model look like a long queue.

Only runs of requests' images that returned labels count in `segment_batch_size`, `segment_batch_padding_images`
and /readyz's `padding_fraction`: a failed run computed no answer, and the guard's probe runs known-good input for
no request, so neither is a batch a user sent (the probe's failures count in `segment_inference_failures_total`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from .core.buckets import padding_fraction
from .errors import ApiError
from .metrics import Metrics


@dataclass
class InferenceResult:
    """Labels at the inference size, with the facts of the model run that produced them (`X-Batch-Size` and
    Server-Timing): its image count, its seconds, and the seconds from being queued until it started. After a failed
    batch, an image run again alone reports that run, a batch of 1."""

    labels: np.ndarray
    queue_s: float
    inference_s: float
    batch_size: int


TIMEOUT = (504, "timeout")  # the status and code of a request whose inference did not finish in time
# A request's own deadline (`timeout_s`) passed: 504 as well, but a code of its own, as it is the client's choice and
# no fault of the server's (its log lines are few, and the 5xx alert leaves it out).
DEADLINE_EXCEEDED = (504, "deadline_exceeded")


class InferenceTimeout(ApiError):
    """504 `timeout` (the server's request timeout) or `deadline_exceeded` (the request's own), with where the
    request's wait went: `queue_s` until its image left the line (all of it when it never did), `inference_s` the
    rest, while its batch ran (None when it never ran)."""

    def __init__(self, timeout_s: float, queue_s: float, inference_s: float | None, own: bool = False) -> None:
        if own:
            super().__init__(*DEADLINE_EXCEEDED, f"the request's timeout_s passed ({timeout_s:g}s left of it "
                                                 "when its image was queued) before its labels were ready")
        else:
            super().__init__(*TIMEOUT, f"inference did not finish within {timeout_s:g}s")
        self.queue_s = queue_s
        self.inference_s = inference_s

    @classmethod
    def after(cls, timeout_s: float, wait: WaitSplit, own: bool = False) -> InferenceTimeout:
        """The timeout of an image whose wait was `wait` (`own`: the request's own deadline)."""
        return cls(timeout_s, wait.queue_s, wait.inference_s, own)


@dataclass(frozen=True)
class WaitSplit:
    """Where the wait of an image that got no labels went (it timed out, or its client hung up): `queue_s` until
    it left the line (all of it when it never did), `inference_s` the rest, while its batch ran (None when it
    never ran)."""

    queue_s: float
    inference_s: float | None

    @classmethod
    def of(cls, enqueued: float, left_line: float | None, now: float) -> WaitSplit:
        """The wait of an image queued at `enqueued` that left the line at `left_line` (perf_counter, None if it
        never did), until `now`."""
        if left_line is None:
            return cls(now - enqueued, None)
        return cls(left_line - enqueued, now - left_line)


@dataclass(frozen=True, eq=False)
class ModelRun:
    """One model run that returned labels: how many images it ran, when it started (perf_counter), for how long."""

    images: int
    started: float
    seconds: float


@dataclass(frozen=True, eq=False)
class RunLabels:
    """One image's labels and the run that produced them."""

    labels: np.ndarray
    run: ModelRun


async def timed_run(run: Callable[[list[np.ndarray]], Awaitable[np.ndarray]],
                    tensors: list[np.ndarray]) -> tuple[np.ndarray, ModelRun]:
    """`run(tensors)`, timed on the event loop as the request sees it (the hand-off to the inference thread
    included); an exception passes through."""
    started = time.perf_counter()
    labels = await run(tensors)
    return labels, ModelRun(len(tensors), started, time.perf_counter() - started)


class RunCounter:
    """Counts requests' runs that returned labels in the batch size and padding metrics and in the padding
    fraction; `padded_size(n)` is the rows a run of n images computes (its bucket)."""

    def __init__(self, metrics: Metrics | None, padded_size: Callable[[int], int]) -> None:
        self._metrics = metrics
        self._padded_size = padded_size
        self.real_rows = 0  # requests' images run (called on the event loop only: no lock)
        self.padded_rows = 0  # rows run to fill their buckets

    @property
    def padding_fraction(self) -> float:
        """The share of the rows run for requests that was padding (0 before any)."""
        return padding_fraction(self.real_rows, self.padded_rows)

    def ran(self, run: ModelRun) -> None:
        """Count one run of requests' images that returned labels."""
        padding = self._padded_size(run.images) - run.images
        self.real_rows += run.images
        self.padded_rows += padding
        if self._metrics is not None:
            self._metrics.batch_size.observe(run.images)
            self._metrics.padding_images.inc(padding)
