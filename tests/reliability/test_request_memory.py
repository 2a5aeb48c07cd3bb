"""What a request holds from its decode to its answer (an overlay's full-size image) is bounded by the request memory
budget: beyond it new requests are refused 503 `overloaded` with Retry-After before their decode, `/readyz` says
`overloaded`, and every request already accepted still gets its answer.

Against a real uvicorn on a loopback port, real PNG uploads and a real onnxruntime session whose runs wait on a
gate, so that accepted requests hold their images for exactly as long as the test needs.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from testkit.images import decode_labels
from testkit.metrics import samples
from tests.service.gated_server import GatedServer
from tests.service.svc_helpers import make_rule_model, png_bytes, scene

WIDTH, HEIGHT = 400, 300
IMAGE_BYTES = 3 * WIDTH * HEIGHT  # what an overlay keeps of its decode: 360,000 bytes
BUDGET = 1024 * 1024  # room for two such overlays (and their model inputs and uploads), not three


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[GatedServer]:
    server = GatedServer(make_rule_model(tmp_path / "rule.onnx"), max_batch_size=1, max_queue=8,
                         concurrent_batches=1, max_wait_ms=1, worker_threads=2, request_memory_bytes=BUDGET)
    with server.running():
        yield server


def _wait(check: object, what: str, within_s: float = 15) -> None:
    deadline = time.monotonic() + within_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_overloads_beyond_the_memory_budget_are_refused_before_their_decode(gated: GatedServer) -> None:
    url = gated.live.url
    image = scene(WIDTH, HEIGHT)
    body = png_bytes(image)
    assert len(body) < 64 * 1024  # a small upload that decodes to far more: what the budget is for

    def memory() -> float:
        return gated.metric("segment_request_memory_bytes")

    async def scenario() -> tuple[list[httpx.Response], httpx.Response, httpx.Response, float]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            gated.gate.clear()  # the device is busy from the next run on
            # One runs, one waits in the queue: each keeps its full-size image until its answer is sent.
            accepted = [asyncio.ensure_future(client.post("/segment?output=overlay", content=body))]
            await asyncio.to_thread(gated.wait_metric, "segment_batches_in_flight", 1)
            accepted.append(asyncio.ensure_future(client.post("/segment?output=overlay", content=body)))
            await asyncio.to_thread(gated.wait_metric, "segment_queue_depth", 1)
            held = memory()
            try:
                refused = await client.post("/segment?output=overlay", content=body, timeout=10)
            except httpx.TimeoutException:
                pytest.fail("a third overlay was taken beyond the memory budget (it waits for the device)")
            unready = await client.get("/readyz")
            gated.gate.set()
            return list(await asyncio.gather(*accepted)), refused, unready, held

    accepted, refused, unready, held = asyncio.run(scenario())
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "overloaded" and "memory" in refused.json()["error"]["message"]
    assert int(refused.headers["retry-after"]) >= 1
    assert unready.status_code == 503 and unready.json()["status"] == "overloaded"
    assert 2 * IMAGE_BYTES <= held <= BUDGET  # the two accepted, each with its full-size image
    for r in accepted:  # every request accepted gets its answer: the overlay, at the upload's size
        assert r.status_code == 200, r.text
        assert Image.open(io.BytesIO(r.content)).size == (WIDTH, HEIGHT)
    text = httpx.get(f"{url}/metrics", timeout=10).text
    assert samples(text, "segment_rejected_total")[(("reason", "overloaded"),)] == 1
    # Refused before its decode: only the two accepted uploads were decoded.
    assert samples(text, "segment_stage_duration_seconds_count")[(("stage", "decode"),)] == 2
    _wait(lambda: memory() == 0, "memory still held after every answer was sent")
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    assert httpx.post(f"{url}/segment?output=overlay", content=body, timeout=30).status_code == 200


def test_a_request_that_alone_needs_more_is_too_large_and_answers_that_show_no_image_keep_none(
        tmp_path: Path) -> None:
    """An overlay larger than the whole budget could never be answered: 413, not a retry. A label map of the same
    upload keeps no image while it waits, so it fits."""
    large = scene(800, 600)  # 1.44 MB decoded: more than the whole budget
    server = GatedServer(make_rule_model(tmp_path / "rule.onnx"), request_memory_bytes=BUDGET)
    server.live.start()
    try:
        with server.live.client() as client:
            too_large = client.post("/segment?output=overlay", content=png_bytes(large))
            labels = client.post("/segment?output=labels", content=png_bytes(large))
            assert client.get("/readyz").status_code == 200
        memory = server.metric("segment_request_memory_bytes")
    finally:
        server.live.stop()
    assert too_large.status_code == 413 and too_large.json()["error"]["code"] == "image_too_large", too_large.text
    assert labels.status_code == 200, labels.text
    assert decode_labels(labels.content).shape == (600, 800)
    assert memory == 0


def test_a_client_that_leaves_while_queued_gives_its_share_back(gated: GatedServer) -> None:
    url = gated.live.url
    body = png_bytes(scene(WIDTH, HEIGHT))

    async def leave() -> float:
        async with httpx.AsyncClient(base_url=url, timeout=1.5) as impatient:
            gated.gate.clear()  # one runs, one waits in the queue, and both clients give up
            gone = [asyncio.ensure_future(impatient.post("/segment?output=overlay", content=body)) for _ in range(2)]
            await asyncio.to_thread(gated.wait_metric, "segment_queue_depth", 1)
            held = gated.metric("segment_request_memory_bytes")
            for task in gone:
                with pytest.raises(httpx.TimeoutException):
                    await task
            return held

    held = asyncio.run(leave())
    assert held >= 2 * IMAGE_BYTES
    _wait(lambda: gated.metric("segment_request_memory_bytes") == 0, "a share outlived its request")
    gated.gate.set()
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/segment?output=overlay", content=body).status_code == 200
    assert gated.metric("segment_request_memory_bytes") == 0
