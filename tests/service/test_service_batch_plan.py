"""Preferred batch sizes: with fixed-shape buckets a batch that would pad a lot runs a smaller full bucket now and
leaves the rest for the next batch, when the buckets' measured times say that is cheaper. Proven on CPU: the plan's
arithmetic, the batcher's split (every image answered with its own row, in order), and a live server whose
batches are all ones the plan keeps whole."""

from __future__ import annotations

import asyncio
import threading

import httpx
import numpy as np
import pytest

from service.batcher import Batcher
from service.core.buckets import batch_plan
from service.errors import ApiError
from service.settings import default_model_path
from testkit.metrics import samples as metric_samples
from tests.service.svc_helpers import png_bytes, scene

# Seconds per batch of deeplabv3_resnet101 at 513, fp16, NHWC on an H200 (raw onnxruntime, docs/bench/).
H200 = {1: 4.61e-3, 2: 7.21e-3, 4: 12.46e-3, 8: 22.07e-3, 16: 41.77e-3}


def test_the_plan_splits_only_where_a_full_bucket_now_and_the_rest_later_cost_less() -> None:
    plan = batch_plan(H200)
    assert set(plan) == set(range(1, 17))
    assert {n: k for n, k in plan.items() if k != n} == {3: 2, 5: 4, 6: 4, 9: 8, 10: 8, 11: 8, 12: 8, 13: 8}
    assert plan[15] == 15 and plan[14] == 14 and plan[7] == 7  # little padding: one batch is cheaper
    # Time proportional to size (a CPU): padding is pure loss, every count splits into full buckets.
    linear = batch_plan({1: 1.0, 2: 2.0, 4: 4.0, 8: 8.0})
    assert [linear[n] for n in range(1, 9)] == [1, 2, 2, 4, 4, 4, 4, 8]
    # A GPU that takes as long for 8 as for 1 (far from saturated): padding is free, never split.
    assert all(k == n for n, k in batch_plan({1: 5.0, 2: 5.0, 4: 5.0, 8: 5.0}).items())
    # No bucket below the count: pad (buckets 4 and 8 only). Above 4, the rest is costed padded to 4 as well.
    # And a bucket slower than two of the one below it is run as two of those.
    assert batch_plan({4: 4.0, 8: 10.0}) == {1: 1, 2: 2, 3: 3, 4: 4, 5: 4, 6: 4, 7: 4, 8: 4}
    assert batch_plan({4: 4.0, 8: 8.0})[5] == 5  # 4 + 1 padded to 4 costs as much as 8: one batch
    # A near tie stays one batch: the times come from a single warm-up run each.
    assert batch_plan({1: 1.0, 2: 1.9, 4: 3.0})[3] == 3


def _marked(value: int) -> np.ndarray:
    return np.full((2, 2, 3), value, np.uint8)


def test_a_split_batch_answers_every_image_with_its_own_row_in_arrival_order() -> None:
    batches: list[list[int]] = []

    def run_images(images: list[np.ndarray]) -> np.ndarray:
        batches.append([int(image[0, 0, 0]) for image in images])
        return np.stack([image[:, :, 0] for image in images])  # each row carries its image's mark

    plan = batch_plan({1: 1.0, 2: 2.0, 4: 4.0, 8: 8.0, 16: 16.0})

    async def scenario() -> list[int]:
        batcher = Batcher(run_images, max_batch_size=16, max_wait_ms=1000, max_queue=32, concurrency=1,
                          take=plan.__getitem__)
        batcher.start()
        results = await asyncio.gather(*(batcher.infer(_marked(i), 10) for i in range(11)))
        assert batcher.depth == 0
        await batcher.stop()
        return [int(r.labels[0, 0]) for r in results]

    assert asyncio.run(scenario()) == list(range(11))
    assert batches == [list(range(8)), [8, 9], [10]]  # 11 = 8 + 2 + 1: full buckets, nothing padded


def test_images_held_back_by_a_split_are_answered_when_the_server_stops() -> None:
    release = threading.Event()

    def run_images(images: list[np.ndarray]) -> np.ndarray:
        release.wait(10)
        return np.zeros((len(images), 2, 2), np.uint8)

    async def scenario() -> list[object]:
        batcher = Batcher(run_images, max_batch_size=16, max_wait_ms=1000, max_queue=32, concurrency=1,
                          take=lambda n: 8 if n > 8 else n)
        batcher.start()
        tasks = [asyncio.ensure_future(batcher.infer(_marked(i), 10)) for i in range(11)]
        while batcher.in_flight == 0:
            await asyncio.sleep(0.01)
        assert batcher.depth == 3  # the three held back count as queued
        stopping = asyncio.ensure_future(batcher.stop(drain_timeout_s=0.2))
        await asyncio.sleep(0.4)
        release.set()
        await stopping
        return await asyncio.gather(*tasks[8:], return_exceptions=True)

    held = asyncio.run(scenario())
    assert all(isinstance(e, ApiError) and e.status == 503 and e.code == "shutting_down" for e in held), held
    assert all(e.headers["Retry-After"] for e in held)  # retryable, elsewhere


def test_a_live_server_runs_only_batches_its_plan_keeps_whole(serve) -> None:
    server = serve(default_model_path(), fixed_shapes="on", max_batch_size=8, max_wait_ms=300,
                   intra_op_threads=1)
    runner = server.state.engine.runner
    assert all(b.run_s and b.run_s > 0 for b in runner.buckets)  # warm-up timed every bucket
    assert set(runner.plan) == set(range(1, 9))
    body = httpx.get(f"{server.url}/readyz", timeout=10).json()
    assert all(b["run_ms"] > 0 for b in body["buckets"])
    assert body["batch_plan"] == {str(n): k for n, k in runner.plan.items() if k != n}
    # The measured plan depends on this machine's timings; pin a known one so the outcome is certain.
    runner.plan = batch_plan({1: 1.0, 2: 2.0, 4: 4.0, 8: 8.0})
    assert httpx.get(f"{server.url}/readyz", timeout=10).json()["batch_plan"] == {"3": 2, "5": 4, "6": 4, "7": 4}

    async def burst(n: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            return await asyncio.gather(*(client.post("/segment", content=png_bytes(scene(90 + i, 70)),
                                                      params={"output": "stats"}) for i in range(n)))

    sizes = []
    for n in (7, 3, 6, 5):
        responses = asyncio.run(burst(n))
        assert [r.status_code for r in responses] == [200] * n
        sizes += [int(r.headers["x-batch-size"]) for r in responses]
    assert set(sizes) <= {1, 2, 4, 8}, sizes  # never a batch the plan splits, so nothing was padded
    assert any(size > 1 for size in sizes)  # batches really formed
    assert runner.padded_rows == 0 and runner.real_rows == 21
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert metric_samples(text, "segment_batch_padding_images_total")[()] == 0
    # Bursts of 7, 3, 6 and 5 gather (max wait 300 ms) into batches the plan splits: images were held back.
    assert metric_samples(text, "segment_batch_held_images_total")[()] > 0


@pytest.mark.parametrize("count", [1, 4, 8])
def test_counts_the_plan_keeps_whole_are_never_split(count: int) -> None:
    """A bucket-sized batch (or a plan without splits) runs as one batch, exactly as before."""
    batches: list[int] = []

    def run_images(images: list[np.ndarray]) -> np.ndarray:
        batches.append(len(images))
        return np.zeros((len(images), 2, 2), np.uint8)

    async def scenario() -> None:
        batcher = Batcher(run_images, max_batch_size=8, max_wait_ms=1000, max_queue=16,
                          take=batch_plan({1: 1.0, 2: 2.0, 4: 4.0, 8: 8.0}).__getitem__)
        batcher.start()
        await asyncio.gather(*(batcher.infer(_marked(i), 10) for i in range(count)))
        await batcher.stop()

    asyncio.run(scenario())
    assert batches == [count]
