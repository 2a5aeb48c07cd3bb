"""A refused request is counted in `segment_rejected_total`; the log says it once, not once per request: at four
times the queue a line per 503 `overloaded` flooded the log (37 lines for 37 refusals) at the moment it matters most.
Faults (a 504 `timeout`) are still a line each. Against a real uvicorn on a loopback port whose onnxruntime runs wait
on a gate, and the log class with a clock the test moves."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.errors import ApiError
from service.refusal_log import RefusalLog
from testkit.metrics import samples
from tests.service.gated_server import GatedServer
from tests.service.svc_helpers import make_rule_model, png_bytes, scene

QUEUE = 1
REQUESTS = 12


def gated_server(folder: Path, queue: int) -> GatedServer:
    return GatedServer(make_rule_model(folder / "rule.onnx"), max_batch_size=1, max_queue=queue,
                       concurrent_batches=1, max_wait_ms=1, worker_threads=2, request_timeout_s=3)


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[GatedServer]:
    with gated_server(tmp_path, QUEUE).running() as server:
        yield server


def lines(caplog: pytest.LogCaptureFixture, code: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "service.app" and r.levelno == logging.WARNING and f": {code} " in r.getMessage()]


def test_an_overload_is_one_line_and_every_refusal_is_counted(gated: GatedServer,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="service.app")
    url = gated.live.url

    async def scenario() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=REQUESTS + 2)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            gated.gate.clear()
            first = asyncio.ensure_future(client.post("/segment", content=png_bytes(scene(96, 60))))
            await asyncio.to_thread(gated.wait_metric, "segment_batches_in_flight", 1)
            rest = [asyncio.ensure_future(client.post("/segment", content=png_bytes(scene(96, 61 + i))))
                    for i in range(REQUESTS - 1)]
            await asyncio.to_thread(gated.wait_metric, "segment_rejected_total", REQUESTS - QUEUE - 1)
            gated.gate.set()
            return list(await asyncio.gather(first, *rest))

    codes = [r.status_code for r in asyncio.run(scenario())]
    refused = codes.count(503)
    assert refused == REQUESTS - QUEUE - 1 and refused > 1, codes
    rejected = samples(httpx.get(f"{url}/metrics", timeout=10).text, "segment_rejected_total")
    assert rejected[(("reason", "overloaded"),)] == refused  # every refusal counted
    assert len(lines(caplog, "overloaded")) == 1  # and said once


def test_timeouts_are_a_line_each(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="service.app")
    with gated_server(tmp_path, queue=4).running() as gated:
        codes = asyncio.run(timed_out_pair(gated))
    assert codes == [504, 504]
    assert len(lines(caplog, "timeout")) == 2


async def timed_out_pair(gated: GatedServer) -> list[int]:
    gated.gate.clear()  # the first runs past its timeout; the second, sent at once, waits in line past its own
    async with httpx.AsyncClient(base_url=gated.live.url, timeout=30) as client:
        sent = [client.post("/segment", content=png_bytes(scene(96, 60 + i))) for i in range(2)]
        codes = [r.status_code for r in await asyncio.gather(*sent)]
    gated.gate.set()
    return codes


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_shedding_code_is_said_again_after_the_interval_with_the_count_between() -> None:
    clock, records = Clock(), []
    log = logging.getLogger("test.refusals")
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    log.addHandler(handler)
    try:
        refusals = RefusalLog(log, interval_s=10, clock=clock)
        overloaded = ApiError(503, "overloaded", "the queue is full")
        not_ready = ApiError(503, "not_ready", "loading")
        for _ in range(5):
            refusals.answered("a", overloaded)
        refusals.answered("b", not_ready)  # its own code: its own first line
        refusals.answered("c", ApiError(422, "invalid_request", "bad"))  # not a 5xx: not logged here
        clock.now += 10
        refusals.answered("d", overloaded)
        clock.now += 10
        refusals.answered("e", overloaded)  # nothing refused between: no count
    finally:
        log.removeHandler(handler)
    messages = [r.getMessage() for r in records]
    assert messages == ["request a: overloaded the queue is full", "request b: not_ready loading",
                        "request d: overloaded the queue is full (4 more refused overloaded in the last 10s)",
                        "request e: overloaded the queue is full"]
