"""A live server whose model runs wait on a gate: the device busy for exactly as long as a test needs."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import httpx
import numpy as np

from service.core.engine import load_engine
from service.settings import Settings
from testkit.metrics import metric_sum
from tests.service.svc_helpers import LiveServer


class GatedServer:
    """A LiveServer (not started) whose model runs wait while `gate` is closed; `runs` holds each run's image count
    (the guard's probes included). `on_run(images)` is called in each run, before the model (a slow device)."""

    def __init__(self, model: Path, on_run: Callable[[Sequence[np.ndarray]], None] | None = None,
                 **settings: object) -> None:
        config = Settings(**{"model_path": model, "host": "127.0.0.1", "port": 0, "intra_op_threads": 1, **settings})
        engine = load_engine(config.engine_options())
        run_images = engine.run_images
        self.gate = threading.Event()
        self.gate.set()
        self.runs: list[int] = []

        def gated(images: Sequence[np.ndarray]) -> np.ndarray:
            self.gate.wait(60)
            self.runs.append(len(images))
            if on_run is not None:
                on_run(images)
            return run_images(images)

        engine.run_images = gated  # type: ignore[method-assign]
        self.live = LiveServer(config, engine=engine)

    @contextlib.contextmanager
    def running(self) -> Iterator[GatedServer]:
        """The server started; on leaving, the gate opened (no run left waiting) and the server stopped."""
        self.live.start()
        try:
            yield self
        finally:
            self.gate.set()
            self.live.stop()

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples (those whose labels include `labels`), scraped from `/metrics`."""
        return metric_sum(httpx.get(f"{self.live.url}/metrics", timeout=10).text, name, **labels)

    async def queued_in_order(self, sends: Sequence[Callable[[], Awaitable[httpx.Response]]]) -> list[httpx.Response]:
        """The gate closed, the first request sent and its run held there, each next one sent once the one before
        it is queued, then the gate opened: their answers in sending order. (A test of the order they run in.)"""
        self.gate.clear()
        tasks = [asyncio.ensure_future(sends[0]())]
        await asyncio.to_thread(self.wait_metric, "segment_batches_in_flight", 1)  # held at the gate
        for depth, send in enumerate(sends[1:], start=1):
            tasks.append(asyncio.ensure_future(send()))
            await asyncio.to_thread(self.wait_metric, "segment_queue_depth", depth)
        self.gate.set()
        return list(await asyncio.gather(*tasks))

    def wait_metric(self, name: str, value: float, within_s: float = 15) -> None:
        """Wait until metric `name` reads `value`."""
        deadline = time.monotonic() + within_s
        while (now := self.metric(name)) != value:
            assert time.monotonic() < deadline, f"{name} is {now}, not {value}"
            time.sleep(0.02)
