"""Process lifecycle through the real `segment-serve` entry point: startup refusal, readiness, SIGTERM drain;
and the event loop staying responsive during long inference."""

from __future__ import annotations

import asyncio
import io
import re
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from onnx import TensorProto
from PIL import Image

from testkit.server import ServerProcess, held_runs_environ
from tests.service.svc_helpers import make_rule_model, png_bytes, scene

SEGMENT_SERVE = Path(sys.executable).with_name("segment-serve")


def serve_process(model: Path, **env: str) -> ServerProcess:
    """The installed `segment-serve` entry point as a child process, logging at info (its startup lines)."""
    return ServerProcess(model, command=[str(SEGMENT_SERVE)], log_level="info", **env)


@pytest.fixture
def processes() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for p in started:
        p.terminate()


def test_readme_flow_segment_serve_answers_readyz(processes, tiny_onnx_model: Path) -> None:
    """`SEGMENT_MODEL_PATH=... segment-serve`, then /readyz reports the model and provider."""
    server = serve_process(tiny_onnx_model)
    processes.append(server)
    server.wait_ready()
    ready = httpx.get(f"{server.url}/readyz").json()
    assert ready["provider"] == "CPUExecutionProvider" and ready["arch"] == "deeplabv3_thin"
    assert "CPUExecutionProvider" in server.log  # the provider in use is logged at startup


@pytest.mark.parametrize("kind,expect", [("bare", "metadata"), ("float", "must be uint8"),
                                         ("static-batch", "fixed batch size 1")])
def test_startup_refuses_a_model_off_contract(processes, tmp_path: Path, kind: str, expect: str) -> None:
    model = {"bare": lambda: make_rule_model(tmp_path / "bare.onnx", metadata=False),
             "float": lambda: make_rule_model(tmp_path / "float.onnx", input_dtype=TensorProto.FLOAT),
             # It served, but every batch of more than one failed and ran again image by image.
             "static-batch": lambda: make_rule_model(tmp_path / "static.onnx", batch=1)}[kind]()
    server = serve_process(model)
    processes.append(server)
    assert server.proc.wait(60) == 3
    server._reader.join(5)
    assert "cannot start" in server.log and expect in server.log, server.log


def test_sigterm_drains_in_flight_requests(processes, rule_model: Path, tmp_path: Path) -> None:
    # The model's runs wait while the hold file exists: all six requests are in flight at the signal, however fast
    # the machine (a slow model let the first batch finish before the sixth arrived, now and then).
    hold = tmp_path / "hold"
    server = serve_process(rule_model, SEGMENT_MAX_BATCH_SIZE="2", SEGMENT_MAX_WAIT_MS="5", **held_runs_environ(hold))
    processes.append(server)
    server.wait_ready()
    hold.touch()
    images = [scene(100 + 10 * i, 70) for i in range(6)]

    def post(image) -> httpx.Response:
        return httpx.post(f"{server.url}/segment", content=png_bytes(image), timeout=60)

    with ThreadPoolExecutor(len(images)) as pool, httpx.Client(base_url=server.url) as client:
        futures = [pool.submit(post, im) for im in images]
        deadline = time.monotonic() + 20
        while "segment_inflight_requests 6.0" not in client.get("/metrics").text:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert not any(f.done() for f in futures)  # held: drained after the signal, not answered before it
        hold.unlink()
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200] * len(images)
    for image, r in zip(images, responses, strict=True):
        assert Image.open(io.BytesIO(r.content)).size == (image.shape[1], 70)
    # uvicorn re-raises the captured SIGTERM once shutdown is complete, so "killed by SIGTERM" is a clean exit.
    assert server.proc.wait(30) in (0, -signal.SIGTERM)
    server._reader.join(5)
    assert "drained and stopped" in server.log
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/healthz")


def test_healthz_answers_in_milliseconds_during_long_inference(serve, very_slow_model: Path) -> None:
    """Inference, decoding and encoding run off the event loop: liveness answers while a long batch runs.

    Were inference on the loop, each /healthz would wait for the whole batch. Absolute numbers depend on how
    busy the machine is (2 shared cores here), so the bound is relative to the batch's own inference time.
    """
    # One batch of 8 images at 1280x1280: about a second of inference on a quiet 2-core machine, longer on a
    # busy one, so "long" holds wherever the suite runs.
    server = serve(very_slow_model, max_batch_size=8, max_wait_ms=50)
    big = png_bytes(scene(1600, 1200))

    async def run() -> tuple[list[float], list[httpx.Response]]:
        latencies: list[float] = []
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            posts = asyncio.gather(*(client.post("/segment", content=big) for _ in range(8)))
            await asyncio.sleep(0.05)
            while not posts.done():
                t0 = time.perf_counter()
                r = await client.get("/healthz")
                assert r.status_code == 200
                latencies.append(time.perf_counter() - t0)
                await asyncio.sleep(0.005)
            return latencies, await posts

    latencies, responses = asyncio.run(run())
    assert all(r.status_code == 200 for r in responses)
    inference_s = max(float(re.search(r"inference;dur=([\d.]+)", r.headers["server-timing"]).group(1))
                      for r in responses) / 1000
    latencies.sort()
    assert inference_s > 0.3 and len(latencies) >= 5, (inference_s, latencies)
    assert latencies[-1] < inference_s / 3, (inference_s, latencies)
    assert latencies[len(latencies) // 2] < 0.1, latencies


def test_startup_objects_are_frozen_out_of_the_collector(serve, rule_model: Path) -> None:
    """After warm-up the process's long-lived objects are frozen (gc.freeze), so a full collection no longer
    stalls requests for tens of milliseconds."""
    import gc

    gc.unfreeze()
    serve(rule_model)  # waits until /readyz is 200, i.e. after the warm-up
    assert gc.get_freeze_count() > 10_000
