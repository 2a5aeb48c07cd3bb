"""The core's error type for image input, free of HTTP: the service maps each code to a status."""

from __future__ import annotations

# Every code a decode can fail with. The service answers them as 400 (empty_body, corrupt_image),
# 415 (unsupported_media_type), 413 (image_too_large) and 503 (overloaded); see service/errors.py.
DECODE_ERROR_CODES = ("empty_body", "corrupt_image", "unsupported_media_type", "image_too_large", "overloaded")


class DecodeError(ValueError):
    """Image bytes that cannot be decoded (or not now): `code` is stable and documented, `message` for humans.

    `retry_after_s` is set when the refusal is temporary (`overloaded`: the decode memory budget is full).
    """

    def __init__(self, code: str, message: str, *, retry_after_s: float | None = None) -> None:
        if code not in DECODE_ERROR_CODES:
            raise ValueError(f"unknown decode error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
