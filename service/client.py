"""A small typed Python client for the segmentation service (sync and async, on httpx).

    from service.client import SegmentClient
    with SegmentClient("http://localhost:8000", api_key="...") as client:
        result = client.segment("cat.jpg", output="color")
        result.content          # the PNG bytes
        client.segment("cat.jpg", output="stats").json()["classes"]

One `httpx.Client` per `SegmentClient`: connections are kept alive and reused, and the client is thread-safe,
so several threads may call `segment` at once (the pool holds up to `max_connections` connections).
Errors the service answers (`{"error": {"code", "message"}}`) raise `SegmentApiError` with that code;
network failures raise `SegmentConnectionError`. Neither imports the server side: this module needs only httpx,
numpy and Pillow.
"""

from __future__ import annotations

import asyncio
import io
import json
import mimetypes
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
from PIL import Image

from .core.output_kinds import OUTPUTS

Output = Literal[OUTPUTS]  # type: ignore[valid-type]  # from the output-kind table
ResultName = Literal["labels", "color", "overlay"]
ImageInput = str | os.PathLike[str] | bytes | np.ndarray
# Statuses worth retrying: the queue was full or the model was still loading; both carry Retry-After.
_RETRYABLE = frozenset({503})
_MAX_RETRY_SLEEP_S = 5.0


class SegmentClientError(Exception):
    """Base class of everything this client raises."""


class SegmentConnectionError(SegmentClientError):
    """The service could not be reached, or the connection broke (wraps the httpx error)."""


class SegmentApiError(SegmentClientError):
    """The service answered an error: HTTP `status`, stable `code`, human `message`."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retry_after = retry_after


@dataclass(frozen=True)
class SegmentResult:
    """One answer of `POST /segment`: the body as returned, plus the ids from the headers."""

    output: str
    content: bytes
    media_type: str
    result_id: str | None
    request_id: str | None

    @property
    def is_json(self) -> bool:
        return "json" in self.media_type

    def json(self) -> dict[str, Any]:
        """The JSON body (outputs `stats` and `polygons`)."""
        if not self.is_json:
            raise ValueError(f"output {self.output!r} is {self.media_type}, not JSON")
        return json.loads(self.content)

    def image(self) -> Image.Image:
        """The image body (outputs `labels`, `color`, `overlay`) as a Pillow image."""
        if self.is_json:
            raise ValueError(f"output {self.output!r} is JSON, not an image")
        img = Image.open(io.BytesIO(self.content))
        img.load()
        return img

    def array(self) -> np.ndarray:
        """The image body as a numpy array: class ids H×W for `labels` (a palette PNG), RGB H×W×3 otherwise."""
        img = self.image()
        if self.output == "labels":
            return np.asarray(img if img.mode in ("P", "L") else img.convert("L"), dtype=np.uint8)
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _encode_array(image: np.ndarray) -> bytes:
    """Lossless PNG of an RGB (or greyscale) uint8 array, so the server sees exactly these pixels."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _body(image: ImageInput) -> tuple[bytes, str]:
    """Request bytes and a content type for a path, raw bytes or an RGB array."""
    if isinstance(image, np.ndarray):
        return _encode_array(image), "image/png"
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image), "application/octet-stream"  # the service sniffs the real format from the bytes
    path = Path(image)
    media = mimetypes.guess_type(path.name)[0]
    return path.read_bytes(), media if media and media.startswith("image/") else "application/octet-stream"


def _params(output: str, alpha: float | None, fmt: str | None, tolerance: float | None,
            min_area: float | None) -> dict[str, str]:
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    params = {"output": output}
    for key, value in (("alpha", alpha), ("format", fmt), ("tolerance", tolerance), ("min_area", min_area)):
        if value is not None:
            params[key] = str(value)
    return params


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def _raise_for_error(response: httpx.Response) -> None:
    """Map a non-2xx answer to `SegmentApiError`, reading the service's error envelope when there is one."""
    if response.is_success:
        return
    code, message = f"http_{response.status_code}", response.reason_phrase or "error"
    request_id = response.headers.get("x-request-id")
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
        request_id = error.get("request_id", request_id)
    except (ValueError, KeyError, TypeError):
        text = response.text.strip()
        message = text[:500] if text else message  # e.g. a proxy's HTML page
    raise SegmentApiError(response.status_code, code, message, request_id, _retry_after(response))


def _result(response: httpx.Response, output: str) -> SegmentResult:
    _raise_for_error(response)
    return SegmentResult(
        output=output, content=response.content,
        media_type=response.headers.get("content-type", "").split(";")[0].strip(),
        result_id=response.headers.get("x-result-id"), request_id=response.headers.get("x-request-id"),
    )


def _headers(api_key: str | None) -> dict[str, str]:
    return {"X-API-Key": api_key} if api_key else {}


def _sleep_for(error: SegmentApiError, attempt: int) -> float:
    return min(_MAX_RETRY_SLEEP_S, error.retry_after if error.retry_after is not None else 0.2 * 2**attempt)


class SegmentClient:
    """Synchronous client. Thread-safe; reuse one instance (it keeps the connections alive)."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 60.0, retries: int = 2,
                 max_connections: int = 8, transport: httpx.BaseTransport | None = None) -> None:
        """`retries`: extra attempts on 503 (overloaded / not ready), sleeping for the server's Retry-After."""
        self.url = url.rstrip("/")
        self.retries = max(0, retries)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.Client(base_url=self.url, headers=_headers(api_key), timeout=timeout, limits=limits,
                                  transport=transport)

    def __enter__(self) -> SegmentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise SegmentConnectionError(f"{method} {self.url}{path}: {exc}") from exc
            if response.status_code not in _RETRYABLE or attempt >= self.retries:
                return response
            try:
                _raise_for_error(response)
            except SegmentApiError as error:
                time.sleep(_sleep_for(error, attempt))
            attempt += 1

    def segment(self, image: ImageInput, output: Output = "labels", *, alpha: float | None = None,
                format: Literal["png", "jpeg"] | None = None, tolerance: float | None = None,
                min_area: float | None = None) -> SegmentResult:
        """Segment one image (a file path, encoded bytes, or an RGB uint8 array sent as lossless PNG)."""
        content, media = _body(image)
        response = self._send("POST", "/segment", content=content, headers={"Content-Type": media},
                              params=_params(output, alpha, format, tolerance, min_area))
        return _result(response, output)

    def labels(self, image: ImageInput) -> np.ndarray:
        """Class ids H×W (uint8) at the image's original size."""
        return self.segment(image, "labels").array()

    def stats(self, image: ImageInput) -> dict[str, Any]:
        """Per-class pixel counts, fractions and bounding boxes."""
        return self.segment(image, "stats").json()

    def polygons(self, image: ImageInput, *, tolerance: float | None = None,
                 min_area: float | None = None) -> dict[str, Any]:
        """A GeoJSON-like FeatureCollection in pixel coordinates."""
        return self.segment(image, "polygons", tolerance=tolerance, min_area=min_area).json()

    def result(self, result_id: str, name: ResultName) -> bytes:
        """A recent result again as PNG: `GET /results/{id}/{name}.png`."""
        response = self._send("GET", f"/results/{result_id}/{name}.png")
        _raise_for_error(response)
        return response.content

    def classes(self) -> dict[str, Any]:
        """The model's class names and colours (`GET /classes`)."""
        return self._json("/classes")

    def ready(self) -> bool:
        """True when `/readyz` answers 200."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.1) -> None:
        """Block until the service is ready; raise `SegmentConnectionError` after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise SegmentConnectionError(f"{self.url} not ready after {timeout:.0f}s")
            time.sleep(interval)

    def _json(self, path: str) -> dict[str, Any]:
        response = self._send("GET", path)
        _raise_for_error(response)
        return response.json()


class AsyncSegmentClient:
    """The asyncio twin of `SegmentClient`, for callers already in an event loop."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 60.0, retries: int = 2,
                 max_connections: int = 8, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.retries = max(0, retries)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.AsyncClient(base_url=self.url, headers=_headers(api_key), timeout=timeout,
                                       limits=limits, transport=transport)

    async def __aenter__(self) -> AsyncSegmentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise SegmentConnectionError(f"{method} {self.url}{path}: {exc}") from exc
            if response.status_code not in _RETRYABLE or attempt >= self.retries:
                return response
            try:
                _raise_for_error(response)
            except SegmentApiError as error:
                await asyncio.sleep(_sleep_for(error, attempt))
            attempt += 1

    async def segment(self, image: ImageInput, output: Output = "labels", *, alpha: float | None = None,
                      format: Literal["png", "jpeg"] | None = None, tolerance: float | None = None,
                      min_area: float | None = None) -> SegmentResult:
        """Segment one image; see `SegmentClient.segment`."""
        # Reading a file is blocking; do it off the loop.
        content, media = await asyncio.to_thread(_body, image)
        response = await self._send("POST", "/segment", content=content, headers={"Content-Type": media},
                                    params=_params(output, alpha, format, tolerance, min_area))
        return _result(response, output)

    async def result(self, result_id: str, name: ResultName) -> bytes:
        """A recent result again as PNG."""
        response = await self._send("GET", f"/results/{result_id}/{name}.png")
        _raise_for_error(response)
        return response.content

    async def classes(self) -> Mapping[str, Any]:
        """The model's class names and colours."""
        response = await self._send("GET", "/classes")
        _raise_for_error(response)
        return response.json()
