"""How the client's requests are built and the service's answers read; shared by the sync and async clients."""

from __future__ import annotations

import io
import math
import mimetypes
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from .client_types import OUTPUTS, ImageInput, SegmentApiError, SegmentResult

# Statuses worth retrying: the queue was full, the model was still loading or its runs were failing; all carry
# Retry-After.
RETRYABLE = frozenset({503})
_MAX_RETRY_SLEEP_S = 5.0


def encode_array(image: np.ndarray) -> bytes:
    """Lossless PNG of an RGB (or greyscale) uint8 array, so the server sees exactly these pixels."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def request_body(image: ImageInput) -> tuple[bytes, str]:
    """Request bytes and a content type for a path, raw bytes or an RGB array."""
    if isinstance(image, np.ndarray):
        return encode_array(image), "image/png"
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image), "application/octet-stream"  # the service sniffs the real format from the bytes
    path = Path(image)
    media = mimetypes.guess_type(path.name)[0]
    return path.read_bytes(), media if media and media.startswith("image/") else "application/octet-stream"


def segment_params(output: str, alpha: float | None, fmt: str | None, tolerance: float | None,
                   min_area: float | None, crf: bool | None = None) -> dict[str, str]:
    """The query of `POST /segment`; a ValueError for an output kind the service does not have."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    params = {"output": output}
    for key, value in (("alpha", alpha), ("format", fmt), ("tolerance", tolerance), ("min_area", min_area)):
        if value is not None:
            params[key] = str(value)
    if crf is not None:
        params["crf"] = "true" if crf else "false"  # the spelling of the API's boolean, not Python's "True"
    return params


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"X-API-Key": api_key} if api_key else {}


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


def segment_result(response: httpx.Response, output: str) -> SegmentResult:
    """The answer of `POST /segment` as a `SegmentResult`; `SegmentApiError` for an error answer."""
    raise_for_error(response)
    return SegmentResult(
        output=output, content=response.content,
        media_type=response.headers.get("content-type", "").split(";")[0].strip(),
        result_id=response.headers.get("x-result-id"), request_id=response.headers.get("x-request-id"),
    )


def retry_sleep(error: SegmentApiError, attempt: int) -> float | None:
    """Seconds to wait before retrying: the server's Retry-After, else exponential backoff, at most the cap. None
    (do not retry) when the server asks for a longer wait than the cap: retrying sooner than it asked would only
    be refused again, and blocking the caller that long is its own decision (`SegmentApiError.retry_after`)."""
    if error.retry_after is not None:
        return max(0.0, error.retry_after) if error.retry_after <= _MAX_RETRY_SLEEP_S else None
    return min(_MAX_RETRY_SLEEP_S, 0.2 * 2**attempt)
