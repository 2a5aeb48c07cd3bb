"""`/readyz?overload=ready`, the readiness a Kubernetes probe asks for: a server merely overloaded (queue full) stays
ready (200, `ready: true`, `status: overloaded`), so that a Service whose replicas are all saturated keeps its
endpoints and clients get 503 + Retry-After rather than connection errors; plain `/readyz` still turns 503 for a
load balancer that sheds by readiness; every other reason not to serve (warming up, a failing or hung device,
shutting down) is 503 for both.

Against real uvicorn servers on loopback ports, real PNG uploads and real onnxruntime sessions whose runs wait on a
gate (the device busy for exactly as long as the test needs).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from service.settings import Settings
from tests.service.gated_server import GatedServer
from tests.service.svc_helpers import held_server, png_bytes, scene

REPO = Path(__file__).resolve().parents[2]
QUEUE = 2
PROBE = "/readyz?overload=ready"
BODY = png_bytes(scene(96, 64))


def deployment_probe_path() -> str:
    """The path deploy/k8s/deployment.yaml's readinessProbe asks for."""
    (dep,) = [d for d in yaml.safe_load_all((REPO / "deploy" / "k8s" / "deployment.yaml").read_text())
              if d and d["kind"] == "Deployment"]
    (ctr,) = dep["spec"]["template"]["spec"]["containers"]
    return ctr["readinessProbe"]["httpGet"]["path"]


def both(client: httpx.Client, path: str = PROBE) -> tuple[httpx.Response, httpx.Response]:
    """Plain `/readyz`, and `path` (the probe's variant)."""
    return client.get("/readyz"), client.get(path)


def wait_status(client: httpx.Client, path: str, status: int, within_s: float = 10) -> httpx.Response:
    """GET `path` until it answers `status`; that answer."""
    end = time.monotonic() + within_s
    while (r := client.get(path)).status_code != status:
        assert time.monotonic() < end, (path, r.status_code, r.text)
        time.sleep(0.02)
    return r


@pytest.fixture
def gated(rule_model: Path) -> Iterator[GatedServer]:
    server = GatedServer(rule_model, max_batch_size=1, max_queue=QUEUE, concurrent_batches=1, max_wait_ms=1,
                         worker_threads=2)
    with server.running():
        yield server


def test_overloaded_is_503_plainly_and_ready_for_the_probe(gated: GatedServer) -> None:
    url = gated.live.url
    with httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(QUEUE + 1) as pool:
        assert [r.status_code for r in both(client)] == [200, 200]
        gated.gate.clear()  # the device is busy from the next run on
        try:
            post = lambda: httpx.post(f"{url}/segment", content=BODY, timeout=60)  # noqa: E731
            held: list[Future[httpx.Response]] = [pool.submit(post)]
            gated.wait_metric("segment_batches_in_flight", 1)
            held += [pool.submit(post) for _ in range(QUEUE)]
            gated.wait_metric("segment_queue_depth", QUEUE)  # one running, the queue full: overloaded

            plain, probe = both(client)
            assert plain.status_code == 503 and plain.json()["ready"] is False
            assert plain.json()["status"] == "overloaded"
            assert probe.status_code == 200, probe.text
            assert probe.json()["ready"] is True and probe.json()["status"] == "overloaded"  # nothing hidden
            assert probe.json()["queue_depth"] == probe.json()["max_queue"] == QUEUE
            # What Kubernetes asks: the pod stays among the Service's endpoints ...
            assert client.get(deployment_probe_path()).status_code == 200
            assert client.head(PROBE).status_code == 200
            # ... so a client reaching it gets the overload answer it can act on, not a refused connection.
            refused = client.post("/segment", content=BODY)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "overloaded"
            assert int(refused.headers["retry-after"]) >= 1
        finally:
            gated.gate.set()
        assert [f.result(60).status_code for f in held] == [200] * (QUEUE + 1)
    with httpx.Client(base_url=url, timeout=30) as client:
        for r in (wait_status(client, "/readyz", 200), client.get(PROBE)):
            assert r.status_code == 200 and r.json()["status"] == "ok"


def test_the_parameter_is_checked_as_other_routes_check_theirs(gated: GatedServer) -> None:
    with httpx.Client(base_url=gated.live.url, timeout=30) as client:
        for value in ("maybe", "READY", ""):
            r = client.get("/readyz", params={"overload": value})
            assert r.status_code == 422, (value, r.text)
            assert r.json()["error"]["code"] == "invalid_request" and "overload" in r.json()["error"]["message"]
        assert client.get("/readyz", params={"overload": "unready"}).json()["status"] == "ok"
        # An unknown parameter is ignored, as `/segment` and `/results` ignore theirs.
        assert client.get("/readyz", params={"other": "1"}).status_code == 200
        assert client.post("/segment", content=BODY, params={"other": "1"}).status_code == 200
        schema = client.get("/openapi.json").json()
        (param,) = schema["paths"]["/readyz"]["get"]["parameters"]
        assert param["name"] == "overload" and param["schema"]["enum"] == ["unready", "ready"]


def test_warming_up_is_503_for_both(rule_model: Path) -> None:
    server, release = held_server(Settings(model_path=rule_model, host="127.0.0.1", port=0, intra_op_threads=1,
                                           worker_threads=2))
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for r in both(client):
                assert r.status_code == 503 and r.json()["ready"] is False
                assert r.json()["status"] in ("loading", "warming_up"), r.text
            release.set()
            for r in (wait_status(client, "/readyz", 200), client.get(PROBE)):
                assert r.status_code == 200 and r.json()["status"] == "ok"
    finally:
        release.set()
        server.stop()


def test_a_hung_device_is_503_for_both(rule_model: Path) -> None:
    """Every inference slot holds a run older than the request timeout: no overload that passes, a device fault."""
    gated = GatedServer(rule_model, max_batch_size=1, max_queue=8, concurrent_batches=1, request_timeout_s=1)
    with gated.running(), httpx.Client(base_url=gated.live.url, timeout=30) as client:
        gated.gate.clear()
        timed_out = threading.Thread(target=client.post, args=("/segment",), kwargs={"content": BODY})
        timed_out.start()
        plain = wait_status(client, "/readyz", 503)
        probe = client.get(PROBE)
        assert plain.json()["status"] == "overloaded"  # as before: a load balancer sheds it
        assert probe.status_code == 503 and probe.json()["ready"] is False, probe.text
        assert probe.json()["status"] == "inference_stalled" and probe.json()["queue_depth"] == 0
        gated.gate.set()
        timed_out.join(30)
        assert wait_status(client, PROBE, 200).json()["status"] == "ok"


def test_a_failing_device_is_503_for_both(rule_model: Path) -> None:
    failing = threading.Event()

    def device(images: Sequence[np.ndarray]) -> None:
        if failing.is_set():
            raise RuntimeError("CUDA failure 700: an illegal memory access was encountered (emulated)")

    gated = GatedServer(rule_model, on_run=device, inference_failures_to_unready=1, inference_probe_s=0.1,
                        exit_when_unhealthy=False)
    with gated.running(), httpx.Client(base_url=gated.live.url, timeout=30) as client:
        failing.set()
        assert client.post("/segment", content=BODY).status_code == 503
        wait_status(client, "/readyz", 503)
        for r in both(client):
            assert r.status_code == 503 and r.json()["status"] == "inference_failing", r.text
        failing.clear()
        assert wait_status(client, PROBE, 200).json()["status"] == "ok"


def test_shutting_down_is_503_for_both(gated: GatedServer) -> None:
    """The lifespan's shutdown stage: the batcher drained and stopped (what `segment-serve` does on SIGTERM once
    uvicorn has finished the open requests)."""
    state = gated.live.state
    assert state.warmup_task is not None
    loop = state.warmup_task.get_loop()  # the server's event loop
    asyncio.run_coroutine_threadsafe(state.batcher.stop(drain_timeout_s=1.0), loop).result(30)
    with httpx.Client(base_url=gated.live.url, timeout=30) as client:
        for r in both(client):
            assert r.status_code == 503 and r.json()["status"] == "shutting_down", r.text
