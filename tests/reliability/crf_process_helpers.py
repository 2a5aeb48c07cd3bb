"""Helpers for the CRF process tests: a `segment-serve` process on the demo model, the CRF's worker processes among
its children, uploads whose dense CRF is slow (noise: ~0.5 s each at the demo model's 320), and /healthz timed
while requests run."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from testkit.procstat import descendants


def noise_png(seed: int, width: int = 640, height: int = 480) -> bytes:
    """An RGB noise image: the bilateral kernel of the dense CRF is slowest on it."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def crf_workers(server_pid: int) -> list[int]:
    """The CRF worker processes of a single-process server (spawned by multiprocessing; not its resource tracker)."""
    found = []
    for pid in descendants(server_pid):
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"spawn_main" in command and b"resource_tracker" not in command:
                found.append(pid)
    return found


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie, ended and not yet reaped, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_for(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    """Poll `condition()` every 10 ms until it is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.01)


async def healthz_while(url: str, uploads: list[bytes], params: dict[str, str]
                        ) -> tuple[list[httpx.Response], list[float], float]:
    """POST every upload at once with `params`; meanwhile GET /healthz every 20 ms on a connection of its own.
    Returns the answers, each /healthz's seconds, and the seconds until the last answer."""
    async with httpx.AsyncClient(base_url=url, timeout=120) as posts, \
            httpx.AsyncClient(base_url=url, timeout=120) as probes:
        done = asyncio.Event()

        async def probe() -> list[float]:
            seconds = []
            while not done.is_set():
                start = time.perf_counter()
                assert (await probes.get("/healthz")).status_code == 200
                seconds.append(time.perf_counter() - start)
                await asyncio.sleep(0.02)
            return seconds

        prober = asyncio.create_task(probe())
        start = time.perf_counter()
        answers = await asyncio.gather(*(posts.post("/segment", content=data, params=params) for data in uploads))
        wall = time.perf_counter() - start
        done.set()
        return list(answers), await prober, wall
