"""What a request that times out (504) says of its wait, and what a slow (not hung) model run leaves behind, on a
real onnxruntime session whose runs take as long as the test lets them (one permit a run).

A request whose timeout fires while its batch already runs waited in line only until that batch took its image:
the rest of its wait is the run's. Counting all of it as queueing made a slow model look like a long queue.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from service.batcher import Batcher
from service.core.engine import Engine, load_engine
from service.errors import ApiError
from service.settings import Settings
from tests.service.svc_helpers import make_rule_model

TIMEOUT_S = 1.0
HOLD_S = 0.4  # how long the run ahead of the request holds the only inference slot


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    model = make_rule_model(tmp_path_factory.mktemp("timeouts") / "rule.onnx")
    return load_engine(Settings(model_path=model, intra_op_threads=1).engine_options())


class SlowRuns:
    """`run` is the engine's, each run waiting for a permit (`release`); `started` the perf_counter of each run's
    start, in order."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._permits = threading.Semaphore(0)
        self.started: list[float] = []

    def run(self, images: Sequence[np.ndarray]) -> np.ndarray:
        self.started.append(time.perf_counter())
        assert self._permits.acquire(timeout=30)
        return self._engine.run_images(images)

    def release(self, runs: int = 1) -> None:
        for _ in range(runs):
            self._permits.release()


def image() -> np.ndarray:
    return np.full((96, 96, 3), 200, np.uint8)


async def until(check: Callable[[], bool], what: str, within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.002)


async def timed_out(request: asyncio.Future[object]) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await request
    assert caught.value.status == 504 and caught.value.code == "timeout", caught.value.message
    return caught.value


def test_a_timeout_while_the_batch_runs_counts_only_the_wait_in_line_as_queueing(engine: Engine) -> None:
    """One slot, batches of one. `ahead` runs first; `late` waits in line behind it until it returns (HOLD_S),
    then its own run outlasts its timeout; `never` waits in line behind `late` all along."""
    runs = SlowRuns(engine)

    async def scenario() -> tuple[float, ApiError, ApiError]:
        batcher = Batcher(runs.run, max_batch_size=1, max_wait_ms=1, max_queue=8, concurrency=1)
        batcher.start()
        try:
            ahead = asyncio.ensure_future(batcher.infer(image(), 30))
            await until(lambda: batcher.in_flight == 1, "the first batch runs")
            queued = time.perf_counter()
            late = asyncio.ensure_future(batcher.infer(image(), TIMEOUT_S))
            never = asyncio.ensure_future(batcher.infer(image(), TIMEOUT_S))
            await asyncio.sleep(HOLD_S)
            runs.release()  # `ahead` returns; `late` leaves the line and runs, until after its timeout
            assert (await ahead).labels.shape == (96, 96)
            late_error, never_error = await timed_out(late), await timed_out(never)
            runs.release(2)  # `late`'s run ends (and nothing else runs: `never` has gone)
            return queued, late_error, never_error
        finally:
            await batcher.stop(5)

    queued, late, never = asyncio.run(scenario())
    assert len(runs.started) == 2  # `ahead`, `late`; `never` never ran
    in_line = runs.started[1] - queued  # until `late`'s batch took it (its run started in the same moment)
    assert in_line >= HOLD_S
    queue_s, inference_s = getattr(late, "queue_s", None), getattr(late, "inference_s", None)
    assert queue_s is not None and inference_s is not None, "a 504 must say how its wait was spent"
    assert abs(queue_s - in_line) < 0.1, (queue_s, in_line)  # not its whole wait, TIMEOUT_S
    assert inference_s > 0 and abs(queue_s + inference_s - TIMEOUT_S) < 0.15, (queue_s, inference_s)
    # An image that never left the line waited there all along, and no run of its counts.
    assert getattr(never, "inference_s", 0.0) is None
    assert abs(getattr(never, "queue_s", 0.0) - TIMEOUT_S) < 0.15


def test_a_slow_run_that_returns_leaves_the_server_serving_at_once(engine: Engine) -> None:
    """A run that outlives the request timeout on the only slot makes the batcher `stalled` (503
    `inference_unavailable`, as for a hung device); the moment it returns, it is not, and a new request is served:
    a slow run is not taken for a hung device once it has returned."""
    runs = SlowRuns(engine)

    async def scenario() -> None:
        batcher = Batcher(runs.run, max_batch_size=1, max_wait_ms=1, max_queue=8, concurrency=1)
        batcher.start()
        try:
            slow = asyncio.ensure_future(batcher.infer(image(), 0.2))
            await timed_out(slow)
            await until(lambda: batcher.stalled, "the run outlives the timeout")
            with pytest.raises(ApiError) as refused:
                await batcher.infer(image(), 0.2)
            assert refused.value.status == 503 and refused.value.code == "inference_unavailable"
            assert batcher.full  # /readyz: overloaded
            runs.release()  # the slow run returns
            await until(lambda: batcher.in_flight == 0, "the slow run returns")
            assert not batcher.stalled and not batcher.full
            served = asyncio.ensure_future(batcher.infer(image(), 5))
            await until(lambda: len(runs.started) == 2, "the next request runs")
            runs.release()
            assert (await served).labels.shape == (96, 96)
        finally:
            runs.release(2)
            await batcher.stop(5)

    asyncio.run(scenario())
