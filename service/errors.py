"""The API's error type: every client-visible failure carries an HTTP status and a stable code."""

from __future__ import annotations

from .core.errors import DecodeError


class ApiError(Exception):
    """An error answered as `{"error": {"code", "message"}}` with `status`.

    `code` is stable and documented; clients switch on it. `message` is for humans.
    """

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None,
                 details: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.details = details or {}  # members beside code and message a client can act on (declared: ErrorDetail)

    def to_body(self, request_id: str | None = None) -> dict[str, object]:
        """The JSON body for this error."""
        body: dict[str, object] = {"code": self.code, "message": self.message, **self.details}
        if request_id:
            body["request_id"] = request_id
        return {"error": body}

    @classmethod
    def from_decode(cls, exc: DecodeError) -> ApiError:
        """The answer to an upload the core could not decode: its code, with the status for that code."""
        headers = {"Retry-After": f"{exc.retry_after_s:g}"} if exc.retry_after_s is not None else None
        return cls(DECODE_STATUS[exc.code], exc.code, exc.message, headers)


# The HTTP status of each decode error code (service.core.errors).
DECODE_STATUS = {"empty_body": 400, "corrupt_image": 400, "unsupported_media_type": 415, "image_too_large": 413,
                 "overloaded": 503}
