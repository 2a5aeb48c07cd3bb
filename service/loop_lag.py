"""How late the event loop runs what is due: stalls of the whole server process, as a metric to alert on.

One event loop takes every connection's bytes, runs the app and hands work to the codec and inference threads.
Whatever holds it up (a blocking call on the loop, a C extension keeping the interpreter lock through a long
operation, a long collection pause, a starved CPU) holds up every request and `/healthz` alike, and neither the
request latency nor the device's metrics say why. A timer due every `interval_s` that records how late it ran
measures it directly, as Node's `monitorEventLoopDelay` (prom-client's `nodejs_eventloop_lag_seconds`) does. A
tick costs a few µs, ten times a second.

Measured on a 2-CPU host against the emulated accelerator, its CPUs saturated by 1024x768 JPEG uploads at 513
(docs/BENCHMARKS.md, "accelerator-lag"): mean lag under 1 ms and the 99th percentile at most 5-10 ms from
concurrency 8 to 64. So lag of 100 ms or more is a stall, not load.
"""

from __future__ import annotations

import asyncio
from typing import Any

INTERVAL_S = 0.1


class LoopLagMonitor:
    """Observes into `histogram` (a prometheus-client Histogram, or this worker's child of one) how late a timer due
    every `interval_s` ran on the running event loop, from `start()` until `stop()`."""

    def __init__(self, histogram: Any, interval_s: float = INTERVAL_S) -> None:
        self.histogram = histogram
        self.interval_s = interval_s
        self.loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Begin ticking on the running loop (a second call does nothing)."""
        if self._handle is None:
            self.loop = asyncio.get_running_loop()
            self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self) -> None:
        assert self.loop is not None
        self._due = self.loop.time() + self.interval_s
        self._handle = self.loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self.loop is not None
        # The loop's clock is read when it wakes, so a loop held up by a long callback, or waiting for the
        # interpreter lock, shows the whole delay here. Timers may fire up to a clock tick early: that is 0.
        self.histogram.observe(max(0.0, self.loop.time() - self._due))
        self._schedule()
