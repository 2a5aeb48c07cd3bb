"""`GET /openapi.json` says what the server really answers: the document is valid OpenAPI (with and without API keys),
and real answers of real servers (every output kind, raw and multipart; re-fetches; the errors) have a status, media
type, body and headers the document declares for their route. Generated clients are built from the document: a
body it does not describe (an error envelope declared as `{"detail": [...]}`, PNG bytes under application/json)
crashes them. Real uvicorn servers on loopback ports, real images, real onnxruntime sessions on the rule model."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from PIL import Image
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from service.settings import Settings
from tests.service.gated_server import GatedServer
from tests.service.svc_helpers import LiveServer, make_rule_model, png_bytes, scene

KEY = "k-contract"
PNG = png_bytes(scene(96, 64))
DOC_URI = "urn:segment-openapi"


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(PNG)).convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()


def pointer(*parts: str) -> str:
    """A JSON pointer (RFC 6901) into the document."""
    return "/".join(part.replace("~", "~0").replace("/", "~1") for part in ("", *parts))


class Contract:
    """The document a server serves, and the check of one real answer against it."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self.registry = Registry().with_resource(DOC_URI, resource)

    def check(self, answer: httpx.Response, path: str, method: str = "get") -> dict[str, Any]:
        """Assert `answer` is declared for `method path`: its status, media type, JSON body and headers; returns
        the declared response."""
        where = f"{method.upper()} {answer.request.url} -> {answer.status_code} {answer.text[:160]!r}"
        responses = self.document["paths"][path][method]["responses"]
        status = str(answer.status_code)
        assert status in responses, f"{where}: status not declared (declared {sorted(responses)})"
        declared = responses[status]
        media = answer.headers.get("content-type", "").split(";")[0].strip()
        content = declared.get("content", {})
        assert media in content, f"{where}: {media} not among the declared {list(content)}"
        if media.endswith("json"):
            ref = DOC_URI + "#" + pointer("paths", path, method, "responses", status, "content", media, "schema")
            errors = [e.message for e in Draft202012Validator({"$ref": ref}, registry=self.registry)
                      .iter_errors(answer.json())]
            assert not errors, f"{where}: body does not match its schema: {errors[:3]}"
        else:
            # Raw bytes: OpenAPI 3.1 gives such a media type no schema (a `type: string` one made validators check
            # the bytes as text).
            assert "schema" not in content[media], where
        for name, spec in declared.get("headers", {}).items():
            value = answer.headers.get(name)
            if spec.get("required"):
                assert value is not None, f"{where}: declared header {name} missing"
            if value is not None and spec["schema"].get("type") == "integer":
                assert value.isdigit(), f"{where}: {name}: {value!r} is not an integer"
        return declared


def contract_of(server: LiveServer) -> Contract:
    document = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    validate_openapi(document)  # openapi-spec-validator: the document itself is valid OpenAPI 3.1
    return Contract(document)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server with API keys and a small upload limit (a 413 needs no large body)."""
    model = make_rule_model(tmp_path_factory.mktemp("keyed") / "rule.onnx")
    server = LiveServer(Settings(model_path=model, host="127.0.0.1", port=0, max_wait_ms=2, api_keys=KEY,
                                 max_upload_bytes=len(PNG) + 1024)).start()  # /readyz is public: no key needed
    yield server
    server.stop()


def test_the_document_is_valid_and_says_the_truth(rule_server: LiveServer, keyed: LiveServer) -> None:
    for server in (rule_server, keyed):
        document = contract_of(server).document
        text = json.dumps(document)
        assert "HTTPValidationError" not in text and '"detail"' not in text
        schemas = document["components"]["schemas"]
        assert schemas["ErrorDetail"]["required"] == ["code", "message", "request_id"]
        segment = document["paths"]["/segment"]["post"]
        for status, declared in segment["responses"].items():
            if status != "200":
                assert declared["content"] == {"application/json": {"schema": {
                    "$ref": "#/components/schemas/ErrorBody"}}}, status
        for status in ("400", "408", "413", "415", "422", "500", "501", "503", "504"):
            assert status in segment["responses"]
        assert "Retry-After" in segment["responses"]["503"]["headers"]
        ok = segment["responses"]["200"]["content"]
        assert list(ok)[:2] == ["image/png", "image/jpeg"]  # not an empty application/json first
        assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/Stats"}
        assert ok["application/geo+json"]["schema"] == {"$ref": "#/components/schemas/FeatureCollection"}
        uploads = segment["requestBody"]["content"]
        assert set(uploads) == {"multipart/form-data", "application/octet-stream", "image/*"}
        for operations in document["paths"].values():  # ranges, never `default`: a generated client parses an
            for operation in operations.values():      # answer it cannot model (an image) with `default`'s schema
                assert "default" not in operation["responses"] and {"4XX", "5XX"} <= set(operation["responses"])
        result = document["paths"]["/results/{result_id}/{name}"]["get"]["responses"]
        assert list(result["200"]["content"]) == ["image/png"]
    unauthorized = document["paths"]["/segment"]["post"]["responses"]["401"]  # the keyed server's
    assert set(unauthorized["headers"]) == {"WWW-Authenticate", "X-Request-ID"}


def test_answers_are_declared(rule_server: LiveServer) -> None:
    contract = contract_of(rule_server)
    jpeg = jpeg_bytes()
    outputs = httpx.get(f"{rule_server.url}/outputs", timeout=10).json()["outputs"]
    result_ids = []
    with rule_server.client() as client:
        for kind in outputs:
            for encoding in [None, *kind["encodings"]]:
                params = {"output": kind["name"], **({"format": encoding["format"]} if encoding else {})}
                for answer in (client.post("/segment", params=params, content=jpeg,
                                           headers={"Content-Type": "image/jpeg"}),
                               client.post("/segment", params=params, content=PNG,
                                           headers={"Content-Type": "application/octet-stream"}),
                               client.post("/segment", params=params, files={"image": ("a.png", PNG, "image/png")})):
                    assert answer.status_code == 200, answer.text
                    contract.check(answer, "/segment", "post")
                    if encoding:  # the format asked for, as /outputs names it
                        assert answer.headers["content-type"].startswith(encoding["media_type"])
                    if "x-result-id" in answer.headers:
                        result_ids.append(answer.headers["x-result-id"])
        assert result_ids
        for name in ("labels.png", "color.png", "overlay.png"):
            contract.check(client.get(f"/results/{result_ids[0]}/{name}", params={"alpha": 0.3}),
                           "/results/{result_id}/{name}")
        refusals = {
            400: [client.post("/segment", content=b"--x\r\n", headers={"Content-Type": "multipart/form-data"}),
                  client.post("/segment", content=b"", headers={"Content-Type": "image/png"})],
            415: [client.post("/segment", content=b"plain words, no image", headers={"Content-Type": "text/plain"})],
            422: [client.post("/segment", params={"output": "overlay", "alpha": 2}, content=PNG),
                  client.post("/segment", params={"output": "stats", "format": "png"}, content=PNG),
                  client.post("/segment", files={"picture": ("a.png", PNG, "image/png")})],
        }
        for status, answers in refusals.items():
            for answer in answers:
                assert answer.status_code == status, answer.text
                contract.check(answer, "/segment", "post")
                assert answer.json()["error"]["request_id"] == answer.headers["x-request-id"]
        for answer, status in ((client.get("/results/unknown/labels.png"), 404),
                               (client.get(f"/results/{result_ids[0]}/overlay.png", params={"alpha": -1}), 422),
                               (client.get(f"/results/{result_ids[0]}/stats.json"), 422)):
            assert answer.status_code == status, answer.text
            contract.check(answer, "/results/{result_id}/{name}")
        for path, params in (("/healthz", {}), ("/readyz", {}), ("/readyz", {"overload": "ready"}),
                             ("/readyz", {"overload": "sometimes"}), ("/classes", {}), ("/outputs", {})):
            contract.check(client.get(path, params=params), path)


def test_format_takes_the_names_outputs_lists(rule_server: LiveServer) -> None:
    outputs = httpx.get(f"{rule_server.url}/outputs", timeout=10).json()["outputs"]
    formats = {e["format"] for kind in outputs for e in kind["encodings"]}
    with rule_server.client() as client:
        for kind in outputs:
            own = [e["format"] for e in kind["encodings"]]
            for fmt in formats - set(own):
                answer = client.post("/segment", params={"output": kind["name"], "format": fmt}, content=PNG)
                assert answer.status_code == 422, (kind["name"], fmt, answer.text)
                error = answer.json()["error"]
                assert error["code"] == "invalid_request"
                assert all(name in error["message"] for name in own), error["message"]


def test_keyed_refusals_are_declared(keyed: LiveServer) -> None:
    contract = contract_of(keyed)
    with keyed.client() as client:
        for answer in (client.post("/segment", content=PNG), client.get("/classes"),
                       client.get("/results/unknown/labels.png")):
            assert answer.status_code == 401
            path = answer.request.url.path
            contract.check(answer, "/results/{result_id}/{name}" if path.startswith("/results/") else path,
                           answer.request.method.lower())
        too_large = client.post("/segment", content=PNG + b"\0" * 2048, headers={"X-API-Key": KEY})
        assert too_large.status_code == 413, too_large.text
        contract.check(too_large, "/segment", "post")
        answer = client.post("/segment", params={"output": "stats"}, content=PNG, headers={"X-API-Key": KEY})
        assert answer.status_code == 200
        contract.check(answer, "/segment", "post")


def test_overloaded_answers_are_declared(rule_model: Path) -> None:
    gated = GatedServer(rule_model, max_batch_size=1, max_queue=1, concurrent_batches=1, max_wait_ms=1,
                        worker_threads=2)
    with gated.running(), ThreadPoolExecutor(2) as pool:
        url = gated.live.url
        contract = contract_of(gated.live)
        post: Callable[[], httpx.Response] = lambda: httpx.post(f"{url}/segment", content=PNG, timeout=60)  # noqa: E731
        gated.gate.clear()  # the device is busy from the next run on
        try:
            held = [pool.submit(post)]
            gated.wait_metric("segment_batches_in_flight", 1)
            held.append(pool.submit(post))
            gated.wait_metric("segment_queue_depth", 1)  # one running, the queue full: overloaded
            refused = httpx.post(f"{url}/segment", content=PNG, timeout=30)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "overloaded"
            contract.check(refused, "/segment", "post")
            unready = httpx.get(f"{url}/readyz", timeout=30)
            assert unready.status_code == 503
            contract.check(unready, "/readyz")
        finally:
            gated.gate.set()
        assert [f.result(60).status_code for f in held] == [200, 200]


def test_validation_errors_are_declared_as_the_envelope() -> None:
    """A route with a parameter and no 422 of its own: FastAPI declares `HTTPValidationError`, which the server
    never sends; the finished document names the envelope instead."""
    from fastapi import FastAPI

    from service.openapi_contract import describe_contract

    app = FastAPI()

    @app.get("/probe")
    async def probe(n: int = 1) -> dict[str, int]:
        return {"n": n}

    describe_contract(app)
    document = app.openapi()
    validate_openapi(document)
    assert "HTTPValidationError" not in json.dumps(document)
    declared = document["paths"]["/probe"]["get"]["responses"]["422"]
    assert declared["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    assert declared["headers"]["X-Request-ID"]["required"] is True
