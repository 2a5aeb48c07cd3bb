"""A small typed Python client for the segmentation service (sync and async, on httpx).

    from service.client import SegmentClient
    with SegmentClient("http://localhost:8000", api_key="...") as client:
        result = client.segment("cat.jpg", output="color")
        result.content          # the PNG bytes
        client.segment("cat.jpg", output="stats").json()["classes"]

One `httpx.Client` per `SegmentClient`: connections are kept alive and reused, and the client is thread-safe,
so several threads may call `segment` at once (the pool holds up to `max_connections` connections).
Errors the service answers (`{"error": {"code", "message"}}`) raise `SegmentApiError` with that code;
network failures raise `SegmentConnectionError` (code `connection_error`). A 503 and a connection that could not
be made are retried, with growing waits stretched at random so that clients refused together do not come back
together; a TLS connection no retry can mend is not, and is raised at once: a server certificate that is not
accepted (`SegmentCertificateError`, code `certificate_error`) or a server that does not speak TLS, as an https://
URL for a plain-HTTP server (`SegmentTlsError`, code `tls_error`). A success answer whose body is not the JSON due
(a captive portal's page, JSON cut short) raises `SegmentResponseError` (code `invalid_response`), not retried.
Neither imports the server side: the client needs only httpx, numpy and Pillow, and reads the output kinds
(`OUTPUTS`) from the service's standard-library table.

This module is the client's public entry point: the result and error types live in `service.client_types`,
request building in `service.client_wire` and `AsyncSegmentClient` in `service.client_async`.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import numpy as np

from .client_async import AsyncSegmentClient
from .client_types import (
    OUTPUTS,
    OVERLAY_FORMATS,
    ImageInput,
    Output,
    OverlayFormat,
    Resolution,
    ResultName,
    SegmentApiError,
    SegmentCertificateError,
    SegmentClientError,
    SegmentConnectionError,
    SegmentResponseError,
    SegmentResult,
    SegmentTlsError,
    output_kinds,
    resolution_param,
    response_json,
)
from .client_wire import (
    Retries,
    auth_headers,
    raise_for_error,
    request_body,
    result_path,
    segment_params,
    segment_result,
    server_url,
    tls_error,
)
from .core.output_kinds import DEFAULT_OUTPUT
from .core.priorities import PRIORITIES, Priority

_MIN_PROBE_S = 0.1  # the shortest wait for one /readyz answer, so that a last probe can still succeed

__all__ = [
    "OUTPUTS",
    "OVERLAY_FORMATS",
    "PRIORITIES",
    "AsyncSegmentClient",
    "ImageInput",
    "Output",
    "OverlayFormat",
    "Priority",
    "Resolution",
    "ResultName",
    "SegmentApiError",
    "SegmentCertificateError",
    "SegmentClient",
    "SegmentClientError",
    "SegmentConnectionError",
    "SegmentResponseError",
    "SegmentResult",
    "SegmentTlsError",
]


class SegmentClient:
    """Synchronous client. Thread-safe; reuse one instance (it keeps the connections alive)."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 60.0, retries: int = 2,
                 max_connections: int = 8, transport: httpx.BaseTransport | None = None,
                 retry_budget: float | None = None, priority: Priority | None = None,
                 resolution: Resolution | None = None) -> None:
        """`url`: http:// or https://. `priority`: every `segment` call's unless it names its own (`bulk` for
        offline work, which the server runs after interactive requests; None: the server's default, interactive).
        `resolution`: every `segment` call's likewise (see there; a ValueError here for a value the API refuses).
        `retries`: extra attempts after a 503 (overloaded, not ready) or a connection that could not be made
        (refused: nothing was sent), but not after a server certificate that is not accepted or a server that does
        not speak TLS (`SegmentTlsError`: no retry could succeed). Each waits the server's Retry-After (else 0.2 s)
        doubled per retry, at most 5 s, times a random 1-1.5; a Retry-After over 5 s is not waited for (the error
        is raised, with its `retry_after`). `retry_budget`: at most this many seconds of waiting per call (None:
        only `retries` bounds it). A bad URL or API key raises `SegmentClientError` here."""
        self.url = server_url(url)
        self.retries = max(0, retries)
        self.retry_budget = retry_budget
        self.priority = priority
        resolution_param(resolution)  # a ValueError here, not at the first call
        self.resolution = resolution
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.Client(base_url=self.url, headers=auth_headers(api_key), timeout=timeout, limits=limits,
                                  transport=transport)

    def __enter__(self) -> SegmentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The answer, after the retries `Retries` allows; a 503 left is returned, a transport failure raised."""
        retries = Retries(self.retries, self.retry_budget)
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                wait = retries.after_failure(method, f"{self.url}{path}", exc)
            else:
                if (wait := retries.after_answer(response)) is None:
                    return response
            time.sleep(wait)

    def segment(self, image: ImageInput, output: Output = DEFAULT_OUTPUT, *, alpha: float | None = None,
                format: OverlayFormat | None = None, tolerance: float | None = None,
                min_area: float | None = None, crf: bool | None = None,
                timeout_s: float | None = None, priority: Priority | None = None,
                resolution: Resolution | None = None) -> SegmentResult:
        """Segment one image: a file path, encoded bytes, an RGB (or grey, RGBA) uint8 array sent as lossless PNG,
        or a 1-D uint8 array holding an encoded file (what `cv2.imencode` returns); another array is a ValueError.
        `output` is one of `OUTPUTS`; `format` chooses the overlay's encoding; `crf=True` refines the mask with
        the dense CRF (a server without the CRF extra answers 501 `crf_unavailable`); `timeout_s` is the request's
        own deadline on the server, from the end of its upload to its labels (at most the server's request
        timeout): passed, the server answers 504 `deadline_exceeded` (`SegmentApiError`, not retried) and never runs the
        image; None: the service's default. `priority`: `interactive` or `bulk` (run after every interactive
        request waiting; refused 503 `bulk_overloaded`, retried, beyond its share of the server's queue); None: the
        client's. `resolution`: the long side in pixels (1-32768) to segment the image at, or `native` (its own);
        above the model's input size it runs in overlapping tiles, a model run each (`SegmentResult.tiles`), which
        keeps thin and small things a downscale would lose; more tiles than the server allows is 422
        `too_many_tiles` (`SegmentApiError`). Another value is a ValueError, before anything is sent; None: the
        client's, else the model's input size."""
        content, media = request_body(image)
        params = segment_params(output, alpha, format, tolerance, min_area, crf, timeout_s, priority or self.priority,
                                self.resolution if resolution is None else resolution)
        response = self._send("POST", "/segment", content=content, headers={"Content-Type": media}, params=params)
        return segment_result(response, output)

    def labels(self, image: ImageInput) -> np.ndarray:
        """Class ids H×W (uint8) at the image's original size."""
        return self.segment(image, "labels").array()

    def stats(self, image: ImageInput) -> dict[str, Any]:
        """Per-class pixel counts, fractions and bounding boxes."""
        return self.segment(image, "stats").json()

    def polygons(self, image: ImageInput, *, tolerance: float | None = None,
                 min_area: float | None = None) -> dict[str, Any]:
        """A GeoJSON FeatureCollection in pixel coordinates."""
        return self.segment(image, "polygons", tolerance=tolerance, min_area=min_area).json()

    def result(self, result_id: str, name: ResultName, alpha: float | None = None) -> bytes:
        """A recent result again as PNG: `GET /results/{id}/{name}.png` (the image output kinds; the id is escaped,
        so it names a result and nothing else); `alpha` sets the overlay's opacity (the service's default where
        None)."""
        params = {} if alpha is None else {"alpha": alpha}
        response = self._send("GET", result_path(result_id, name), params=params)
        raise_for_error(response)
        return response.content

    def classes(self) -> dict[str, Any]:
        """The model's class names and colours (`GET /classes`)."""
        return self._json("/classes")

    def outputs(self) -> list[dict[str, Any]]:
        """The output kinds the service answers with (`GET /outputs`): name, description, whether it is JSON,
        the Accept types that choose it, and its encodings (format, media type, file suffix; the first is the
        default)."""
        return output_kinds(self._json("/outputs"))

    def ready(self, timeout: float | None = None) -> bool:
        """True when `/readyz` answers 200 within `timeout` seconds (None: the client's timeout). A server certificate
        that is not accepted, or a server that does not speak TLS, raises `SegmentTlsError` (`SegmentCertificateError`
        for the certificate): that server will not be ready for this client."""
        try:
            if timeout is None:
                return self._http.get("/readyz").status_code == 200
            return self._http.get("/readyz", timeout=timeout).status_code == 200
        except httpx.TransportError as exc:
            if (unmendable := tls_error("GET", f"{self.url}/readyz", exc)) is not None:
                raise unmendable from exc
            return False

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.1) -> None:
        """Block until the service is ready; raise `SegmentConnectionError` after `timeout` seconds, and
        `SegmentTlsError` at once for a server certificate that is not accepted or a server that does not speak TLS."""
        deadline = time.monotonic() + timeout
        # Each probe gets the time left, not the client's whole timeout: a server that accepts connections but
        # does not answer (hung, or stopped in a debugger) must not hold this past its deadline.
        while not self.ready(timeout=max(_MIN_PROBE_S, deadline - time.monotonic())):
            left = deadline - time.monotonic()
            if left <= 0:
                raise SegmentConnectionError(f"{self.url} not ready after {timeout:g}s")
            time.sleep(min(interval, left))

    def _json(self, path: str) -> dict[str, Any]:
        response = self._send("GET", path)
        raise_for_error(response)
        return response_json(response)  # a proxy's HTML page raises `SegmentResponseError`, not a bare JSON error
