"""What the OpenAPI document (`GET /openapi.json`) says each route answers: bodies, media types and headers.

The routes declare their answers with FastAPI's own `responses=` and `openapi_extra=`, from the models and tables
here; `describe_contract` then finishes the generated document once: every error is the service's envelope
(`ErrorBody`, never FastAPI's `HTTPValidationError`, which the server does not send) and every answer declares
`X-Request-ID`. Generated clients and Swagger UI read the document, so it must say what the server really sends.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

SCHEMAS = "#/components/schemas/"
# An upload's bytes, as a multipart field or the whole body: what client generators read as a file to send.
BINARY: dict[str, Any] = {"type": "string", "format": "binary"}
# An answer's bytes (an image): in OpenAPI 3.1 a media type without a schema. A `type: string` schema there made
# validators (openapi-core) check the raw bytes as text and refuse every image answer.
RAW_BYTES: dict[str, Any] = {}


class ErrorDetail(BaseModel):
    """One error: a stable `code` clients switch on, a `message` for humans, the request's id."""

    code: str = Field(description="stable error code (README: the list of codes)")
    message: str
    max_resolution: int | None = Field(None, description="`too_many_tiles` only: the highest `resolution` this image "
                                                         "can be segmented at on this server")
    request_id: str = Field(description="the request's id, also sent as X-Request-ID")


class ErrorBody(BaseModel):
    """Every error the service answers, whatever the status."""

    error: ErrorDetail


class ClassStats(BaseModel):
    """One class present in the label map."""

    class_id: int
    class_name: str
    pixels: int
    fraction: float = Field(ge=0, le=1)
    bbox: list[int] = Field(min_length=4, max_length=4, description="[x0, y0, x1, y1), pixels")


class _JsonAnswer(BaseModel):
    """The fields every JSON output kind of `POST /segment` carries."""

    id: str | None = Field(description="the result's id for `GET /results`; null when it was not kept")
    model: str = Field(description="the model file's name, without `.onnx`")
    model_sha256: str = Field(description="the hex sha256 of the model file that made the labels, also sent as "
                                          "X-Model-SHA256: tells a retrained file of the same name apart")
    width: int
    height: int
    classes_present: list[str]
    timing_ms: dict[str, float] = Field(description="decode, queue, inference and encode times")


class Stats(_JsonAnswer):
    """`output=stats`: pixel count, fraction and bounding box per class present."""

    total_pixels: int
    classes: list[ClassStats]


class PolygonGeometry(BaseModel):
    """An RFC 7946 Polygon in pixel-edge coordinates: the outer ring, then its holes."""

    type: Literal["Polygon"]
    coordinates: list[list[list[int]]]


class FeatureProperties(BaseModel):
    """The class of one polygon, its area (pixels²) and bounding box."""

    class_id: int
    class_name: str
    area: float
    bbox: list[int] = Field(min_length=4, max_length=4)


class Feature(BaseModel):
    """One polygon of one class region."""

    type: Literal["Feature"]
    id: int
    geometry: PolygonGeometry
    properties: FeatureProperties


class FeatureCollection(_JsonAnswer):
    """`output=polygons`: a GeoJSON FeatureCollection (with the common fields as foreign members)."""

    type: Literal["FeatureCollection"]
    features: list[Feature]


class Health(BaseModel):
    """`GET /healthz`: `ok`, or why the process should be restarted."""

    status: str = Field(description="`ok`, `inference_failing` or `inference_stuck`")
    inference: dict[str, Any] | None = Field(None, description="the model runs' failures (503 only)")


class Readiness(BaseModel):
    """`GET /readyz`: whether to send this server requests, and what it runs (more fields as README lists)."""

    model_config = ConfigDict(extra="allow")

    ready: bool
    status: str = Field(description="`ok`, or why not: loading, warming_up, warmup_failed, overloaded, "
                                    "inference_failing, inference_stalled, shutting_down")
    pid: int
    codec_threads: int
    worker_slot: int | None = None
    provider: str | None = None
    model: str | None = None
    model_sha256: str | None = Field(None, description="the hex sha256 of the model file loaded (`X-Model-SHA256`)")
    input_size: int | None = None
    queue_depth: int | None = None
    max_queue: int | None = None
    inference: dict[str, Any] | None = None


# The body of every error, as a response's `content`.
ERROR_CONTENT: dict[str, Any] = {"application/json": {"schema": {"$ref": f"{SCHEMAS}ErrorBody"}}}


def header(description: str, schema: dict[str, Any] | None = None, *, required: bool = True) -> dict[str, Any]:
    """A response header object."""
    return {"description": description, "required": required, "schema": schema or {"type": "string"}}


REQUEST_ID = header("the request's id (the client's own when it sent a valid one), also in error bodies")
RETRY_AFTER = header("seconds to wait before retrying", {"type": "integer", "minimum": 0})
RESULT_ID = header("the result's id for `GET /results/{id}/...`; absent when the result was not kept",
                   required=False)
WWW_AUTHENTICATE = header("`Bearer`")
MODEL_SHA256 = header("the hex sha256 of the model file that made the labels (a retrained file of the same name "
                      "has another)")


def error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """An error response for `responses=`: the JSON envelope, and `headers`."""
    return {"model": ErrorBody, "description": description, "headers": dict(headers or {})}


def busy(description: str) -> dict[str, Any]:
    """A 503: the envelope with Retry-After, which every 503 of the API carries."""
    return error(description, {"Retry-After": RETRY_AFTER})


INTERNAL = error("`internal_error` (a bug, or a worker process that died), `inference_failed` (the image "
                 "failed the model run on its own)")
NOT_READY = busy("`not_ready`: the model is still loading or warming up")
UNAUTHORIZED = {"description": "missing or invalid API key (`unauthorized`)",
                "content": ERROR_CONTENT,
                "headers": {"WWW-Authenticate": WWW_AUTHENTICATE, "X-Request-ID": REQUEST_ID}}
OTHER_ERRORS = {"description": "any other refusal, e.g. of the HTTP layer (400, 405, 408, 414, 431; 505)",
                "content": ERROR_CONTENT}

SEGMENT_REQUEST: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                       "properties": {"image": BINARY}}},
    # `image/*` covers every image type the decoder reads (README "Accepted images"); the body is sniffed anyway,
    # so the bundled client sends application/octet-stream. Each concrete type listed besides made generators warn
    # once per type, for nothing more.
    **{media: {"schema": BINARY} for media in ("application/octet-stream", "image/*")},
}}}

SEGMENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The segmentation, as asked for by `output` (or the Accept header)",
          "content": {"image/png": RAW_BYTES, "image/jpeg": RAW_BYTES,
                      "application/json": {"schema": {"$ref": f"{SCHEMAS}Stats"}},
                      "application/geo+json": {"schema": {"$ref": f"{SCHEMAS}FeatureCollection"}}},
          "headers": {"X-Result-ID": RESULT_ID, "X-Model-SHA256": MODEL_SHA256,
                      "X-Batch-Size": header("images in the model run that produced these labels (of an image run "
                                             "in tiles, the largest of its tiles' runs)",
                                             {"type": "integer", "minimum": 1}),
                      "X-Tiles": header("the tiles the image ran in, when it was segmented at a `resolution` above "
                                        "the model's input size", {"type": "integer", "minimum": 2},
                                        required=False),
                      "Server-Timing": header("decode, queue, inference and encode times (ms)")}},
    400: error("`empty_body`, `corrupt_image`, `incomplete_multipart` (cut short before its closing boundary) "
               "or `bad_request` (a malformed multipart body)"),
    408: error("`body_timeout`: the body stopped arriving"),
    413: error("`payload_too_large` (the upload) or `image_too_large` (its pixels)"),
    415: error("`unsupported_media_type` (not a supported image, a multipart charset other than utf-8, us-ascii "
               "or iso-8859-1) or `unsupported_content_encoding`"),
    422: error("`invalid_request` (a bad parameter, a `format` the output kind has not, not exactly one "
               "multipart field `image`), `output_too_complex` (polygons past the bounds) or `too_many_tiles` (a "
               "`resolution` needing more tiles than the server runs for one request)"),
    500: INTERNAL,
    501: error("`crf_unavailable`: `crf=true` on a server without the crf extra"),
    503: busy("`overloaded`, `bulk_overloaded` (a `priority=bulk` request beyond the bulk share of the queue; "
              "interactive requests are still taken), `inference_unavailable`, `not_ready` or `shutting_down`"),
    504: error("`timeout`: the answer took longer than the request timeout; `deadline_exceeded`: the request's "
               "own `timeout_s` passed first"),
}

RESULT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The result rendered again, as PNG", "content": {"image/png": RAW_BYTES},
          "headers": {"X-Result-ID": header("the result's id"),
                      "X-Model-SHA256": header("the hex sha256 of the model file that made the result; absent for "
                                               "a result stored before results recorded their model",
                                               required=False)}},
    404: error("`result_not_found`: unknown or expired id, a result another API key stored, or a result another "
               "model made (the server runs another model file now, or shares its results directory with a "
               "server on another model)"),
    422: error("`invalid_request`: an unknown file name, or alpha outside 0..1"),
    500: INTERNAL,
    503: busy("`overloaded` (too many re-renders, or the decode memory budget is full) or `not_ready`"),
}
HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Health, "description": "alive"},
    503: {"model": Health, "description": "model runs have failed (`inference_failing`) or one has run "
                                          "(`inference_stuck`) that long: restart the process"},
}
READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Readiness, "description": "ready (or, with `overload=ready`, merely overloaded)"},
    422: error("`invalid_request`: an unknown `overload` value"),
    503: {"model": Readiness, "description": "not ready: loading, warming up, overloaded (not with "
                                             "`overload=ready`), model runs failing or hung, or shutting down"},
}


def describe_contract(app: FastAPI) -> None:
    """Make `app.openapi()` finish FastAPI's document once (it is cached): the envelope for 422s and every other
    error, a 500 everywhere, and X-Request-ID on every answer."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = finish(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def finish(document: dict[str, Any]) -> dict[str, Any]:
    """`document` with FastAPI's validation-error schemas replaced by `ErrorBody` (the server answers a bad
    parameter with its envelope, not `{"detail": [...]}`), `ErrorBody` and the JSON answers of `POST /segment`
    (named by `$ref` here: FastAPI registers a model only where a status has one), and the headers and errors
    every route shares."""
    document = copy.deepcopy(document)  # FastAPI shares the routes' `responses` dicts with it: leave them be
    _replace_refs(document, f"{SCHEMAS}HTTPValidationError", f"{SCHEMAS}ErrorBody")
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    _, answers = models_json_schema([(model, "serialization") for model in (ErrorBody, Stats, FeatureCollection)],
                                    ref_template=SCHEMAS + "{model}")
    schemas.update(answers["$defs"])
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.setdefault("500", _declared(INTERNAL))
            # Status ranges rather than `default`: a generated client parses any answer no status declares with
            # `default`'s schema, and a success whose media type it cannot model (an image) became an ErrorBody.
            for status_range in ("4XX", "5XX"):
                responses.setdefault(status_range, copy.deepcopy(OTHER_ERRORS))  # a copy each: headers go in below
            for response in responses.values():
                response.setdefault("headers", {}).setdefault("X-Request-ID", REQUEST_ID)
    return document


def _declared(response: dict[str, Any]) -> dict[str, Any]:
    """An `error(...)` response as the document writes it (FastAPI turns `model` into content when it builds)."""
    return {"description": response["description"], "headers": dict(response["headers"]),
            "content": ERROR_CONTENT}


def _replace_refs(node: Any, old: str, new: str) -> None:
    """Point every `$ref` to `old` in the tree at `new`, in place."""
    if isinstance(node, dict):
        if node.get("$ref") == old:
            node["$ref"] = new
        for value in node.values():
            _replace_refs(value, old, new)
    elif isinstance(node, list):
        for value in node:
            _replace_refs(value, old, new)
