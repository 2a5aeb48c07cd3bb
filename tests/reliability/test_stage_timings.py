"""The per-stage latency histograms count every request that went through a stage, not only those answered 200:
a timeout storm shows its decodes and its queueing (before, 166 timeouts, 113 refusals and 24 answers counted 24
decodes and 24 queue waits).

Against a real uvicorn on a loopback port, real PNG uploads and a real onnxruntime session whose runs wait on a
gate: the device hangs for as long as the test needs.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from testkit.metrics import samples
from tests.service.gated_server import GatedServer
from tests.service.svc_helpers import make_rule_model, png_bytes, scene

TIMEOUT_S = 0.3


def test_requests_that_time_out_count_their_decode_and_their_queueing(tmp_path: Path) -> None:
    server = GatedServer(make_rule_model(tmp_path / "rule.onnx"), max_batch_size=1, max_queue=8,
                         concurrent_batches=1, max_wait_ms=1, request_timeout_s=TIMEOUT_S)
    server.live.start()
    url = server.live.url
    body = png_bytes(scene(96, 64))

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            return list(await asyncio.gather(*(client.post("/segment", content=body) for _ in range(3))))

    try:
        server.gate.clear()  # one runs and never returns in time, two wait in the queue
        responses = asyncio.run(burst())
        text = httpx.get(f"{url}/metrics", timeout=10).text
    finally:
        server.gate.set()
        server.live.stop()
    assert [r.status_code for r in responses] == [504] * 3, [r.text for r in responses]
    counts = samples(text, "segment_stage_duration_seconds_count")
    sums = samples(text, "segment_stage_duration_seconds_sum")
    assert counts.get((("stage", "decode"),)) == 3
    assert counts.get((("stage", "queue"),)) == 3
    # The one taken into the batch waited in line only until then; the rest of its timeout was its run's.
    assert counts.get((("stage", "inference"),)) == 1
    assert sums[(("stage", "inference"),)] >= TIMEOUT_S * 0.9
    assert sums[(("stage", "queue"),)] >= 2 * TIMEOUT_S * 0.9  # the two behind it waited in line all along
    assert sums[(("stage", "queue"),)] < 3 * TIMEOUT_S * 0.9
    assert counts.get((("stage", "encode"),), 0) == 0  # nothing was encoded


def test_requests_whose_clients_hang_up_count_their_batch_run_as_inference(tmp_path: Path) -> None:
    """Clients that give up while the device runs one image's batch: that image waited in line only until its batch
    took it, the rest of its wait was the run's; the two behind it queued all along (before, all three waits
    counted as queueing, and a hung device looked like a long queue)."""
    server = GatedServer(make_rule_model(tmp_path / "rule.onnx"), max_batch_size=1, max_queue=8,
                         concurrent_batches=1, max_wait_ms=1, request_timeout_s=30)
    server.live.start()
    url = server.live.url
    body = png_bytes(scene(96, 64))

    async def gives_up(client: httpx.AsyncClient) -> str:
        try:
            await client.post("/segment", content=body, timeout=TIMEOUT_S)
        except httpx.TimeoutException:
            return "gave up"
        return "answered"

    def stage_counts() -> tuple[dict, dict]:
        text = httpx.get(f"{url}/metrics", timeout=10).text
        return (samples(text, "segment_stage_duration_seconds_count"),
                samples(text, "segment_stage_duration_seconds_sum"))

    async def burst() -> list[str]:
        async with httpx.AsyncClient(base_url=url) as client:
            return list(await asyncio.gather(*(gives_up(client) for _ in range(3))))

    try:
        server.gate.clear()  # one runs and never returns while its client waits, two wait in the queue
        outcomes = asyncio.run(burst())
        deadline = time.monotonic() + 10
        counts, sums = stage_counts()
        while counts.get((("stage", "queue"),), 0) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # the server notices each hang-up on its own
            counts, sums = stage_counts()
    finally:
        server.gate.set()
        server.live.stop()
    assert outcomes == ["gave up"] * 3
    assert counts.get((("stage", "decode"),)) == 3
    assert counts.get((("stage", "queue"),)) == 3
    assert counts.get((("stage", "inference"),)) == 1
    assert sums[(("stage", "inference"),)] >= TIMEOUT_S * 0.5
    assert sums[(("stage", "queue"),)] >= 2 * TIMEOUT_S * 0.5  # the two behind it waited in line all along
    assert sums[(("stage", "queue"),)] < 3 * TIMEOUT_S * 0.9  # not the whole wait of the one that ran
