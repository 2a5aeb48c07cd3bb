"""The GPU throughput targets in emulation: the real service (HTTP, decode, buckets, batch plan, two batches in
flight, filling while the device is busy, encode) in front of an emulated device with an H200's batch times × 10
(`testkit.accelerator`), so the device, not this host's CPUs, is the limit. At concurrency 32 it must keep the
device at least 80 % as busy as raw back-to-back batches of 16 would (measured 0.98), with p99 within twice p50;
at concurrency 8, where batch sizes vary, at least 80 % of raw batch 8 (measured 0.86-0.88, batches of 4; a
batch cut as soon as a worker frees gave 0.81 with batches of 3)."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np

from testkit.accelerator import H200_MS, emulated_server
from testkit.images import encode
from testkit.load import closed_loop
from testkit.photos import PHOTOS, photo

SCALE = 10.0


def _load(url: str, bodies: list[bytes], concurrency: int) -> tuple[float, np.ndarray, float]:
    """img/s, latencies and mean batch at `concurrency` closed-loop clients, after a ramp that fills the queue."""
    asyncio.run(closed_loop(url, bodies, concurrency, 1.5, 10**6, params={"output": "labels"}, per_connection=True))
    samples, wall = asyncio.run(closed_loop(url, bodies, concurrency, 6.0, 10**6, params={"output": "labels"},
                                            per_connection=True))
    assert samples and all(s.status == 200 for s in samples), {s.status for s in samples}
    latencies = np.array([s.latency_s for s in samples])
    return len(samples) / wall, latencies, float(np.mean([s.batch_size for s in samples]))


def test_the_service_keeps_an_emulated_device_busy_at_concurrency_8_and_32() -> None:
    bodies = [encode(photo(name, size=(640, 480))) for name in PHOTOS]
    raw_best = 16 / (H200_MS[16] * SCALE / 1000)
    raw_batch8 = 8 / (H200_MS[8] * SCALE / 1000)
    with emulated_server(SCALE) as server:
        server.wait_ready(timeout=120)
        assert httpx.get(f"{server.url}/readyz", timeout=30).json()["fill_while_busy"] is True
        throughput, latencies, mean_batch = _load(server.url, bodies, 32)
        p50, p99 = np.percentile(latencies, 50), np.percentile(latencies, 99)
        print(f"c=32: {throughput:.1f} img/s against raw {raw_best:.1f} ({throughput / raw_best:.2f}), p50 "
              f"{p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, mean batch {mean_batch:.1f}")
        assert throughput >= 0.8 * raw_best, (throughput, raw_best, mean_batch)
        assert p99 <= 2 * p50, (p50, p99)
        assert mean_batch >= 8, mean_batch
        throughput, _, mean_batch = _load(server.url, bodies, 8)
        print(f"c=8: {throughput:.1f} img/s against raw batch 8 {raw_batch8:.1f} ({throughput / raw_batch8:.2f}), "
              f"mean batch {mean_batch:.1f}")
        assert throughput >= 0.8 * raw_batch8, (throughput, raw_batch8, mean_batch)
        assert mean_batch >= 3.5, mean_batch  # 8 clients fill two batches of 4, not a 3 and a 2-4


def test_the_emulation_letterboxes_at_a_gpu_size_when_asked(tmp_path) -> None:
    """`--input-size 513` serves the embedded model's contract at DeepLab's usual size: the copy's contract says
    513 and the fully convolutional model answers a 513×513 map, so the host pays the GPU host's decode and PNG."""
    from service.core.engine import load_engine
    from service.settings import Settings, default_model_path
    from testkit.accelerator import with_input_size

    copy = with_input_size(default_model_path(), 513, tmp_path)
    engine = load_engine(Settings(model_path=copy, fixed_shapes="off").engine_options())
    assert engine.input_size == 513
    labels = engine.run(np.zeros((2, 513, 513, 3), dtype=np.uint8))
    assert labels.shape == (2, 513, 513)
    original = load_engine(Settings(fixed_shapes="off").engine_options())
    assert original.input_size != 513 and original.metadata.classes == engine.metadata.classes
