"""`/metrics` rendered off the event loop, and the refusals made by middleware (401, 413 from Content-Length)
counted in `segment_rejected_total` under the route they were for."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from testkit.metrics import metric_sum, samples
from tests.service.svc_helpers import png_bytes, scene

LIMIT = 20_000


def test_a_slow_scrape_does_not_hold_up_healthz(serve, rule_model: Path) -> None:
    """A render that reads many files (several workers) takes as long as it takes; the loop answers meanwhile."""
    server = serve(rule_model)
    metrics = server.state.metrics
    render = metrics.render
    rendering = threading.Event()

    def slow_render() -> bytes:  # what reading thousands of files costs (1.2 s measured), at its real place
        rendering.set()
        time.sleep(1.5)
        return render()

    metrics.render = slow_render
    scraped: list[httpx.Response] = []
    scrape = threading.Thread(target=lambda: scraped.append(httpx.get(f"{server.url}/metrics", timeout=30)))
    scrape.start()
    assert rendering.wait(10)
    with server.client(timeout=10) as client:
        for _ in range(3):
            t0 = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            assert time.perf_counter() - t0 < 0.5
        assert scrape.is_alive()  # the probes were answered while the render ran
    scrape.join(30)
    assert scraped[0].status_code == 200
    assert "segment_requests_total" in scraped[0].text


def test_refusals_by_middleware_are_counted_under_their_route(serve, rule_model: Path) -> None:
    server = serve(rule_model, api_keys="k-one", max_upload_bytes=LIMIT)
    small = png_bytes(scene(64, 48))
    big = b"\0" * (LIMIT + 1)
    with server.client() as client:
        assert client.post("/segment", content=small).status_code == 401
        over = client.post("/segment", content=big, headers={"X-API-Key": "k-one", "Content-Type": "image/png"})
        assert over.status_code == 413 and over.json()["error"]["code"] == "payload_too_large"
        assert client.post("/nowhere", content=small).status_code == 401  # an unknown path, refused just the same
        assert client.post("/segment", content=small, headers={"X-API-Key": "k-one"}).status_code == 200
        text = client.get("/metrics").text
    rejected = samples(text, "segment_rejected_total")
    assert rejected[(("reason", "unauthorized"),)] == 2
    assert rejected[(("reason", "payload_too_large"),)] == 1
    requests = samples(text, "segment_requests_total")
    assert requests[(("route", "/segment"), ("status", "401"))] == 1
    assert requests[(("route", "/segment"), ("status", "413"))] == 1
    assert requests[(("route", "/segment"), ("status", "200"))] == 1
    assert requests[(("route", "unmatched"), ("status", "401"))] == 1  # not the path itself: bounded labels
    assert metric_sum(text, "segment_request_duration_seconds_count", route="/segment") == 3


def test_a_method_the_route_does_not_take_is_labelled_with_its_route(serve, rule_model: Path) -> None:
    server = serve(rule_model, api_keys="k-one")
    with server.client() as client:
        assert client.get("/segment").status_code == 401  # refused before routing would have said 405
        assert client.get("/segment", headers={"X-API-Key": "k-one"}).status_code == 405
        text = client.get("/metrics").text
    requests = samples(text, "segment_requests_total")
    assert requests[(("route", "/segment"), ("status", "401"))] == 1
    assert requests[(("route", "/segment"), ("status", "405"))] == 1
