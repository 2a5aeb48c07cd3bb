"""A `crf=true` request takes its place in the dense CRF's pool when it is admitted, before its decode and model run:
one the pool has no room for is refused 503 `overloaded` at once, without costing a decode, a place in the
inference queue or a model run (before, it paid for all three and was refused only when its labels reached the
CRF). The place comes back whatever ends the request: an answer, a refusal of its image, its client hanging up.

A real uvicorn on a loopback port, real PNG uploads, real CRF worker processes, and a real onnxruntime session
whose runs wait on a gate: the device busy for as long as the test needs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.service.gated_server import GatedServer
from tests.service.svc_helpers import make_rule_model, png_bytes, scene

CRF = {"crf": "true", "output": "stats"}


@pytest.fixture
def gated(tmp_path: Path) -> GatedServer:
    # One CRF process and one more waiting for it: two places.
    return GatedServer(make_rule_model(tmp_path / "rule.onnx"), crf_processes=1, max_batch_size=1, max_queue=8,
                       concurrent_batches=1, max_wait_ms=1, request_timeout_s=30)


def decodes(server: GatedServer) -> float:
    return server.metric("segment_stage_duration_seconds_count", stage="decode")


async def until(check: Callable[[], bool], what: str, within_s: float = 15) -> None:
    """Wait until `check()` (a blocking scrape of the server's metrics: it runs in its own process)."""
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def _post(client: httpx.AsyncClient, params: dict[str, str], body: bytes) -> httpx.Response:
    return await client.post("/segment", params=params, content=body)


def test_a_crf_request_without_a_place_is_refused_before_its_decode_and_model_run(gated: GatedServer) -> None:
    body = png_bytes(scene(96, 64))

    async def scenario() -> tuple[list[httpx.Response], httpx.Response, float, int]:
        async with httpx.AsyncClient(base_url=gated.live.url, timeout=30) as client:
            holding = [asyncio.ensure_future(_post(client, CRF, body)) for _ in range(2)]  # both places
            await until(lambda: decodes(gated) >= 2, "both admitted, decoded, waiting for the device")
            refused = await asyncio.wait_for(_post(client, CRF, body), 10)  # at once: the gate is still closed
            decoded, runs = decodes(gated), len(gated.runs)
            gated.gate.set()
            return list(await asyncio.gather(*holding)), refused, decoded, runs

    with gated.running():
        gated.gate.clear()
        answered, refused, decoded, runs = asyncio.run(scenario())
        again = httpx.post(f"{gated.live.url}/segment", params=CRF, content=body, timeout=30)  # places given back
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "overloaded" and "CRF" in refused.json()["error"]["message"]
    assert refused.headers["Retry-After"] == "1"
    assert decoded == 2 and runs == 0  # the refused one was neither decoded nor run
    assert [a.status_code for a in answered] == [200, 200], [a.text for a in answered]
    assert again.status_code == 200, again.text


def test_places_come_back_after_a_refused_image_and_a_client_that_hangs_up(gated: GatedServer) -> None:
    body = png_bytes(scene(96, 64))

    async def hang_up(client: httpx.AsyncClient) -> str:
        try:
            await client.post("/segment", params=CRF, content=body, timeout=0.5)
        except httpx.TimeoutException:
            return "gave up"
        return "answered"

    async def scenario() -> tuple[list[int], list[str], list[int]]:
        async with httpx.AsyncClient(base_url=gated.live.url, timeout=30) as client:
            # One after another, more than the places: each gives its place back when refused.
            corrupt = [(await _post(client, CRF, b"\x89PNG\r\n\x1a\n not a png")).status_code for _ in range(3)]
            gone = list(await asyncio.gather(*(hang_up(client) for _ in range(2))))  # the gate is closed
            await until(lambda: gated.metric("segment_rejected_total", reason="client_closed") >= 2,
                        "both hang-ups noticed")
            # Had any of them kept its place, the second of these would be refused 503.
            holding = [asyncio.ensure_future(_post(client, CRF, body)) for _ in range(2)]
            await until(lambda: decodes(gated) >= 4, "both admitted, decoded, waiting for the device")
            gated.gate.set()
            return corrupt, gone, [r.status_code for r in await asyncio.gather(*holding)]

    with gated.running():
        gated.gate.clear()
        corrupt, gone, held = asyncio.run(scenario())
    assert all(code in (400, 415, 422) for code in corrupt), corrupt
    assert gone == ["gave up", "gave up"]
    assert held == [200, 200]
