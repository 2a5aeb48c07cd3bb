"""Filling a batch while the device is busy: with two batches in flight, a batch that forms while another runs
keeps taking images until that work is expected to be nearly done (the device would not start it sooner), is cut
at once when the running batch finishes early, and never loses an image. Proven on CPU with a one-at-a-time
"device" (a lock held for a fixed time) and, through the real server, with the emulated accelerator."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.batcher import Batcher
from service.busy_estimate import LEAD_SHARE, BusyEstimate
from service.errors import ApiError


def _marked(value: int) -> np.ndarray:
    return np.full((2, 2, 3), value, np.uint8)


class Device:
    """One batch at a time for `seconds`; records each batch's marks."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.lock = threading.Lock()
        self.batches: list[list[int]] = []

    def run_images(self, images: list[np.ndarray]) -> np.ndarray:
        with self.lock:
            self.batches.append([int(image[0, 0, 0]) for image in images])
            time.sleep(self.seconds)
        return np.stack([image[:, :, 0] for image in images])


async def _arrivals(batcher: Batcher, schedule: list[tuple[float, int]]) -> list[int]:
    """Send image `mark` at each `offset` seconds; the batch size each one ran in (checking its own row)."""

    async def one(offset: float, mark: int) -> int:
        await asyncio.sleep(offset)
        result = await batcher.infer(_marked(mark), 10)
        assert int(result.labels[0, 0]) == mark
        return result.batch_size

    return list(await asyncio.gather(*(one(offset, mark) for offset, mark in schedule)))


@pytest.mark.parametrize("fill", [True, False])
def test_a_batch_formed_while_another_runs_takes_what_arrives_until_the_device_is_nearly_free(fill: bool) -> None:
    device = Device(0.4)

    async def scenario() -> list[int]:
        batcher = Batcher(device.run_images, max_batch_size=8, max_wait_ms=5, max_queue=16, concurrency=2,
                          expected_s=(lambda n: device.seconds) if fill else None)
        batcher.start()
        # 1 runs alone from 0 to 0.4 s; 2 and 3 arrive while it runs; 4 after it finished.
        sizes = await _arrivals(batcher, [(0.0, 1), (0.05, 2), (0.15, 3), (0.5, 4)])
        await batcher.stop()
        return sizes

    sizes = asyncio.run(scenario())
    if fill:  # 2 waits for 3 (cut at 0.4 - 0.1 s), and 4 runs in a batch of its own
        assert device.batches == [[1], [2, 3], [4]] and sizes == [1, 2, 2, 1]
    else:  # cut at once: 2 alone, then 3 alone once 1 is done. Which of the two then takes the device first is
        # up to the lock (not first come, first served), so the batches' order is not asserted.
        assert sorted(device.batches) == [[1], [2], [3], [4]] and sizes == [1, 1, 1, 1], device.batches


def test_a_filling_batch_is_cut_as_soon_as_the_running_one_finishes_early() -> None:
    device = Device(0.1)

    async def scenario() -> float:
        # The warm-up time says 3 s, the batch takes 0.1 s: waiting for the estimate would idle the device.
        batcher = Batcher(device.run_images, max_batch_size=8, max_wait_ms=5, max_queue=16, concurrency=2,
                          expected_s=lambda n: 3.0)
        batcher.start()
        first = asyncio.ensure_future(batcher.infer(_marked(1), 10))
        await asyncio.sleep(0.03)
        start = time.perf_counter()
        await batcher.infer(_marked(2), 10)
        waited = time.perf_counter() - start
        await first
        await batcher.stop()
        return waited

    waited = asyncio.run(scenario())
    assert waited < 1.0, waited  # ~0.07 s for 1 to finish + 0.1 s to run; the estimate alone would say 2.2 s
    assert device.batches == [[1], [2]]


def test_no_image_is_lost_or_mixed_up_while_batches_fill_under_bursty_load() -> None:
    device = Device(0.02)
    rng = np.random.default_rng(7)
    schedule = [(float(t), i) for i, t in enumerate(np.sort(rng.uniform(0, 1.0, 120)))]

    async def scenario() -> list[int]:
        batcher = Batcher(device.run_images, max_batch_size=8, max_wait_ms=5, max_queue=256, concurrency=2,
                          expected_s=lambda n: 0.004 * (1 + n))  # estimates off either way: too long and short
        batcher.start()
        sizes = await _arrivals(batcher, schedule)
        assert batcher.depth == 0 and batcher.in_flight == 0
        await batcher.stop()
        return sizes

    sizes = asyncio.run(scenario())
    ran = [mark for batch in device.batches for mark in batch]
    assert sorted(ran) == list(range(120))  # each image ran exactly once (and got its own row, checked above)
    assert max(sizes) > 1  # batches did form


def test_images_taken_into_a_filling_batch_are_answered_when_the_server_stops() -> None:
    release = threading.Event()

    def run_images(images: list[np.ndarray]) -> np.ndarray:
        release.wait(10)
        return np.zeros((len(images), 2, 2), np.uint8)

    async def scenario() -> tuple[object, int]:
        batcher = Batcher(run_images, max_batch_size=8, max_wait_ms=5, max_queue=16, concurrency=2,
                          expected_s=lambda n: 60.0)  # the second batch would fill for a minute
        batcher.start()
        running = asyncio.ensure_future(batcher.infer(_marked(1), 30))
        await asyncio.sleep(0.05)
        filling = asyncio.ensure_future(batcher.infer(_marked(2), 30))
        await asyncio.sleep(0.05)
        depth = batcher.depth  # the image in the forming batch still counts as queued
        threading.Timer(0.5, release.set).start()  # the running batch ends only after the drain timeout
        await batcher.stop(drain_timeout_s=0.2)
        outcome = await asyncio.wait_for(asyncio.gather(filling, return_exceptions=True), 2)
        running.cancel()
        return outcome[0], depth

    outcome, depth = asyncio.run(scenario())
    assert depth == 1
    assert isinstance(outcome, ApiError) and outcome.status == 503 and outcome.code == "shutting_down"


def test_the_estimate_runs_batches_back_to_back_and_moves_up_when_one_ends_early() -> None:
    busy = BusyEstimate(lambda n: 0.1 * n)
    first = busy.started(1, now=10.0)  # ends 10.1
    second = busy.started(2, now=10.0)  # queued behind it: ends 10.3
    assert (first, second) == pytest.approx((10.1, 10.3))
    assert busy.fill_for(10.0) == pytest.approx(0.3 - LEAD_SHARE * 0.2)
    busy.finished(first, now=10.05, still_running=1)  # 0.05 s early: the second moves up as much
    assert busy.fill_for(10.05) == pytest.approx(0.2 - LEAD_SHARE * 0.2)
    busy.finished(second, now=10.1, still_running=0)  # nothing runs: the device is free now
    assert busy.fill_for(10.1) < 0
    assert BusyEstimate(lambda n: 0.0).fill_for(0.0) <= 0  # untimed buckets: never fill
