"""What the Python client returns and raises: `SegmentResult`, the error classes, and the argument types.

The output kinds come from the service's table (`service.core.output_kinds`, standard library only), so the
client needs nothing of the server to know them.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image

from .core.output_kinds import OUTPUT_KINDS, OUTPUTS
from .core.resolution import MAX_RESOLUTION, NATIVE, Resolution, is_resolution

if TYPE_CHECKING:
    import httpx

Output = Literal[OUTPUTS]  # type: ignore[valid-type]  # every output kind of the table
# The kinds `GET /results/{id}/{name}.png` renders again: the image kinds (JSON kinds are not cached as files).
RESULT_NAMES: tuple[str, ...] = tuple(kind.name for kind in OUTPUT_KINDS.values() if not kind.is_json)
ResultName = Literal[RESULT_NAMES]  # type: ignore[valid-type]
# `format` chooses the overlay's encoding, as the route's parameter of that name does; the first is the default.
OVERLAY_FORMATS: tuple[str, ...] = tuple(e.format for e in OUTPUT_KINDS["overlay"].encodings)
OverlayFormat = Literal[OVERLAY_FORMATS]  # type: ignore[valid-type]
ImageInput = str | os.PathLike[str] | bytes | np.ndarray


class SegmentClientError(Exception):
    """Base class of everything this client raises."""

    code = "client_error"  # each subclass has its own stable code


class SegmentConnectionError(SegmentClientError):
    """The service could not be reached, or the connection broke (wraps the httpx error). A connection that could
    not be made was retried first (the client's `retries`); one broken after the request was sent was not."""

    code = "connection_error"  # a stable code, as `SegmentApiError.code` is for the service's errors


class SegmentTlsError(SegmentConnectionError):
    """No TLS connection can be made to the server: raised at once, not retried, as no retry can succeed until the
    server or the URL changes. Raised as it is when the server does not speak TLS (an https:// URL for a plain-HTTP
    server); its subclass `SegmentCertificateError` when the server's certificate is not accepted."""

    code = "tls_error"


class SegmentCertificateError(SegmentTlsError):
    """The server's TLS certificate was not accepted (self-signed, expired, issued for another host name): raised at
    once, not retried, as no retry can succeed until the certificate, the URL or the trusted issuers change."""

    code = "certificate_error"


class SegmentApiError(SegmentClientError):
    """The service answered an error: HTTP `status`, stable `code`, human `message`; for `too_many_tiles`,
    `max_resolution`, the highest `resolution` the server gives that image (else None)."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None = None,
                 retry_after: float | None = None, max_resolution: int | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retry_after = retry_after
        self.max_resolution = max_resolution


class SegmentResponseError(SegmentClientError):
    """A success answer whose body is not the JSON or the image the service sends: a captive portal's or a proxy's
    HTML page, or a body cut short. Not retried: the same path would answer the same. `status`, `media_type` and
    `body_start` (the body's first characters) tell what answered instead."""

    code = "invalid_response"
    BODY_START_CHARS = 200  # enough to recognise a login page or a proxy's banner; bounded, as bodies are not

    def __init__(self, status: int, media_type: str, body: bytes, expected: str = "JSON") -> None:
        self.status = status
        self.media_type = media_type
        self.body_start = body[:self.BODY_START_CHARS].decode("utf-8", errors="replace")
        super().__init__(f"{status} answer is not {expected} ({media_type or 'no Content-Type'}): "
                         f"{self.body_start!r}")


def resolution_param(value: Resolution | None) -> str | None:
    """`resolution` as the query spells it (None: not sent); a ValueError for anything the service would refuse,
    raised before a request is made. A bool is refused, though Python counts it as a number."""
    if value is None:
        return None
    if is_resolution(value):
        return NATIVE if value == NATIVE else str(int(value))  # a numpy integer as plain digits
    raise ValueError(f"resolution must be a whole number of pixels from 1 to {MAX_RESOLUTION} or {NATIVE!r}, "
                     f"got {value!r}")


def tile_count(response: httpx.Response) -> int | None:
    """The answer's X-Tiles: the tiles its image ran in; None when it ran whole (or the server does not tell)."""
    try:
        return int(response.headers.get("x-tiles", ""))
    except ValueError:
        return None


def media_type_of(content_type: str) -> str:
    """The media type of a Content-Type value, without its parameters."""
    return content_type.split(";")[0].strip()


def json_body(content: bytes, status: int, media_type: str) -> Any:
    """`content` decoded as JSON; `SegmentResponseError` when it is not JSON."""
    try:
        return json.loads(content)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise SegmentResponseError(status, media_type, content) from exc


def output_kinds(body: Any) -> list[dict[str, Any]]:
    """The list in a `GET /outputs` answer; `SegmentResponseError` when the JSON holds none (another service's
    JSON at that path)."""
    kinds = body.get("outputs") if isinstance(body, dict) else None
    if not isinstance(kinds, list):
        raise SegmentResponseError(200, "application/json", json.dumps(body).encode(), "a list of output kinds")
    return kinds


def response_json(response: httpx.Response) -> Any:
    """The JSON body of a success answer, for the sync and async clients alike; `SegmentResponseError` when the
    body is not JSON (`response.json()` would raise a bare `JSONDecodeError`)."""
    return json_body(response.content, response.status_code, media_type_of(response.headers.get("content-type", "")))


@dataclass(frozen=True)
class SegmentResult:
    """One answer of `POST /segment`: the body as returned, plus the ids and the model from the headers."""

    output: str
    content: bytes
    media_type: str
    result_id: str | None
    request_id: str | None
    status: int = 200  # the HTTP status it came with (a 2xx)
    # The answer's X-Model-SHA256 header as sent; `model_sha256` is what to read.
    model_header: str | None = None
    # The tiles the image ran in (X-Tiles), when segmented at a `resolution` above the model's input size; else None
    # (as from `service.local`, which does not count them).
    tiles: int | None = None

    @property
    def is_json(self) -> bool:
        return "json" in self.media_type

    @property
    def model_sha256(self) -> str | None:
        """The hex sha256 of the model file that made this answer, lower case: the X-Model-SHA256 header, else a
        JSON answer's `model_sha256` field; None when the server does not tell it (an older server)."""
        if self.model_header and self.model_header.strip():
            return self.model_header.strip().lower()
        if not self.is_json:
            return None
        try:  # read only when the header is missing; a body that is not JSON is `json()`'s error to raise
            value = json.loads(self.content).get("model_sha256")
        except (ValueError, AttributeError):
            return None
        return value.strip().lower() if isinstance(value, str) and value.strip() else None

    def json(self) -> dict[str, Any]:
        """The JSON body (the JSON output kinds, such as `stats`). `SegmentResponseError` when a JSON kind came with
        a body that is not JSON (a proxy's page, JSON cut short); `ValueError` when asked of an image kind."""
        kind = OUTPUT_KINDS.get(self.output)
        if not self.is_json and not (kind is not None and kind.is_json):
            raise ValueError(f"output {self.output!r} is {self.media_type}, not JSON")
        return json_body(self.content, self.status, self.media_type)

    def image(self) -> Image.Image:
        """The image body (the image output kinds, such as `labels`) as a Pillow image; `SegmentResponseError`
        when the body is no image (a proxy's page, an image cut short)."""
        if self.is_json:
            raise ValueError(f"output {self.output!r} is JSON, not an image")
        try:
            img = Image.open(io.BytesIO(self.content))
            img.load()
        except OSError as exc:  # UnidentifiedImageError and a truncated image alike
            raise SegmentResponseError(self.status, self.media_type, self.content, "an image") from exc
        return img

    def array(self) -> np.ndarray:
        """The image body as a numpy array: class ids H×W for `labels` (a palette PNG), RGB H×W×3 otherwise."""
        img = self.image()
        if self.output == "labels":
            return np.asarray(img if img.mode in ("P", "L") else img.convert("L"), dtype=np.uint8)
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
