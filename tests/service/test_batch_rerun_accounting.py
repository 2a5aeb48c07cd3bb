"""After a failed batch, each image runs again alone (service/inference_guard.py): an image answered then reports the
run that produced its labels (service/batch_runs.py), not the batch that failed. `X-Batch-Size` is 1, and
Server-Timing's and `timing_ms`'s `inference` is its own run, the failed batch and the probe counting as time it
waited (`queue`). The batch-size and padding metrics count the requests' runs that returned labels, never the
probe's run, also where the probe's one image pads to a larger bucket.

A real uvicorn on a loopback port, real onnxruntime sessions in fixed shapes on a model that fails inside
onnxruntime on a poisoned image, real PNG uploads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.reliability.faults_helpers import make_poisonable_model, poisoned
from tests.service.gated_server import GatedServer
from tests.service.svc_helpers import png_bytes, scene

HOLD_S = 0.5  # how long the device takes over the batch that fails


def slow_batches_of_four(images: Sequence[np.ndarray]) -> None:
    """Runs of four images (the batch that fails) take HOLD_S more."""
    if len(images) == 4:
        time.sleep(HOLD_S)


@pytest.fixture(scope="module")
def poison_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_poisonable_model(tmp_path_factory.mktemp("rerun") / "poison.onnx")


@pytest.fixture
def held(request: pytest.FixtureRequest, poison_model: Path) -> Iterator[GatedServer]:
    server = GatedServer(poison_model, slow_batches_of_four, batch_buckets=request.param, providers="cpu",
                          fixed_shapes="on", max_batch_size=4, concurrent_batches=1, max_wait_ms=20)
    server.live.start()
    server.runs.clear()  # warm-up's
    server.live.state.engine.runner.plan = {}  # run every count whole: no timing-dependent split of the four
    try:
        yield server
    finally:
        server.gate.set()
        server.live.stop()


def server_timing(response: httpx.Response) -> dict[str, float]:
    """Server-Timing's figures, in ms."""
    figures = (part.strip().split(";dur=") for part in response.headers["server-timing"].split(","))
    return {name: float(ms) for name, ms in figures}


# Buckets 1, 2, 4 (the default), and 2, 4: there a run of one image, the probe's too, pads to two.
@pytest.mark.parametrize("held", [[], [2, 4]], indirect=True, ids=["default-buckets", "no-bucket-of-1"])
def test_an_image_run_again_alone_reports_its_own_run_and_the_probe_counts_nowhere(held: GatedServer) -> None:
    clean = [scene(96, 70 + i) for i in range(3)]
    uploads = [png_bytes(clean[0]), png_bytes(poisoned(96, 71)), png_bytes(clean[1]), png_bytes(clean[2])]

    async def scenario() -> tuple[httpx.Response, list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=held.live.url, timeout=60) as client:
            held.gate.clear()  # the device is busy with the first request while the next four queue
            first = asyncio.ensure_future(client.post("/segment", content=png_bytes(clean[0])))
            await asyncio.to_thread(held.wait_metric, "segment_batches_in_flight", 1)
            batch = [asyncio.ensure_future(client.post("/segment", content=body, params={"output": "stats"}))
                     for body in uploads]
            await asyncio.to_thread(held.wait_metric, "segment_queue_depth", 4)
            held.gate.set()
            return await first, list(await asyncio.gather(*batch))

    first, (a, bad, b, c) = asyncio.run(scenario())
    # One run alone, the batch of four (failed), the probe, then each of the four alone (the poisoned one fails).
    assert held.runs == [1, 4, 1, 1, 1, 1, 1], held.runs
    assert first.status_code == 200 and first.headers["x-batch-size"] == "1"
    assert bad.status_code == 500 and bad.json()["error"]["code"] == "inference_failed", bad.text
    for answer in (a, b, c):
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-batch-size"] == "1"  # its labels came from a run of one, not the batch of four
        timing = server_timing(answer)
        # Its inference is its own run; the failed batch's HOLD_S (and the probe) is time it waited for it.
        assert timing["inference"] < HOLD_S * 1000 <= timing["queue"], timing
        assert answer.json()["timing_ms"] == pytest.approx(timing, abs=0.01)

    # The runs that returned labels for requests: the first one and the three clean images alone, one image each.
    assert (held.metric("segment_batch_size_count"), held.metric("segment_batch_size_sum")) == (4, 4)
    runner = held.live.state.engine.runner
    pad_one = runner.padded_size(1) - 1  # 0 with a bucket of one, else 1 per run
    assert held.metric("segment_batch_padding_images_total") == 4 * pad_one  # the probe's padding not among them
    assert held.metric("segment_inference_failures_total") == 2  # the batch, and the poisoned image alone


@pytest.mark.parametrize("held", [[], [2, 4]], indirect=True, ids=["default-buckets", "no-bucket-of-1"])
def test_the_probe_counts_in_no_padding_figure(held: GatedServer) -> None:
    """A run of one clean image, a batch of three, then a poisoned image alone: its run fails and the probe runs
    (one image: no padding with a bucket of one, bucket 2's padding without). /readyz's `padding_fraction` and the
    metrics are the two requests' runs', whatever the probe added."""

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=held.live.url, timeout=60) as client:
            held.gate.clear()
            first = asyncio.ensure_future(client.post("/segment", content=png_bytes(scene(96, 70))))
            await asyncio.to_thread(held.wait_metric, "segment_batches_in_flight", 1)
            batch = [asyncio.ensure_future(client.post("/segment", content=png_bytes(scene(96, 71 + i))))
                     for i in range(3)]
            await asyncio.to_thread(held.wait_metric, "segment_queue_depth", 3)
            held.gate.set()
            answers = [await first, *await asyncio.gather(*batch)]
            answers.append(await client.post("/segment", content=png_bytes(poisoned(96, 74))))
            return answers

    answers = asyncio.run(scenario())
    assert [r.status_code for r in answers] == [200] * 4 + [500], [r.text for r in answers]
    assert [r.headers.get("x-batch-size") for r in answers[:4]] == ["1", "3", "3", "3"]
    assert held.runs == [1, 3, 1, 1], held.runs  # the poisoned image alone (failed), then the probe
    runner = held.live.state.engine.runner
    padding = sum(runner.padded_size(n) - n for n in (1, 3))
    rows = runner.padded_size(1) + runner.padded_size(3)
    ready = httpx.get(f"{held.live.url}/readyz", timeout=10).json()
    assert ready["padding_fraction"] == round(padding / rows, 4)
    # The engine's own count has the probe's run too: the figures differ, or this scenario would prove nothing.
    assert runner.padded_rows / (runner.real_rows + runner.padded_rows) != pytest.approx(padding / rows)
    assert held.metric("segment_batch_padding_images_total") == padding
    assert (held.metric("segment_batch_size_count"), held.metric("segment_batch_size_sum")) == (2, 4)
