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
TICK_S = 0.05


class Ticks:
    """A real histogram, observed through this recorder, which also keeps each lateness and when it came."""

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self.lateness: list[float] = []
        self.at: list[float] = []

    def observe(self, value: float) -> None:
        self.histogram.observe(value)
        self.lateness.append(value)
        self.at.append(time.monotonic())


async def until(done: Callable[[], bool], what: str, within_s: float = 10) -> None:
    """Wait for `done()` on the running loop; the deadline only matters when the monitor is broken."""
    deadline = time.monotonic() + within_s
    while not done():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_a_held_up_loop_is_observed_as_lag(run: Callable[[Coroutine[Any, Any, None]], None]) -> None:
    # Phases end on the ticks themselves, not after fixed sleeps: how many ticks fit in a fixed window depends on
    # how promptly a busy machine wakes the loop (one 60 ms collection pause cost a tick and failed a bound of 6).
    registry = CollectorRegistry()
    ticks = Ticks(Histogram("lag_seconds", "lag", buckets=(0.002, 0.01, 0.1, 0.25, 1.0), registry=registry))
    monitor = LoopLagMonitor(ticks, interval_s=TICK_S)
    stopped_at: list[int] = []

    async def main() -> None:
        monitor.start()
        monitor.start()  # a second start does not add a second timer
        await until(lambda: len(ticks.at) >= 4, "the timer does not keep ticking")
        assert monitor.loop is not None
        before = len(ticks.at)
        monitor.loop.call_soon(time.sleep, BLOCK_S)  # a callback that holds the loop
        await until(lambda: len(ticks.at) >= before + 2, "no ticks after the held-up loop ran again")
        monitor.stop()
        stopped_at.append(len(ticks.at))
        await asyncio.sleep(4 * TICK_S)  # stopped: no more ticks (a live timer would add about four)

    run(main())
    buckets, count, total = histogram(generate_latest(registry).decode(), "lag_seconds")
    assert count == len(ticks.at) == stopped_at[0], (count, ticks.at, stopped_at)
    # One timer: each tick is due an interval after the previous one ran (a timer may fire up to a clock tick
    # early), where a second timer would tick right beside the first.
    gaps = [later - earlier for earlier, later in zip(ticks.at, ticks.at[1:], strict=False)]
    assert min(gaps) >= TICK_S - 0.005, gaps
    # The tick due while the loop was held ran at least the hold less one interval late.
    assert count - buckets[0.1] >= 1 and max(ticks.lateness) >= BLOCK_S - TICK_S - 0.005, ticks.lateness
    assert total <= BLOCK_S + 0.1 * count, ticks.lateness
    assert count - buckets[0.1] <= 2, ticks.lateness  # the other ticks ran on time, give or take a busy machine


def test_a_live_server_exports_its_loop_lag(tmp_path: Path) -> None:
    server = LiveServer(Settings(model_path=make_rule_model(tmp_path / "rule.onnx"), host="127.0.0.1",
                                 port=0)).start()
    try:
        monitor = server.state.loop_lag
        assert monitor.loop is not None  # started once the server was ready
        monitor.loop.call_soon_threadsafe(time.sleep, BLOCK_S)
        # Scraped until the ticks are there rather than after a fixed sleep, which a busy machine's late ticks
        # could outrun; the deadline only matters when the server does not tick.
        deadline = time.monotonic() + 10
        with server.client() as client:
            while True:
                buckets, count, total = histogram(client.get("/metrics").text, "segment_event_loop_lag_seconds")
                if count >= 5 and count - buckets[0.1] >= 1:
                    break
                assert time.monotonic() < deadline, (buckets, count, total)
                time.sleep(0.05)
    finally:
        server.stop()
    # The tick due while the loop was held (every 0.1 s) ran at least the hold less one interval late.
    assert total >= BLOCK_S - 0.1, (buckets, total)
