"""`GET /results` under several workers reads a result's file (its upload included: tens of MB) off the event loop
and only under a render slot, so that refetches of a large result do not hold up every request of a worker."""

from __future__ import annotations

import io
import statistics
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from testkit.server import ServerProcess


def noise_png(side: int) -> bytes:
    """An incompressible PNG, stored rather than compressed: its upload is as large as its pixels."""
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


def test_refetches_of_a_large_result_do_not_stall_the_workers(rule_model: Path) -> None:
    """Eight clients refetch a 48 MB upload's label map (one render at a time: the rest are 503) while /healthz is
    timed. Read on the event loop, each refetch, refused ones too, held up the worker's every request for the
    read (measured: /healthz p50 613 ms with a 19 MB upload and 12 clients, 91 ms after)."""
    body = noise_png(4000)
    assert len(body) > 45_000_000
    with ServerProcess(rule_model, SEGMENT_WORKERS="2", SEGMENT_INTRA_OP_THREADS="1", SEGMENT_WORKER_THREADS="2",
                       SEGMENT_MAX_UPLOAD_BYTES="64MiB") as server:
        server.wait_ready()
        made = httpx.post(f"{server.url}/segment", params={"output": "stats"}, content=body,
                          headers={"content-type": "image/png"}, timeout=120)
        assert made.status_code == 200, made.text
        rid = made.headers["X-Result-ID"]
        missing = httpx.get(f"{server.url}/results/{'x' * 22}/labels.png", timeout=30)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "result_not_found"

        stop = threading.Event()
        codes: list[int] = []

        def refetch() -> None:
            with httpx.Client(timeout=120) as client:
                while not stop.is_set():
                    codes.append(client.get(f"{server.url}/results/{rid}/labels.png").status_code)

        clients = [threading.Thread(target=refetch) for _ in range(8)]
        for client in clients:
            client.start()
        waits = []
        try:
            end = time.monotonic() + 8
            while time.monotonic() < end:
                start = time.perf_counter()
                assert httpx.get(f"{server.url}/healthz", timeout=60).status_code == 200
                waits.append(time.perf_counter() - start)
                time.sleep(0.05)
        finally:
            stop.set()
            for client in clients:
                client.join(120)
        assert 200 in codes and set(codes) <= {200, 503}, set(codes)
        median_ms = statistics.median(waits) * 1000
        assert median_ms < 250, f"/healthz median {median_ms:.0f} ms while large results were refetched"
        # Unknown ids are still 404, not 503, while renders are busy; the result itself is read back whole.
        assert httpx.get(f"{server.url}/results/{'y' * 22}/labels.png", timeout=30).status_code == 404
        again = httpx.get(f"{server.url}/results/{rid}/labels.png", timeout=60)
        assert again.status_code == 200
        assert Image.open(io.BytesIO(again.content)).size == (4000, 4000)
