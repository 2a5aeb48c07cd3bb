"""A failed model run: the device's fault or the batch's (service/inference_guard.py), proven on the batcher with a
device that can be broken and mended and images that fail on their own.

- an image that fails alone gets its 500, the images sharing its batch their own labels, and no number of such
  images makes the service unready;
- a device whose every run fails turns the batcher unavailable after `failures_to_unready` failed probes: queued
  and new requests get 503 `inference_unavailable` with Retry-After, without running;
- the known-good image keeps running while it fails, and its first success makes the batcher serve again;
- liveness fails only after `unhealthy_after_s` of failing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import numpy as np
import pytest

from service.batcher import Batcher
from service.errors import ApiError
from service.inference_guard import InferenceHealth
from service.metrics import Metrics
from testkit.metrics import samples as metric_samples

POISON = 250  # an image whose first pixel is this fails on its own


class Device:
    """`run_images` on a device that can break: labels are each image's first pixel value."""

    def __init__(self) -> None:
        self.broken = threading.Event()
        self.gate = threading.Event()  # cleared: runs wait for it (a slow or hung device)
        self.gate.set()
        self.batches: list[list[int]] = []

    def run_images(self, images: list[np.ndarray]) -> np.ndarray:
        self.gate.wait(10)
        self.batches.append([int(image[0, 0, 0]) for image in images])
        if self.broken.is_set():
            raise RuntimeError("CUDA failure 700: an illegal memory access was encountered")
        if any(image[0, 0, 0] == POISON for image in images):
            raise RuntimeError("indices element out of data bounds")
        return np.stack([image[:, :, 0] for image in images])


def image(value: int) -> np.ndarray:
    return np.full((2, 2, 3), value, np.uint8)


PROBE = image(0)


def batcher_on(device: Device, health: InferenceHealth, metrics: Metrics | None = None, **kw: object) -> Batcher:
    options: dict = dict(max_batch_size=4, max_wait_ms=1000, max_queue=16, concurrency=1, metrics=metrics,
                         health=health, probe_image=PROBE)
    return Batcher(device.run_images, **{**options, **kw})


def test_an_image_that_fails_alone_fails_alone_and_never_makes_the_service_unready() -> None:
    device, metrics = Device(), Metrics()
    health = InferenceHealth(failures_to_unready=2)

    async def scenario() -> list[list[object]]:
        batcher = batcher_on(device, health, metrics)
        batcher.start()
        rounds = []
        for _ in range(4):  # more poisoned batches than failures_to_unready
            rounds.append(await asyncio.gather(*(batcher.infer(image(v), 10) for v in (1, POISON, 3, 4)),
                                               return_exceptions=True))
            assert not batcher.health.failing
        await batcher.stop()
        return rounds

    for outcomes in asyncio.run(scenario()):
        assert [int(r.labels[0, 0]) for r in (outcomes[0], outcomes[2], outcomes[3])] == [1, 3, 4]
        error = outcomes[1]
        assert isinstance(error, ApiError) and (error.status, error.code) == (500, "inference_failed")
        assert "out of data bounds" in error.message
    # Each round: the batch, the probe, then each image alone.
    assert device.batches[:6] == [[1, POISON, 3, 4], [0], [1], [POISON], [3], [4]]
    assert health.consecutive_failures == 0 and not health.failing
    failures = metric_samples(metrics.render().decode(), "segment_inference_failures_total")
    assert failures == {(("run", "batch"),): 4.0, (("run", "image"),): 4.0, (("run", "probe"),): 0.0}


def test_a_failing_device_makes_requests_503_until_the_probe_works_again() -> None:
    device, metrics = Device(), Metrics()
    health = InferenceHealth(failures_to_unready=2, probe_interval_s=0.05, unhealthy_after_s=0.3)

    async def scenario() -> None:
        batcher = batcher_on(device, health, metrics, max_batch_size=1)
        batcher.start()
        assert int((await batcher.infer(image(7), 10)).labels[0, 0]) == 7
        device.broken.set()
        for attempt in range(2):  # the batch fails, then the known-good image: two probes trip it
            with pytest.raises(ApiError) as failed:
                await batcher.infer(image(8), 10)
            # The device's fault, not the request's: retryable, although the batch did run.
            assert (failed.value.status, failed.value.code) == (503, "inference_unavailable")
            assert device.batches[-2:] == [[8], [0]] and health.failing == (attempt == 1)
        assert health.unhealthy is None
        runs = len(device.batches)
        with pytest.raises(ApiError) as refused:
            await batcher.infer(image(9), 10)
        assert (refused.value.status, refused.value.code) == (503, "inference_unavailable")
        assert refused.value.headers == {"Retry-After": "1"}
        assert "illegal memory access" in refused.value.message
        await asyncio.sleep(0.4)
        assert health.unhealthy == "inference_failing"  # failing longer than unhealthy_after_s
        probes = device.batches[runs:]
        assert len(probes) >= 4 and all(batch == [0] for batch in probes)  # only the probe ran meanwhile
        assert metric_samples(metrics.render().decode(), "segment_inference_failing") == {(): 1.0}
        device.broken.clear()
        deadline = time.monotonic() + 2
        while health.failing:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert health.unhealthy is None and health.consecutive_failures == 0
        assert int((await batcher.infer(image(10), 10)).labels[0, 0]) == 10
        assert metric_samples(metrics.render().decode(), "segment_inference_failing") == {(): 0.0}
        await batcher.stop()

    asyncio.run(scenario())


def test_requests_queued_when_the_device_fails_are_answered_503_without_running() -> None:
    device = Device()
    device.gate.clear()
    health = InferenceHealth(failures_to_unready=1, probe_interval_s=60)

    async def scenario() -> list[object]:
        batcher = Batcher(device.run_images, max_batch_size=2, max_wait_ms=0, max_queue=16, concurrency=1,
                          health=health, probe_image=PROBE)
        batcher.start()
        first = asyncio.ensure_future(batcher.infer(image(1), 10))
        while batcher.in_flight == 0:
            await asyncio.sleep(0.01)
        queued = [asyncio.ensure_future(batcher.infer(image(v), 10)) for v in (2, 3, 4, 5)]
        await asyncio.sleep(0.05)
        device.broken.set()
        device.gate.set()
        outcomes = await asyncio.gather(first, *queued, return_exceptions=True)
        await batcher.stop()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, ApiError) and (o.status, o.code) == (503, "inference_unavailable")
               for o in outcomes), outcomes
    assert device.batches == [[1], [0]]  # the failed batch and its probe; nothing queued ran


def test_health_counts_only_consecutive_failed_probes_and_times_the_failure() -> None:
    now = [100.0]
    health = InferenceHealth(failures_to_unready=3, probe_interval_s=2.5, unhealthy_after_s=10, clock=lambda: now[0])
    assert not health.probe_failed("a") and not health.probe_failed("b")
    assert health.run_succeeded() is None and health.consecutive_failures == 0  # a success in between resets
    assert [health.probe_failed(e) for e in "cde"] == [False, False, True]
    assert health.failing and health.describe() == {"failing": True, "consecutive_failures": 3,
                                                     "failing_for_s": 0.0, "last_error": "e",
                                                     "running_for_s": 0.0}
    assert not health.probe_failed("f")  # already failing: tripping is reported once
    assert health.unavailable().headers == {"Retry-After": "3"}
    now[0] += 9.9
    assert health.unhealthy is None
    now[0] += 0.1
    assert health.unhealthy == "inference_failing"
    assert health.run_succeeded() == pytest.approx(10.0)
    assert not health.failing and health.unhealthy is None


def test_a_run_in_flight_for_unhealthy_after_s_is_stuck() -> None:
    now = [0.0]
    health = InferenceHealth(unhealthy_after_s=10, clock=lambda: now[0])
    with health.running():
        now[0] += 5
        with health.running():  # a later run does not hide the oldest
            now[0] += 4.9
            assert health.unhealthy is None and health.running_for_s == pytest.approx(9.9)
            now[0] += 0.1
            assert health.unhealthy == "inference_stuck" and health.describe()["running_for_s"] == 10.0
    assert health.unhealthy is None and health.running_for_s == 0.0


def test_a_fault_outside_the_model_run_fails_its_batch_with_500_and_the_worker_goes_on() -> None:
    """A bug between the run and the answers (here: outcomes that do not match the batch) fails that batch's
    requests with 500 `internal_error`; the worker lives on, or the server would stay up and never serve again."""
    device = Device()

    async def scenario() -> None:
        batcher = batcher_on(device, InferenceHealth(), max_batch_size=1, max_wait_ms=0)
        batcher.start()
        guard_run, calls = batcher.guard.run, []

        async def wrong_once(tensors: list[np.ndarray], **options: object) -> list[object]:
            calls.append(len(tensors))
            return [] if len(calls) == 1 else await guard_run(tensors, **options)  # type: ignore[arg-type]

        batcher.guard.run = wrong_once  # type: ignore[method-assign]
        with pytest.raises(ApiError) as failed:
            await batcher.infer(image(5), 2)
        assert (failed.value.status, failed.value.code) == (500, "internal_error")
        assert int((await batcher.infer(image(6), 2)).labels[0, 0]) == 6  # the worker is still there
        assert batcher.running and calls == [1, 1]
        await batcher.stop()

    asyncio.run(scenario())


def test_a_hung_device_makes_the_batcher_stuck_until_the_run_returns() -> None:
    device = Device()
    device.gate.clear()
    health = InferenceHealth(unhealthy_after_s=0.2)

    async def scenario() -> None:
        batcher = Batcher(device.run_images, max_batch_size=1, max_wait_ms=0, max_queue=4, concurrency=1, health=health,
                          probe_image=PROBE)
        batcher.start()
        request = asyncio.ensure_future(batcher.infer(image(5), 10))
        await asyncio.sleep(0.1)
        assert health.unhealthy is None
        await asyncio.sleep(0.15)
        assert health.unhealthy == "inference_stuck" and not health.failing  # hung, not failing: no 503 yet
        device.gate.set()
        assert int((await request).labels[0, 0]) == 5
        assert health.unhealthy is None
        await batcher.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize("seed", [3, 11])
def test_every_request_is_answered_once_through_splits_filling_poison_timeouts_and_an_outage(seed: int) -> None:
    """The guard inside everything else the batcher does: two batches in flight, batches filled while the device
    is busy and split by the plan, poisoned images, clients that give up, and a device that fails for a while.
    Every request gets exactly one answer: its own labels, or the error its case allows."""
    rng = np.random.default_rng(seed)
    count, outage = 240, (0.35, 0.6)
    poisoned = set(rng.choice(count, 12, replace=False).tolist())
    impatient = set(rng.choice(count, 12, replace=False).tolist()) - poisoned
    arrivals = np.sort(rng.uniform(0, 1.2, count))
    device = Device()
    lock = threading.Lock()
    ran_ok: list[int] = []

    def run_images(images: list[np.ndarray]) -> np.ndarray:
        with lock:  # one batch at a time, 3 ms each
            time.sleep(0.003)
            labels = device.run_images(images)
            ran_ok.extend(int(image[0, 0, 0]) for image in images)
            return labels

    def mark(i: int) -> np.ndarray:  # marks 1..240 (0 is the probe), a poisoned one's first pixel is POISON
        tensor = np.full((2, 2, 3), 1 + i % 240, np.uint8)
        if i in poisoned:
            tensor[0, 0, 0] = POISON
            tensor[1, 1, 0] = 1 + i % 240
        return tensor

    health = InferenceHealth(failures_to_unready=2, probe_interval_s=0.03)
    recovered: list[float] = []

    async def scenario() -> list[tuple[int, float, object]]:
        batcher = Batcher(run_images, max_batch_size=8, max_wait_ms=5, max_queue=256, concurrency=2,
                          take=lambda n: {3: 2, 5: 4, 6: 4}.get(n, n), expected_s=lambda n: 0.003,
                          health=health, probe_image=PROBE)
        batcher.start()
        start = time.monotonic()

        async def one(i: int) -> tuple[int, float, object]:
            await asyncio.sleep(float(arrivals[i]))
            sent = time.monotonic() - start
            try:
                return i, sent, await batcher.infer(mark(i), 0.001 if i in impatient else 10)
            except ApiError as exc:
                return i, sent, exc

        async def outage_window() -> None:
            await asyncio.sleep(outage[0])
            device.broken.set()
            await asyncio.sleep(outage[1] - outage[0])
            device.broken.clear()
            while health.failing:  # until the next probe has seen it mended
                await asyncio.sleep(0.001)
            recovered.append(time.monotonic() - start)

        answers, _ = await asyncio.wait_for(asyncio.gather(asyncio.gather(*(one(i) for i in range(count))),
                                                           outage_window()), 30)
        assert batcher.depth == 0 and batcher.in_flight == 0
        await batcher.stop()
        return answers

    answers = asyncio.run(scenario())
    assert len(answers) == count and sorted(i for i, _, _ in answers) == list(range(count))
    served = []
    for i, sent, answer in answers:
        after_outage = sent > recovered[0]
        if isinstance(answer, ApiError):
            allowed = {"inference_failed"} if i in poisoned else set()
            if i in impatient:
                allowed.add("timeout")
            if not after_outage:
                allowed |= {"inference_failed", "inference_unavailable"}
            assert answer.code in allowed, (i, sent, answer.code, answer.message)
        else:
            assert i not in poisoned, (i, sent)
            assert int(answer.labels[0, 0]) == 1 + i % 240  # its own row
            served.append(1 + i % 240)
    codes = Counter(answer.code for _, _, answer in answers if isinstance(answer, ApiError))
    assert codes["inference_unavailable"] >= 1 and codes["timeout"] >= 1, codes  # the outage and the impatient
    assert codes["inference_failed"] >= 1, codes  # the poisoned ones sent while the device worked
    assert len(served) >= count // 2, codes
    assert not health.failing
    # Each answered image ran successfully exactly once (a failed batch's images reran only after it failed).
    assert sorted(served) == sorted(m for m in ran_ok if m in set(served) and m != 0)


def test_after_a_failed_batch_only_the_images_still_waited_for_run_again_alone() -> None:
    """A client that hung up while its batch failed: its image is not run again on its own (before, the search for
    the failing image ran it anyway, device time that answered nobody)."""
    device = Device()
    device.gate.clear()  # the batch runs until the client of image 3 has gone

    async def scenario() -> list[object]:
        batcher = batcher_on(device, InferenceHealth())
        batcher.start()
        tasks = [asyncio.ensure_future(batcher.infer(image(v), 10)) for v in (1, POISON, 3, 4)]
        while batcher.in_flight == 0:
            await asyncio.sleep(0.005)
        tasks[2].cancel()  # the client of image 3 hangs up while its batch runs
        await asyncio.sleep(0.05)
        device.gate.set()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.stop()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert device.batches == [[1, POISON, 3, 4], [int(PROBE[0, 0, 0])], [1], [POISON], [4]]
    assert isinstance(outcomes[2], asyncio.CancelledError)
    assert [int(outcomes[i].labels[0, 0]) for i in (0, 3)] == [1, 4]  # type: ignore[union-attr]
    assert isinstance(outcomes[1], ApiError) and outcomes[1].code == "inference_failed"
