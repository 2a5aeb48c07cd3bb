"""Telling a broken device from a bad batch when a model run fails, and what the service does about each.

A failed batch is followed by one run of a known-good image (the padding canvas that warm-up already ran):

- the probe succeeds: the device works, so the batch's own content failed it (a model with data-dependent ops) or
  the failure passed. Each of the batch's images then runs on its own, so only an image that fails alone gets
  500 `inference_failed` and the others sharing its batch get their answers, from (and reported as) their runs
  alone (service/batch_runs.py). Since such failures prove nothing about the device, no client can make the service
  unready by sending inputs that fail.
- the probe fails too: the device (or the runtime on it) is failing, e.g. a CUDA context after an illegal memory
  access, which no later run recovers in-process. The batch's requests get 503 `inference_unavailable` with
  Retry-After: the fault is not theirs, and a retry elsewhere can succeed. After `failures_to_unready` such probes
  in a row, /readyz turns 503 `inference_failing` (a load balancer stops routing here) and /segment answers 503
  `inference_unavailable` at once instead of queueing work that would fail. The known-good image keeps running
  every `probe_interval_s`; its first success makes the service ready again. Failing for `unhealthy_after_s` makes
  /healthz 503 as well, so an orchestrator's liveness probe restarts the process with a fresh device context.

A device can also hang instead of failing (a run that never returns). Once the runs on every inference slot have
outlived a request's timeout, /readyz reports `overloaded` and /segment answers 503 `inference_unavailable` at once
(`Batcher.stalled`), but nothing would ever restart the process. So a run in flight for `unhealthy_after_s` makes
/healthz 503 too (`inference_stuck`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import numpy as np

from .batch_runs import ModelRun, RunLabels, timed_run
from .errors import ApiError
from .metrics import Metrics

log = logging.getLogger(__name__)

# One image's labels with the run that produced them, the error its request is answered with, or None: not run again
# after a failed batch because its request no longer waited (nothing to answer).
Outcome = RunLabels | ApiError | None


class InferenceHealth:
    """Whether model runs on the device work: consecutive failed probes, since when it fails, the last error."""

    def __init__(self, failures_to_unready: int = 3, probe_interval_s: float = 2.0, unhealthy_after_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failures_to_unready = failures_to_unready
        self.probe_interval_s = probe_interval_s
        self.unhealthy_after_s = unhealthy_after_s
        self._clock = clock
        self.consecutive_failures = 0
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self._runs: dict[object, float] = {}  # runs in flight: when each started
        self._runs_lock = threading.Lock()  # warm-up's runs are marked from its thread, read on the loop

    @property
    def failing(self) -> bool:
        return self.failing_since is not None

    @property
    def failing_for_s(self) -> float:
        return 0.0 if self.failing_since is None else self._clock() - self.failing_since

    @property
    def running_for_s(self) -> float:
        """How long the oldest run in flight has been running (0 when none is)."""
        with self._runs_lock:
            oldest = min(self._runs.values(), default=None)
        return 0.0 if oldest is None else self._clock() - oldest

    @property
    def unhealthy(self) -> str | None:
        """Why a liveness probe should restart the process (`inference_failing`, `inference_stuck`), or None."""
        if self.failing_for_s >= self.unhealthy_after_s:
            return "inference_failing"
        if self.running_for_s >= self.unhealthy_after_s:
            return "inference_stuck"
        return None

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Mark one run as in flight while the block runs."""
        token = object()
        with self._runs_lock:
            self._runs[token] = self._clock()
        try:
            yield
        finally:
            with self._runs_lock:
                del self._runs[token]

    def probe_failed(self, error: str) -> bool:
        """Count a failed probe; True if this one made the device failing."""
        self.consecutive_failures += 1
        self.last_error = error
        if self.failing or self.consecutive_failures < self.failures_to_unready:
            return False
        self.failing_since = self._clock()
        return True

    def run_succeeded(self) -> float | None:
        """A run worked: reset; the seconds it had been failing if this ends a failure, else None."""
        self.consecutive_failures = 0
        if self.failing_since is None:
            return None
        failed_for, self.failing_since = self.failing_for_s, None
        return failed_for

    def unavailable(self) -> ApiError:
        """The 503 a request gets while the device fails."""
        return ApiError(503, "inference_unavailable",
                        f"model runs are failing on this server ({self.last_error}); retry shortly or elsewhere",
                        {"Retry-After": str(max(1, math.ceil(self.probe_interval_s)))})

    def describe(self) -> dict[str, Any]:
        """For /readyz and /healthz."""
        return {"failing": self.failing, "consecutive_failures": self.consecutive_failures,
                "failing_for_s": round(self.failing_for_s, 1), "last_error": self.last_error,
                "running_for_s": round(self.running_for_s, 1)}


def inference_failed(exc: BaseException) -> ApiError:
    """The 500 a request gets when its own run failed."""
    return ApiError(500, "inference_failed", f"inference failed: {type(exc).__name__}: {exc}")


class InferenceGuard:
    """Runs batches through `run` (awaitable, in the inference threads); on a failure, probes with `probe_image`
    to tell a broken device from a bad batch. Without a probe image a failed batch simply fails as a whole.
    `ran(run)` hears of each run of requests' images that returned labels (never of a probe's)."""

    def __init__(self, run: Callable[[list[np.ndarray]], Awaitable[np.ndarray]], health: InferenceHealth,
                 probe_image: np.ndarray | None, metrics: Metrics | None = None,
                 ran: Callable[[ModelRun], None] = lambda run: None) -> None:
        self._run = run
        self.health = health
        self._probe_image = probe_image
        self._metrics = metrics
        self._ran = ran
        self._recovery: asyncio.Task[None] | None = None

    async def run(self, tensors: list[np.ndarray], wanted: Callable[[int], bool] = lambda index: True,
                  ) -> Sequence[Outcome]:
        """One outcome per image: its labels with the run that produced them, the ApiError its request gets, or
        None. `wanted(i)` says whether image i's request still waits: after a failed batch, only those run again on
        their own (None for the others)."""
        if self.health.failing:
            return [self.health.unavailable()] * len(tensors)
        try:
            answers = await self._run_requests(tensors)
        except Exception as exc:
            return await self._after_failure(tensors, exc, wanted)
        self._succeeded()
        return answers

    async def close(self) -> None:
        """Stop probing (shutdown)."""
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery

    async def _after_failure(self, tensors: list[np.ndarray], exc: Exception,
                             wanted: Callable[[int], bool]) -> list[Outcome]:
        log.error("inference failed for a batch of %d: %s: %s", len(tensors), type(exc).__name__, exc)
        self._count_failure("batch")
        if self._probe_image is None:
            return [inference_failed(exc)] * len(tensors)
        if not await self._probe():  # the device's fault, not the requests': they may retry, here or elsewhere
            return [self.health.unavailable()] * len(tensors)
        if len(tensors) == 1:
            return [inference_failed(exc)]
        outcomes: list[Outcome] = []
        for index, tensor in enumerate(tensors):  # the device works: find the image(s) that fail on their own
            if not wanted(index):  # its client has gone (or timed out): a run alone would answer nobody
                outcomes.append(None)
                continue
            try:
                outcomes.append((await self._run_requests([tensor]))[0])
            except Exception as alone:
                self._count_failure("image")
                outcomes.append(inference_failed(alone))
        return outcomes

    def known_good_failed(self, error: str, *, recover: bool = True) -> None:
        """A run of known-good input failed (the probe image, or warm-up): it counts towards `failing`; when it
        trips it and `recover`, the probe image runs every probe interval until it works again."""
        self._count_failure("probe")
        if self.health.probe_failed(error):
            log.error("known-good input failed %d times in a row: /readyz is 503 and /segment answers 503 until it "
                      "runs again", self.health.consecutive_failures)
            self._set_failing(1)
            if recover:
                self._recovery = asyncio.get_running_loop().create_task(self._recover(), name="inference-probe")

    def known_good_worked(self) -> None:
        """A run of known-good input worked (warm-up): the device works."""
        self._succeeded()

    async def _probe(self) -> bool:
        """Run the known-good image; whether it worked. A failure counts towards `failing`."""
        assert self._probe_image is not None
        try:
            await self._run_tracked([self._probe_image])
        except Exception as exc:
            self.known_good_failed(f"{type(exc).__name__}: {exc}")
            return False
        self._succeeded()
        return True

    async def _run_requests(self, tensors: list[np.ndarray]) -> list[RunLabels]:
        """Requests' images through `run`: each one's labels, with the run that produced them (which is counted)."""
        labels, run = await timed_run(self._run_tracked, tensors)
        self._ran(run)
        return [RunLabels(image_labels, run) for image_labels in labels]

    async def _run_tracked(self, tensors: list[np.ndarray]) -> np.ndarray:
        """`run`, counted as in flight while it runs (what tells a hung device)."""
        with self.health.running():
            return await self._run(tensors)

    async def _recover(self) -> None:
        while self.health.failing:
            await asyncio.sleep(self.health.probe_interval_s)
            await self._probe()

    def _succeeded(self) -> None:
        failed_for = self.health.run_succeeded()
        if failed_for is not None:
            log.warning("model runs work again after failing for %.1fs: ready", failed_for)
            self._set_failing(0)

    def _count_failure(self, run: str) -> None:
        if self._metrics is not None:
            self._metrics.inference_failures.labels(run=run).inc()

    def _set_failing(self, value: int) -> None:
        if self._metrics is not None:
            self._metrics.inference_failing.set(value)

