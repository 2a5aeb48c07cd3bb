"""Clients that give up while their images wait for the device (a timeout, a hang-up) must leave the line at once:
their images hold no place in the inference queue, in a batch, in `/readyz` or in `segment_queue_depth`.

Against a real uvicorn on a loopback port, with a real onnxruntime session whose runs are held on a gate, so that
the device is busy for exactly as long as the test needs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.core.engine import load_engine
from service.settings import Settings
from testkit.images import decode_labels
from tests.reliability.rule_helpers import rule_labels
from tests.service.gated_server import GatedServer
from tests.service.svc_helpers import make_rule_model, png_bytes, scene


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[GatedServer]:
    server = GatedServer(make_rule_model(tmp_path / "rule.onnx"), max_batch_size=4, max_queue=8,
                         concurrent_batches=1, max_wait_ms=20)
    with server.running():
        server.runs.clear()  # warm-up's
        yield server


def test_abandoned_images_leave_the_queue_at_once(gated: GatedServer) -> None:
    """A full queue of images whose clients have gone refused every live request 503 `overloaded` and kept
    /readyz at `overloaded` for as long as the device stayed busy, though none of them would ever run; and they
    took the places of live images in the next batch."""
    url = gated.live.url
    image = scene(96, 64)  # long side = the model's 96: the rule model's answer is exact
    body = png_bytes(image)

    async def scenario() -> tuple[httpx.Response, list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as patient:
            gated.gate.clear()  # the device is busy from the next run on
            running = asyncio.ensure_future(patient.post("/segment", content=body))
            await asyncio.to_thread(gated.wait_metric, "segment_batches_in_flight", 1)
            async with httpx.AsyncClient(base_url=url, timeout=0.5) as impatient:
                gone = await asyncio.gather(*(impatient.post("/segment", content=body) for _ in range(8)),
                                            return_exceptions=True)
            assert all(isinstance(g, httpx.TimeoutException) for g in gone), gone
            # The device is still busy: the line must already be empty, and the server ready for more.
            deadline = time.monotonic() + 10
            while (ready := await patient.get("/readyz")).status_code != 200 or ready.json()["queue_depth"]:
                assert time.monotonic() < deadline, ready.json()
                await asyncio.sleep(0.05)
            assert await asyncio.to_thread(gated.metric, "segment_queue_depth") == 0
            waiting = [asyncio.ensure_future(patient.post("/segment", content=body)) for _ in range(4)]
            await asyncio.to_thread(gated.wait_metric, "segment_queue_depth", 4)  # queued, not refused
            gated.gate.set()
            return await running, list(await asyncio.gather(*waiting))

    first, rest = asyncio.run(scenario())
    assert first.status_code == 200, first.text
    for r in rest:
        assert r.status_code == 200, r.text
        assert r.headers["x-batch-size"] == "4"  # one batch of the four live images
        np.testing.assert_array_equal(decode_labels(r.content), rule_labels(image))
    assert gated.runs == [1, 4]  # none of the abandoned images ran
    assert gated.metric("segment_queue_depth") == 0


def tagged(tag: int, size: int = 96) -> np.ndarray:
    """A letterboxed input whose first pixel's red value names it."""
    image = np.full((size, size, 3), 20, np.uint8)
    image[0, 0, 0] = tag
    return image


def test_an_image_abandoned_while_held_or_in_a_forming_batch_leaves_it(tmp_path: Path) -> None:
    """The two other places an image waits: held back by a split batch for the next one, and in a batch still
    forming (waiting for an image being decoded). Abandoned there, it leaves at once, and the batch that forms
    takes a live image in its place."""
    from service.batcher import Batcher  # the unit under test, on a real onnxruntime session

    engine = load_engine(Settings(model_path=make_rule_model(tmp_path / "rule.onnx"),
                                  intra_op_threads=1).engine_options())
    permits = threading.Semaphore(0)  # one per model run allowed to finish
    ran: list[list[int]] = []

    def run_images(images: Sequence[np.ndarray]) -> np.ndarray:
        assert permits.acquire(timeout=30)
        ran.append([int(image[0, 0, 0]) for image in images])
        return engine.run_images(images)

    async def scenario() -> None:
        # Held: a batch of four is split two now, two later (as a bucket plan does); one of the two held leaves.
        batcher = Batcher(run_images, max_batch_size=4, max_wait_ms=2000, max_queue=8, concurrency=1,
                          take=lambda count: min(count, 2))
        batcher.start()

        async def wait_until(check: object, what: str) -> None:
            deadline = time.monotonic() + 10
            while not check():  # type: ignore[operator]
                assert time.monotonic() < deadline, what
                await asyncio.sleep(0.005)

        first = asyncio.ensure_future(batcher.infer(tagged(1), 30))
        await wait_until(lambda: batcher.in_flight == 1, "the first batch runs")
        queued = {tag: asyncio.ensure_future(batcher.infer(tagged(tag), 30)) for tag in (2, 3, 4, 5)}
        await wait_until(lambda: batcher.depth == 4, "four queued")
        permits.release()  # the first batch ends; the next takes 2 and 3 and holds 4 and 5
        await first
        await wait_until(lambda: batcher.in_flight == 1 and batcher.depth == 2, "two held")
        queued[4].cancel()  # its client hangs up while held
        await wait_until(lambda: batcher.depth == 1, "the held image left")
        permits.release()
        permits.release()
        for tag in (2, 3, 5):
            await queued[tag]
        assert ran == [[1], [2, 3], [5]]
        await batcher.stop(1)

        # Forming: the batch waits for an image being decoded; the first image in it leaves, a live one comes.
        ran.clear()
        batcher = Batcher(run_images, max_batch_size=2, max_wait_ms=60_000, max_queue=8, concurrency=1)
        batcher.start()
        with batcher.expecting():
            gone = asyncio.ensure_future(batcher.infer(tagged(6), 30))
            await wait_until(lambda: batcher.depth == 1 and batcher.in_flight == 0, "a batch forms")
            await asyncio.sleep(0.05)  # taken into the forming batch, which waits for the image on its way
            gone.cancel()
            await wait_until(lambda: batcher.depth == 0, "the forming batch's image left")
            kept = [asyncio.ensure_future(batcher.infer(tagged(tag), 30)) for tag in (7, 8)]
            permits.release()
            for request in kept:
                await request
        assert ran == [[7, 8]]  # a full batch of the live images, cut at once; the one that left never ran
        await batcher.stop(1)

    asyncio.run(scenario())
