"""Admission keeps the requests on their way to the inference queue within its places: the excess of an overload is
refused 503 `overloaded` before its decode, not after it (with a queue of 4, 157 of 210 refusals came from the full
queue, each after paying for its decode), and what the server can take (the queue's places) is taken.

Against a real uvicorn on a loopback port, real PNG uploads and a real onnxruntime session whose runs wait on a
gate, so that the device stays busy for exactly as long as the test needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from testkit.images import decode_labels
from testkit.metrics import samples
from tests.reliability.rule_helpers import rule_labels
from tests.service.gated_server import GatedServer
from tests.service.svc_helpers import make_rule_model, png_bytes, scene

QUEUE = 2


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[GatedServer]:
    server = GatedServer(make_rule_model(tmp_path / "rule.onnx"), max_batch_size=1, max_queue=QUEUE,
                         concurrent_batches=1, max_wait_ms=1, worker_threads=2)
    with server.running():
        yield server


def test_the_excess_is_refused_before_its_decode_and_what_fits_is_taken(gated: GatedServer) -> None:
    url = gated.live.url
    images = [scene(96, 60 + i) for i in range(10)]  # long side = the model's 96: the rule model's answer is exact

    async def scenario() -> tuple[list[httpx.Response], httpx.Response]:
        limits = httpx.Limits(max_connections=len(images) + 2)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            gated.gate.clear()  # the device is busy from the next run on
            # One runs first (whether the inference slot counts as a place for a burst depends on how soon its
            # worker takes an image off the queue: on a loaded machine, not at once), then the burst comes.
            first = asyncio.ensure_future(client.post("/segment", content=png_bytes(images[0])))
            await asyncio.to_thread(gated.wait_metric, "segment_batches_in_flight", 1)
            burst = [first, *(asyncio.ensure_future(client.post("/segment", content=png_bytes(im)))
                              for im in images[1:])]
            # The queue is full: every other request of the burst is answered meanwhile.
            await asyncio.to_thread(gated.wait_metric, "segment_queue_depth", QUEUE)
            await asyncio.to_thread(gated.wait_metric, "segment_rejected_total", len(images) - QUEUE - 1)
            unready = await client.get("/readyz")
            gated.gate.set()
            return list(await asyncio.gather(*burst)), unready

    responses, unready = asyncio.run(scenario())
    codes = [r.status_code for r in responses]
    # All the server could take was taken (the one running, and the queue), no more.
    assert codes.count(200) == QUEUE + 1 and codes.count(503) == len(images) - QUEUE - 1, codes
    for image, r in zip(images, responses, strict=True):
        if r.status_code == 200:
            np.testing.assert_array_equal(decode_labels(r.content), rule_labels(image))
        else:
            assert r.json()["error"]["code"] == "overloaded" and int(r.headers["retry-after"]) >= 1
            assert "queue is full" not in r.json()["error"]["message"], "refused after its decode"
    assert unready.status_code == 503 and unready.json()["status"] == "overloaded"
    text = httpx.get(f"{url}/metrics", timeout=10).text
    # Only the accepted uploads were decoded: no decode was paid for a refusal.
    assert samples(text, "segment_stage_duration_seconds_count")[(("stage", "decode"),)] == QUEUE + 1
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
