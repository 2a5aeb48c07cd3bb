"""The per-stage latency histograms count every request that went through a stage, not only those answered 200:
a timeout storm shows its decodes and its queueing (before, 166 timeouts, 113 refusals and 24 answers counted 24
decodes and 24 queue waits).

Against a real uvicorn on a loopback port, real PNG uploads and a real onnxruntime session whose runs wait on a
gate: the device hangs for as long as the test needs.
"""

from __future__ import annotations

import asyncio
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
