"""With `SEGMENT_API_KEYS` set, the OpenAPI document declares both ways to send a key and, operation by operation,
requires one exactly where the server answers 401 without it: otherwise Swagger UI (`/docs`) offers no Authorize
button and every "Try it out" of `/segment` is a 401. Without keys the document declares none. A real uvicorn."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.service.svc_helpers import LiveServer

KEY = "k-docs"


def concrete(path: str) -> str:
    """A path template with every parameter filled in (any value: the key is checked before routing)."""
    return re.sub(r"\{[^}]+\}", "x", path)


def test_the_document_requires_a_key_where_the_server_does(serve: Callable[..., LiveServer], rule_model: Path) -> None:
    server = serve(rule_model, api_keys=KEY)
    doc = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["ApiKeyHeader"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["BearerKey"]["type"] == "http" and schemes["BearerKey"]["scheme"] == "bearer"
    checked = 0
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for path, operations in doc["paths"].items():
            for method, operation in operations.items():
                if method not in ("get", "post"):
                    continue
                answer = client.request(method.upper(), concrete(path))
                required = operation.get("security")
                if answer.status_code == 401:
                    assert required == [{"ApiKeyHeader": []}, {"BearerKey": []}], (method, path)
                    assert "401" in operation["responses"], (method, path)
                    checked += 1
                else:
                    assert not required, (method, path, answer.status_code)
    assert checked >= 3  # /segment, /classes, /results/...
    segment = doc["paths"]["/segment"]["post"]
    assert segment["security"] and "401" in segment["responses"]
    assert "security" not in doc["paths"]["/healthz"]["get"]
    # The keys the document names are taken: each scheme, as declared, passes the server's check.
    for headers in ({"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"}):
        assert httpx.get(f"{server.url}/classes", headers=headers, timeout=10).status_code == 200


def test_without_keys_the_document_asks_for_none(serve: Callable[..., LiveServer], rule_model: Path) -> None:
    server = serve(rule_model)
    doc = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    assert "securitySchemes" not in doc.get("components", {})
    assert all("security" not in op for ops in doc["paths"].values() for op in ops.values())
    assert httpx.get(f"{server.url}/classes", timeout=10).status_code == 200
