"""`segment_event_loop_lag_seconds`: a loop held up shows as lag, on both event loops, and on a live server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from service.loop_lag import LoopLagMonitor
from service.settings import Settings
from testkit.metrics import histogram
from tests.service.svc_helpers import LiveServer, make_rule_model

BLOCK_S = 0.3


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_a_held_up_loop_is_observed_as_lag(run: Callable[[Coroutine[Any, Any, None]], None]) -> None:
    registry = CollectorRegistry()
    lag = Histogram("lag_seconds", "lag", buckets=(0.002, 0.01, 0.1, 0.25, 1.0), registry=registry)
    monitor = LoopLagMonitor(lag, interval_s=0.05)

    async def main() -> None:
        monitor.start()
        monitor.start()  # a second start does not add a second timer
        await asyncio.sleep(0.3)
        assert monitor.loop is not None
        monitor.loop.call_soon(time.sleep, BLOCK_S)  # a callback that holds the loop
        await asyncio.sleep(0.3)
        monitor.stop()
        await asyncio.sleep(0.2)  # stopped: no more ticks

    run(main())
    buckets, count, total = histogram(generate_latest(registry).decode(), "lag_seconds")
    # About 0.6 s of loop time at 50 ms a tick, the held-up 0.3 s counting as one late tick: one timer only.
    assert 6 <= count <= 12, count
    assert count - buckets[0.1] >= 1, buckets  # the late tick
    assert BLOCK_S - 0.1 <= total <= BLOCK_S + 0.1 * count, total
    assert count - buckets[0.1] <= 2, buckets  # the other ticks ran on time, give or take a busy machine


def test_a_live_server_exports_its_loop_lag(tmp_path: Path) -> None:
    server = LiveServer(Settings(model_path=make_rule_model(tmp_path / "rule.onnx"), host="127.0.0.1",
                                 port=0)).start()
    try:
        monitor = server.state.loop_lag
        assert monitor.loop is not None  # started once the server was ready
        time.sleep(0.3)
        monitor.loop.call_soon_threadsafe(time.sleep, BLOCK_S)
        time.sleep(BLOCK_S + 0.3)
        with server.client() as client:
            text = client.get("/metrics").text
    finally:
        server.stop()
    buckets, count, total = histogram(text, "segment_event_loop_lag_seconds")
    assert count >= 5, count
    assert count - buckets[0.1] >= 1 and total >= BLOCK_S - 0.1, (buckets, total)
