"""HTTP surface: bad input → stable 4xx codes (server keeps serving), auth, CORS, request ids, metrics, docs."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.service.svc_helpers import LiveServer, png_bytes, scene


def error_code(response) -> str:
    body = response.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"])
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    return body["error"]["code"]


@pytest.fixture(scope="module")
def good_png() -> bytes:
    return png_bytes(scene(64, 48))


def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(scene(64, 48)).save(buf, format="JPEG")
    return buf.getvalue()


BAD_REQUESTS = [
    # (description, request kwargs, status, code)
    ("empty raw body", {"content": b"", "headers": {"Content-Type": "image/png"}}, 400, "empty_body"),
    ("text, not an image", {"content": b"hello, world", "headers": {"Content-Type": "image/png"}}, 415,
     "unsupported_media_type"),
    ("svg", {"content": b"<svg xmlns='http://www.w3.org/2000/svg'/>", "headers": {"Content-Type": "image/svg+xml"}},
     415, "unsupported_media_type"),
    ("truncated jpeg", {"content": jpeg_bytes()[:300], "headers": {"Content-Type": "image/jpeg"}}, 400,
     "corrupt_image"),
    ("truncated png", {"content": png_bytes(scene(64, 48))[:200], "headers": {"Content-Type": "image/png"}}, 400,
     "corrupt_image"),
    ("multipart without image", {"files": {"photo": ("a.png", b"x", "image/png")}}, 422, "invalid_request"),
    ("multipart empty image", {"files": {"image": ("a.png", b"", "image/png")}}, 400, "empty_body"),
    ("multipart with two images", {"files": [("image", ("a.png", png_bytes(scene(64, 48)), "image/png")),
                                             ("image", ("b.png", png_bytes(scene(48, 64)), "image/png"))]},
     422, "invalid_request"),
]
BAD_PARAMS = [
    ({"output": "mask"}, "output"),
    ({"alpha": "1.5"}, "alpha"),
    ({"alpha": "-0.1"}, "alpha"),
    ({"alpha": "half"}, "alpha"),
    ({"tolerance": "-1"}, "tolerance"),
    ({"min_area": "-5"}, "min_area"),
    ({"format": "gif"}, "format"),
]


@pytest.mark.parametrize("what,kwargs,status,code", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_bodies_get_clear_4xx(rule_server: LiveServer, good_png: bytes, what, kwargs, status, code) -> None:
    with rule_server.client() as client:
        r = client.post("/segment", **kwargs)
        assert (r.status_code, error_code(r)) == (status, code), r.text
        assert client.post("/segment", content=good_png).status_code == 200  # still serving


@pytest.mark.parametrize("params,field", BAD_PARAMS, ids=[str(p) for p, _ in BAD_PARAMS])
def test_bad_parameters_get_422_invalid_request(rule_server: LiveServer, good_png: bytes, params, field) -> None:
    with rule_server.client() as client:
        r = client.post("/segment", params=params, content=good_png)
        assert r.status_code == 422 and error_code(r) == "invalid_request"
        assert field in r.json()["error"]["message"]


def test_unknown_routes_and_methods(rule_server: LiveServer) -> None:
    with rule_server.client() as client:
        r = client.get("/nope")
        assert r.status_code == 404 and error_code(r) == "not_found"
        r = client.get("/segment")
        assert r.status_code == 405 and error_code(r) == "method_not_allowed"


def test_head_answers_as_get_without_a_body(rule_server: LiveServer, good_png: bytes) -> None:
    """HEAD wherever GET answers: GET's status and headers, no body, and the keep-alive connection stays in step
    (a body sent after HEAD would be read as the next response's start)."""
    with rule_server.client() as client:
        result_id = client.post("/segment", content=good_png).headers["x-result-id"]
        for path in ("/healthz", "/readyz", "/classes", "/outputs", "/metrics", "/", "/openapi.json",
                     f"/results/{result_id}/labels.png"):
            head, get = client.head(path), client.get(path)
            assert head.status_code == get.status_code == 200, path
            assert head.content == b"" and get.content, path
            assert head.headers["content-type"] == get.headers["content-type"], path
            if path != "/metrics":  # the metrics change between the two requests
                assert head.headers["content-length"] == get.headers["content-length"], path
            assert head.headers["x-request-id"] != get.headers["x-request-id"]
        r = client.head("/segment")
        assert r.status_code == 405 and r.headers["allow"] == "POST" and r.content == b""
        assert client.head("/nope").status_code == 404
        assert client.post("/segment", content=good_png).status_code == 200  # the connection still in step
        assert client.get("/healthz").json()["status"] == "ok"
        metrics = client.get("/metrics").text
    counted = [line for line in metrics.splitlines()  # the counters created at 0 left out
               if line.startswith("segment_requests_total{") and 'route="/classes"' in line
               and not line.endswith(" 0.0")]
    assert counted and all('status="200"' in line for line in counted)
    assert sum(float(line.rsplit(" ", 1)[1]) for line in counted) == 2  # the HEAD counted under its route


def test_upload_limits(serve, rule_model: Path) -> None:
    server = serve(rule_model, max_upload_bytes=20_000, max_pixels=100_000)
    big = png_bytes((np.random.default_rng(0).integers(0, 255, (120, 120, 3))).astype(np.uint8))
    assert len(big) > 20_000
    with server.client() as client:
        r = client.post("/segment", content=big, headers={"Content-Type": "image/png"})
        assert r.status_code == 413 and error_code(r) == "payload_too_large"

        def chunks():  # no Content-Length: chunked transfer, counted as it streams
            for i in range(0, len(big), 4096):
                yield big[i:i + 4096]
        r = client.post("/segment", content=chunks(), headers={"Content-Type": "image/png"})
        assert r.status_code == 413 and error_code(r) == "payload_too_large"
        r = client.post("/segment", files={"image": ("big.png", big, "image/png")})
        assert r.status_code == 413 and error_code(r) == "payload_too_large"
        # Small file, too many pixels (a flat 400x400 PNG compresses to almost nothing).
        flat = png_bytes(np.zeros((400, 400, 3), np.uint8))
        assert len(flat) < 20_000
        r = client.post("/segment", content=flat, headers={"Content-Type": "image/png"})
        assert r.status_code == 413 and error_code(r) == "image_too_large"
        assert client.post("/segment", content=png_bytes(scene(64, 48))).status_code == 200


def test_api_keys_and_cors(serve, rule_model: Path, good_png: bytes) -> None:
    server = serve(rule_model, api_keys="k-one,k-two", cors_origins="https://app.example")
    with server.client() as client:
        r = client.post("/segment", content=good_png)
        assert r.status_code == 401 and error_code(r) == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
        assert client.post("/segment", content=good_png, headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.post("/segment", content=good_png, headers={"Authorization": "Basic k-one"}).status_code == 401
        assert client.post("/segment", content=good_png, headers={"X-API-Key": "k-two"}).status_code == 200
        assert client.post("/segment", content=good_png,
                           headers={"Authorization": "Bearer k-one"}).status_code == 200
        assert client.get("/classes").status_code == 401
        assert client.get("/classes", headers={"X-API-Key": "k-one"}).status_code == 200
        for open_path in ("/healthz", "/readyz", "/metrics", "/outputs", "/docs", "/openapi.json"):
            assert client.get(open_path).status_code == 200, open_path
        preflight = client.options("/segment", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-api-key"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        r = client.post("/segment", content=good_png, headers={"Origin": "https://app.example", "X-API-Key": "k-one"})
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-result-id" in r.headers["access-control-expose-headers"].lower()
        other = client.post("/segment", content=good_png, headers={"Origin": "https://evil.example",
                                                                   "X-API-Key": "k-one"})
        assert "access-control-allow-origin" not in other.headers


def test_request_ids(rule_server: LiveServer, good_png: bytes) -> None:
    with rule_server.client() as client:
        assert client.get("/healthz", headers={"X-Request-ID": "trace-abc.1"}).headers["x-request-id"] == "trace-abc.1"
        for hostile in ("has spaces in it", "x" * 500, "semi;colon"):
            rid = client.get("/healthz", headers={"X-Request-ID": hostile}).headers["x-request-id"]
            assert rid != hostile and len(rid) == 32
        ids = {client.post("/segment", content=good_png).headers["x-request-id"] for _ in range(3)}
        assert len(ids) == 3
        assert client.get("/nope").headers["x-request-id"]


def test_classes_readyz_docs(rule_server: LiveServer) -> None:
    with rule_server.client() as client:
        classes = client.get("/classes").json()
        assert [c["name"] for c in classes["classes"]] == ["background", "red", "green", "blue", "stripes"]
        assert classes["classes"][1]["color"] == [128, 0, 0] and classes["precision"] == "fp32"
        model_file = rule_server.settings.model_path.read_bytes()
        assert classes["sha256"] == hashlib.sha256(model_file).hexdigest()
        ready = client.get("/readyz").json()
        assert ready["ready"] and ready["provider"] == "CPUExecutionProvider" and ready["arch"] == "rule"
        assert ready["model_sha256"] == classes["sha256"]
        assert client.get("/docs").status_code == 200
        spec = client.get("/openapi.json").json()
        body = spec["paths"]["/segment"]["post"]["requestBody"]["content"]
        assert "multipart/form-data" in body and "image/*" in body


def test_metrics_parse_and_carry_the_agreed_names(rule_server: LiveServer, good_png: bytes) -> None:
    with rule_server.client() as client:
        client.post("/segment", content=good_png)
        client.post("/segment", params={"output": "bogus"}, content=good_png)
        r = client.get("/metrics")
        ready = client.get("/readyz").json()
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    for name in ("segment_requests", "segment_request_duration_seconds", "segment_stage_duration_seconds",
                 "segment_batch_size", "segment_queue_depth", "segment_inflight_requests", "segment_rejected",
                 "segment_model_info"):
        assert name in families, name
    samples = [s for f in families.values() for s in f.samples]
    ok = [s for s in samples if s.name == "segment_requests_total" and s.labels == {"route": "/segment",
                                                                                     "status": "200"}]
    assert ok and ok[0].value >= 1
    assert any(s.name == "segment_requests_total" and s.labels["status"] == "422" for s in samples)
    stages = {s.labels["stage"] for s in samples if s.name == "segment_stage_duration_seconds_count"}
    assert stages == {"decode", "queue", "inference", "encode"}
    info = [s for s in samples if s.name == "segment_model_info"]
    sha = hashlib.sha256(rule_server.settings.model_path.read_bytes()).hexdigest()
    assert info[0].labels == {"provider": "CPUExecutionProvider", "precision": "fp32", "arch": "rule",
                              "model": "rule", "sha256": sha} and info[0].value == 1
    assert ready["model_sha256"] == sha
    # Unmatched paths share one label value: scanners cannot blow up the series count.
    assert not any(s.labels.get("route", "").startswith("/nope") for s in samples)
