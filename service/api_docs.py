"""The OpenAPI document's word on API keys: with `SEGMENT_API_KEYS` set, every route but the public ones answers 401
without a key, and the document says so. Without it, Swagger UI (`/docs`) has no Authorize button and every "Try it
out" of a protected route gets 401; generated clients know no key either."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI

from .openapi_contract import UNAUTHORIZED

# The two ways `ApiKeyMiddleware` takes a key (service/middleware.py); either will do.
SCHEMES = {
    "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "BearerKey": {"type": "http", "scheme": "bearer", "description": "the API key as a bearer token"},
}


def document_api_keys(app: FastAPI, public_paths: Iterable[str], public_prefixes: Iterable[str] = ()) -> None:
    """Make `app.openapi()` declare the API-key schemes, require one on every operation outside `public_paths` and
    `public_prefixes`, and list its 401 answer there (its body is the `ErrorBody` every error declares:
    service/openapi_contract.py)."""
    public, prefixes = frozenset(public_paths), tuple(public_prefixes)
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {}).update(SCHEMES)
        for path, operations in schema.get("paths", {}).items():
            if path in public or path.startswith(prefixes):
                continue
            for operation in operations.values():
                operation["security"] = [{name: []} for name in SCHEMES]
                operation.setdefault("responses", {}).setdefault("401", UNAUTHORIZED)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
