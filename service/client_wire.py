"""How the client's requests are built and the service's answers read; shared by the sync and async clients."""

from __future__ import annotations

import io
import math
import mimetypes
import random
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
from PIL import Image

from .client_types import (
    OUTPUTS,
    ImageInput,
    SegmentApiError,
    SegmentCertificateError,
    SegmentClientError,
    SegmentConnectionError,
    SegmentResult,
    SegmentTlsError,
    media_type_of,
    resolution_param,
    tile_count,
)
from .core.priorities import PRIORITIES
from .core.signatures import HEAD_BYTES, has_image_signature

# Statuses worth retrying: the queue was full, the model was still loading or its runs were failing; all carry
# Retry-After.
RETRYABLE = frozenset({503})
_MAX_RETRY_SLEEP_S = 5.0  # the longest Retry-After honoured, and the longest wait before jitter
_FIRST_BACKOFF_S = 0.2  # the first wait when the server named none (a connection refused)
_MAX_DOUBLINGS = 30  # 0.2 s x 2**30 is far past the cap; more would overflow a float for huge `retries`
# Each wait is stretched by a random factor in this range, never shortened: clients refused at the same moment (a
# fleet, or the threads of one batch) would otherwise all come back at the same moment and be refused together.
JITTER = (1.0, 1.5)


def encode_array(image: np.ndarray) -> bytes:
    """Lossless PNG of an RGB (or greyscale) uint8 array, so the server sees exactly these pixels."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _is_encoded_file(image: np.ndarray) -> bool:
    """Whether an array holds an encoded image file, as `cv2.imencode` returns it: 1-D uint8 (OpenCV 4.x), or
    N x 1 uint8 (older OpenCV) that starts as an image file does (else it is a picture one pixel wide)."""
    if image.dtype != np.uint8:
        return False
    if image.ndim == 1:
        return True
    return image.ndim == 2 and image.shape[1] == 1 and has_image_signature(image[:HEAD_BYTES, 0].tobytes())


def array_body(image: np.ndarray) -> tuple[bytes, str]:
    """Request bytes for an array: an encoded file as it is, pixels as lossless PNG; a ValueError for an array
    that is neither (checked here, before anything is sent)."""
    if _is_encoded_file(image):
        return image.tobytes(), "application/octet-stream"  # the service sniffs the real format from the bytes
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]  # one channel: a greyscale picture
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (2, 3, 4)):
        raise ValueError(f"an image array is H x W (grey), H x W x 3 (RGB) or H x W x 4 (RGBA) pixels, or 1-D uint8 "
                         f"(an encoded file, as cv2.imencode returns it); got shape {image.shape} {image.dtype}")
    if image.size == 0:
        raise ValueError(f"the image array is empty: shape {image.shape}")
    try:
        return encode_array(image), "image/png"
    except (TypeError, OSError) as exc:  # a dtype PNG cannot hold (float, 16-bit colour)
        raise ValueError(f"a {image.dtype} array of shape {image.shape} cannot be sent as an image ({exc}); "
                         f"send uint8 pixels") from exc


def request_body(image: ImageInput) -> tuple[bytes, str]:
    """Request bytes and a content type for a path, raw bytes or an array (see `array_body`)."""
    if isinstance(image, np.ndarray):
        return array_body(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image), "application/octet-stream"  # the service sniffs the real format from the bytes
    path = Path(image)
    media = mimetypes.guess_type(path.name)[0]
    return path.read_bytes(), media if media and media.startswith("image/") else "application/octet-stream"


def segment_params(output: str, alpha: float | None, fmt: str | None, tolerance: float | None,
                   min_area: float | None, crf: bool | None = None,
                   timeout_s: float | None = None, priority: str | None = None,
                   resolution: int | str | None = None) -> dict[str, str]:
    """The query of `POST /segment`; a ValueError for an output kind, priority or resolution the service refuses."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if priority is not None and priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {PRIORITIES}, got {priority!r}")
    params = {"output": output}
    for key, value in (("alpha", alpha), ("format", fmt), ("tolerance", tolerance), ("min_area", min_area),
                       ("timeout_s", timeout_s), ("priority", priority), ("resolution", resolution_param(resolution))):
        if value is not None:
            params[key] = str(value)
    if crf is not None:
        params["crf"] = "true" if crf else "false"  # the spelling of the API's boolean, not Python's "True"
    return params


def server_url(url: str) -> str:
    """`url` without its trailing slash; `SegmentClientError` unless it is an http:// or https:// URL naming a host
    (without a scheme httpx would fail every request, and a readiness wait would only time out)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise SegmentClientError(f"server URL {url!r} is not a URL: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        hint = f" (http://{url}?)" if "://" not in url else ""
        raise SegmentClientError(f"server URL {url!r} must start with http:// or https:// and name a host{hint}")
    return url.rstrip("/")


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The API key's header; `SegmentClientError` for a key no HTTP header can carry (the key is not repeated in
    the message: it is a secret)."""
    if not api_key:
        return {}
    if not (api_key.isascii() and api_key.isprintable()) or api_key != api_key.strip():
        raise SegmentClientError("the API key must be printable ASCII without leading or trailing spaces "
                                 "(it is sent in the X-API-Key header)")
    return {"X-API-Key": api_key}


def _path_segment(value: str) -> str:
    """`value` as one path segment: "/", "?", "#" and "%" percent-encoded, and so are the dots of "." and "..",
    which URL resolution would otherwise remove together with the segment before them."""
    if not value:
        raise ValueError("the result id is empty")
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


def result_path(result_id: str, name: str) -> str:
    """The path of `GET /results/{id}/{name}.png`, the id and name escaped: an id reaches no other route."""
    return f"/results/{_path_segment(result_id)}/{_path_segment(name)}.png"


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds from the Retry-After header, never negative: delay-seconds or an HTTP date (RFC 9110 10.2.3
    allows both); None when absent or unreadable."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = _seconds_until(value)
    return None if seconds is None or math.isnan(seconds) else max(0.0, seconds)


def _seconds_until(http_date: str) -> float | None:
    try:
        when = parsedate_to_datetime(http_date)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, as HTTP dates always are
        when = when.replace(tzinfo=UTC)
    return (when - datetime.now(UTC)).total_seconds()


def raise_for_error(response: httpx.Response) -> None:
    """Map a non-2xx answer to `SegmentApiError`, reading the service's error envelope when there is one."""
    if not response.is_success:
        raise api_error(response)


def api_error(response: httpx.Response) -> SegmentApiError:
    """The `SegmentApiError` of an error answer."""
    code, message = f"http_{response.status_code}", response.reason_phrase or "error"
    request_id, most = response.headers.get("x-request-id"), None
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
        request_id = error.get("request_id", request_id)
        most = error.get("max_resolution") if isinstance(error.get("max_resolution"), int) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        text = response.text.strip()
        message = text[:500] if text else message  # e.g. a proxy's HTML page
    return SegmentApiError(response.status_code, code, message, request_id, _retry_after(response), most)


def segment_result(response: httpx.Response, output: str) -> SegmentResult:
    """The answer of `POST /segment` as a `SegmentResult`; `SegmentApiError` for an error answer."""
    raise_for_error(response)
    return SegmentResult(
        output=output, content=response.content,
        media_type=media_type_of(response.headers.get("content-type", "")),
        result_id=response.headers.get("x-result-id"), request_id=response.headers.get("x-request-id"),
        status=response.status_code, model_header=response.headers.get("x-model-sha256"), tiles=tile_count(response))


def retry_sleep(error: SegmentClientError, attempt: int) -> float | None:
    """Seconds to wait before retry `attempt + 1`, before jitter: the server's Retry-After (else 0.2 s), doubled at
    each attempt, at most the cap and never less than the Retry-After. None (do not retry) when the server asks for
    a longer wait than the cap: retrying sooner than it asked would only be refused again, and blocking the caller
    that long is its own decision (`SegmentApiError.retry_after`)."""
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None and retry_after > _MAX_RETRY_SLEEP_S:
        return None
    first = _FIRST_BACKOFF_S if retry_after is None else max(0.0, retry_after)
    return min(_MAX_RETRY_SLEEP_S, first * 2 ** min(attempt, _MAX_DOUBLINGS))


@dataclass
class Retries:
    """One call's retries: how many were made and how long they waited. `retries` bounds their number, `budget`
    (None: no bound) the seconds waited in all."""

    retries: int
    budget: float | None = None
    made: int = 0
    waited: float = 0.0

    def next_wait(self, error: SegmentClientError) -> float | None:
        """Seconds to sleep before the next attempt (`retry_sleep` stretched by `JITTER`), or None to give up: no
        retry left, the server asked for too long a wait, or the wait would pass the budget."""
        if self.made >= self.retries:
            return None
        wait = retry_sleep(error, self.made)
        if wait is None:
            return None
        wait *= random.uniform(*JITTER)
        if self.budget is not None and self.waited + wait > self.budget:
            return None
        self.made += 1
        self.waited += wait
        return wait

    def after_answer(self, response: httpx.Response) -> float | None:
        """Seconds to sleep before sending again after `response`, or None: it is the answer (not a 503, or one
        no retry is left for)."""
        if response.status_code not in RETRYABLE:
            return None
        return self.next_wait(api_error(response))

    def after_failure(self, method: str, url: str, exc: httpx.TransportError) -> float:
        """Seconds to sleep before sending again after a transport failure; raises its `SegmentConnectionError`
        when it is not retried (the request may have reached the server, or no retry is left)."""
        if (unmendable := tls_error(method, url, exc)) is not None:  # a ConnectError too, but no retry can mend it
            raise unmendable from exc
        error = connection_error(method, url, exc, self.made + 1)
        wait = self.next_wait(error) if nothing_sent(exc) else None
        if wait is None:
            raise error from exc
        return wait


def nothing_sent(exc: httpx.TransportError) -> bool:
    """Whether the request surely never reached the server: the connection was not made (refused, unknown host,
    reset or TLS handshake failure while connecting). Only these are retried (but not a TLS failure no retry can
    mend, see `tls_error`): after a read timeout or a connection broken mid-answer the server may be running the
    request, and sending it again would double its work under the very load that made it slow. A connect
    timeout is not retried either: it has already cost a whole timeout."""
    return isinstance(exc, httpx.ConnectError)


def connection_error(method: str, url: str, exc: httpx.TransportError, attempts: int) -> SegmentConnectionError:
    """The error raised for a transport failure, saying how many attempts were made."""
    tries = f" (after {attempts} attempts)" if attempts > 1 else ""
    return SegmentConnectionError(f"{method} {url}: {exc}{tries}")


# What OpenSSL says when the first bytes back are not a TLS record, as a plain-HTTP server's "HTTP/1.1 400" is not
# (OpenSSL 3.0 on Python 3.11: WRONG_VERSION_NUMBER; 3.2 and later: RECORD_LAYER_FAILURE; 1.1: UNKNOWN_PROTOCOL).
_NO_TLS_REASONS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL"})


def ssl_failure(exc: BaseException) -> ssl.SSLError | None:
    """The `ssl` module's error behind a transport error, or None. httpx raises a failed handshake as a
    `ConnectError`, as it does a refused connection, with the `ssl` error among its causes."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:  # a chain of causes may loop back on itself
        if isinstance(cause, ssl.SSLError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def tls_error(method: str, url: str, exc: BaseException) -> SegmentTlsError | None:
    """The error raised at once for a TLS failure no retry can mend, or None (any other failure): a server
    certificate that is not accepted (`SegmentCertificateError`), or a server that does not speak TLS at all."""
    failure = ssl_failure(exc)
    if isinstance(failure, ssl.SSLCertVerificationError):
        reason = failure.verify_message or failure.reason or str(failure)
        return SegmentCertificateError(
            f"{method} {url}: the server's TLS certificate is not accepted: {reason} (not retried: the URL must name "
            f"a host the certificate is valid for, and its issuer must be trusted, e.g. SSL_CERT_FILE=/path/to/ca.pem)")
    if failure is None or failure.reason not in _NO_TLS_REASONS:
        return None  # a reset or a timeout mid-handshake may pass: retried as any connection not made
    target = httpx.URL(url)
    address = f"{f'[{target.host}]' if ':' in target.host else target.host}:{target.port or 443}"
    return SegmentTlsError(
        f"{method} {url}: the server at {address} does not speak TLS: use http://{address} if it serves plain HTTP "
        f"(not retried: its answer to the TLS handshake was not TLS: {failure.reason.lower().replace('_', ' ')})")
