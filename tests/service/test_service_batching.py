"""Dynamic batching under real concurrency: batches form, overload is refused cleanly, failures stay contained."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from service.core.engine import load_engine
from service.settings import Settings
from testkit.metrics import metric_sum
from testkit.metrics import samples as metric_samples
from tests.service.gated_server import GatedServer
from tests.service.svc_helpers import LiveServer, held_server, png_bytes, scene


async def _burst(url: str, bodies: list[bytes], params: dict, timeout: float = 60) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        return await asyncio.gather(*(client.post("/segment", content=b, params=params) for b in bodies))


def test_concurrent_requests_form_batches(serve, rule_model: Path) -> None:
    server = serve(rule_model, max_batch_size=8, max_wait_ms=30)
    images = [scene(120 + 7 * i, 90 + 3 * i) for i in range(16)]
    responses = asyncio.run(_burst(server.url, [png_bytes(im) for im in images], {"output": "labels"}))
    assert [r.status_code for r in responses] == [200] * 16
    # Each answer belongs to its own request (sizes differ), even though they shared batches.
    for image, r in zip(images, responses, strict=True):
        assert Image.open(io.BytesIO(r.content)).size == (image.shape[1], image.shape[0])
    assert max(int(r.headers["x-batch-size"]) for r in responses) > 1
    with server.client() as client:
        text = client.get("/metrics").text
    count = metric_samples(text, "segment_batch_size_count")[()]
    total = metric_samples(text, "segment_batch_size_sum")[()]
    singles = metric_samples(text, "segment_batch_size_bucket")[(("le", "1.0"),)]
    assert total == 16  # every image counted once; the warm-up does not go through the batcher
    assert count < 16 and singles < count, (count, singles)


def test_batching_off_runs_one_by_one(serve, rule_model: Path) -> None:
    server = serve(rule_model, max_batch_size=1)
    responses = asyncio.run(_burst(server.url, [png_bytes(scene())] * 6, {"output": "stats"}))
    assert all(r.status_code == 200 and r.headers["x-batch-size"] == "1" for r in responses)


def test_overload_gives_503_and_loses_no_accepted_request(rule_model: Path) -> None:
    # The model's runs wait on a gate: the queue stays at its limit, and /readyz overloaded, until the test opens it
    # (a slow model let the queue drain between two polls of /readyz on a loaded machine). The requests go in
    # steps, each once the one before is where it stays: one running, two queued, then seven that find it full.
    gated = GatedServer(rule_model, max_batch_size=1, max_queue=2, max_wait_ms=0, concurrent_batches=1)
    images = [scene(100 + i, 80) for i in range(10)]

    async def run() -> tuple[list[httpx.Response], httpx.Response]:
        gated.gate.clear()
        limits = httpx.Limits(max_connections=len(images) + 4)
        async with httpx.AsyncClient(base_url=gated.live.url, timeout=60, limits=limits) as client:
            def post(image: np.ndarray) -> asyncio.Future[httpx.Response]:
                return asyncio.ensure_future(client.post("/segment", content=png_bytes(image),
                                                         params={"output": "labels"}))

            tasks = [post(images[0])]
            await asyncio.to_thread(gated.wait_metric, "segment_batches_in_flight", 1)  # held at the gate
            for depth, image in enumerate(images[1:3], start=1):
                tasks.append(post(image))
                await asyncio.to_thread(gated.wait_metric, "segment_queue_depth", depth)
            full = await client.get("/readyz")
            refused = [await post(image) for image in images[3:]]  # answered while the gate is still shut
            gated.gate.set()
            return [*(await asyncio.gather(*tasks)), *refused], full

    with gated.running():
        responses, full = asyncio.run(run())
        refusals = gated.metric("segment_rejected_total", reason="overloaded")
        with gated.live.client() as client:
            assert client.get("/readyz").status_code == 200  # and comes back
    assert [r.status_code for r in responses] == [200] * 3 + [503] * 7, [r.text for r in responses]
    assert refusals == 7
    for image, r in zip(images, responses, strict=True):
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "overloaded"
            assert int(r.headers["retry-after"]) >= 1
            assert r.headers["x-request-id"]
        else:
            assert Image.open(io.BytesIO(r.content)).size == (image.shape[1], 80)
    assert full.status_code == 503 and full.json()["status"] == "overloaded", full.text  # readiness drops at the limit


def test_timeout_gives_504_and_the_worker_survives(serve, very_slow_model: Path) -> None:
    # 0.5 s of inference against a 0.05 s timeout: a 10x margin so a starved event loop on a loaded CI
    # machine cannot deliver a finished result before the timeout fires.
    server = serve(very_slow_model, max_batch_size=1, request_timeout_s=0.05)
    bodies = [png_bytes(scene())] * 3
    responses = asyncio.run(_burst(server.url, bodies, {}))
    assert [r.status_code for r in responses] == [504] * 3
    assert {r.json()["error"]["code"] for r in responses} == {"timeout"}
    # Timed-out items were skipped, not run: the worker is idle again and health/readiness answer.
    time.sleep(0.5)
    with server.client() as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").json()["queue_depth"] == 0


def test_disconnected_client_does_not_poison_the_batch(serve, slow_model: Path) -> None:
    server = serve(slow_model, max_batch_size=4, max_wait_ms=50)
    image = scene(90, 60)

    async def run() -> tuple[list[object], list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=0.05) as impatient, \
                httpx.AsyncClient(base_url=server.url, timeout=30) as patient:
            gone = [impatient.post("/segment", content=png_bytes(image)) for _ in range(2)]
            kept = [patient.post("/segment", content=png_bytes(image)) for _ in range(2)]
            results = await asyncio.gather(*gone, *kept, return_exceptions=True)
        return results[:2], results[2:]

    gone, kept = asyncio.run(run())
    assert all(isinstance(g, httpx.TimeoutException) for g in gone)
    for r in kept:
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (90, 60)
    with server.client() as client:
        r = client.post("/segment", content=png_bytes(image))
        assert r.status_code == 200


def test_images_of_clients_that_hung_up_are_not_run(rule_model: Path) -> None:
    """Clients that give up while their images wait for the device: the waits are cancelled and the batcher skips
    the images, so the device runs only what was already running (clients that time out and retry under
    overload would otherwise have every abandoned copy run)."""
    settings = Settings(model_path=rule_model, host="127.0.0.1", port=0, intra_op_threads=1, max_batch_size=1,
                        concurrent_batches=1)
    engine = load_engine(settings.engine_options())
    run_images, runs = engine.run_images, []

    def slow(images: list[np.ndarray]) -> np.ndarray:  # a 0.3 s model run
        time.sleep(0.3)
        runs.append(len(images))
        return run_images(images)

    engine.run_images = slow  # type: ignore[method-assign]
    server = LiveServer(settings, engine=engine).start()
    try:
        runs.clear()  # warm-up's

        async def impatient_burst() -> list[object]:
            async with httpx.AsyncClient(base_url=server.url, timeout=0.15) as impatient:
                return await asyncio.gather(*(impatient.post("/segment", content=png_bytes(scene()))
                                              for _ in range(8)), return_exceptions=True)

        gone = asyncio.run(impatient_burst())
        assert all(isinstance(g, httpx.TimeoutException) for g in gone), gone
        time.sleep(1.2)  # four more runs' time, had the queued images been run
        assert len(runs) <= 2, runs  # the one running when they left (and one taken just before)
        with server.client() as client:
            deadline = time.monotonic() + 5
            while metric_sum(client.get("/metrics").text, "segment_rejected_total", reason="client_closed") < 6:
                assert time.monotonic() < deadline, "the abandoned requests were not counted as clients gone"
                time.sleep(0.05)
            assert client.get("/readyz").json()["queue_depth"] == 0
            assert client.post("/segment", content=png_bytes(scene())).status_code == 200  # still serving
    finally:
        server.stop()


def test_a_model_failing_every_run_is_a_503_json_and_the_worker_keeps_running(serve, broken_model: Path) -> None:
    """A graph that fails inside onnxruntime for real inputs, the known-good image included: readiness says so,
    requests get a clean, retryable 503 (the server cannot serve; the request is not at fault)."""
    server = serve(broken_model, wait_ready=False)
    with server.client() as client:
        deadline = time.monotonic() + 10
        while (body := client.get("/readyz").json())["status"] != "warmup_failed":
            assert time.monotonic() < deadline, body
            time.sleep(0.02)
        assert "error" in body
        for _ in range(2):  # twice: the worker is still there after the first failure
            r = client.post("/segment", content=png_bytes(scene()), headers={"X-Request-ID": "req-42"})
            assert r.status_code == 503 and r.headers["retry-after"]
            err = r.json()["error"]
            assert err["code"] == "inference_unavailable" and err["request_id"] == "req-42"
            assert r.headers["x-request-id"] == "req-42"
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503


def test_readiness_waits_for_warm_up(rule_model: Path) -> None:
    """/healthz answers at once; /readyz is 503 `warming_up` until the first model run has finished. The model's
    runs wait for an event, so the warm-up cannot win a race against the first look however loaded the machine."""
    server, release = held_server(Settings(model_path=rule_model, host="127.0.0.1", port=0, max_batch_size=1))
    try:
        with server.client() as client:
            assert client.get("/healthz").status_code == 200
            first = client.get("/readyz")
            release.set()
            deadline = time.monotonic() + 20
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.02)
    finally:
        release.set()
        server.stop()
    assert first.status_code == 503 and first.json()["status"] == "warming_up", first.text
    assert np.isfinite(first.json()["input_size"])


def test_a_lone_request_pays_no_batching_delay(serve, rule_model: Path) -> None:
    """With nothing else on its way, the batch is cut at once rather than after max_wait_ms."""
    server = serve(rule_model, max_batch_size=8, max_wait_ms=1000)
    with server.client() as client:
        for _ in range(3):
            r = client.post("/segment", params={"output": "stats"}, content=png_bytes(scene()))
            assert r.status_code == 200
            assert r.json()["timing_ms"]["queue"] < 300, r.json()["timing_ms"]


def test_inference_busy_seconds_add_up_the_batches_run(serve, slow_model: Path) -> None:
    """segment_inference_busy_seconds_total is the engine's time per batch, summed: here one batch runs at a
    time, so it matches the batches' own inference times (Server-Timing, shared by a batch's requests) and never
    exceeds the wall time."""
    server = serve(slow_model, max_batch_size=2, max_wait_ms=50, concurrent_batches=1, intra_op_threads=1)
    with server.client() as client:
        before = metric_samples(client.get("/metrics").text, "segment_inference_busy_seconds_total")[()]
    start = time.perf_counter()
    responses = asyncio.run(_burst(server.url, [png_bytes(scene(90 + i, 70)) for i in range(5)],
                                   {"output": "stats"}, timeout=120))
    wall = time.perf_counter() - start
    assert [r.status_code for r in responses] == [200] * 5
    with server.client() as client:
        busy = metric_samples(client.get("/metrics").text, "segment_inference_busy_seconds_total")[()] - before
    batches = {r.headers["server-timing"].split("inference;dur=")[1].split(",")[0] for r in responses}
    per_batch = sum(float(ms) for ms in batches) / 1000
    assert len(batches) >= 3  # 5 images in batches of at most 2
    assert 0.8 * per_batch <= busy <= per_batch + 0.01, (busy, per_batch)
    assert busy <= wall
