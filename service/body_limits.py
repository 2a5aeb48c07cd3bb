"""The upload's limits, as pure-ASGI middleware (see service/middleware.py): its size, counted as it arrives,
and its content coding."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError
from .middleware import refuse


class BodyLimitMiddleware:
    """413 `payload_too_large` for bodies over `max_bytes`: from Content-Length before reading anything, and by
    counting the streamed bytes (chunked uploads, lying headers) so a body is never read whole. First, 415
    `unsupported_content_encoding` for a body coded other than identity: never decoded (a few KB of gzip can inflate
    to gigabytes, past every limit counted on the wire).

    Not Starlette's `RequestBodyLimitMiddleware` (Starlette 1.x; FastAPI's `max_body_size`): that one refuses a
    declared over-limit length only once the app reads the body or answers, after admission and routing, and
    answers outside the service's JSON envelope (plain text, or FastAPI's `detail`); it also needs a far newer
    FastAPI than the project supports."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _error(self) -> ApiError:
        return ApiError(413, "payload_too_large", f"upload exceeds the limit of {self.max_bytes} bytes")

    @staticmethod
    def _coded(headers: Headers) -> ApiError | None:
        """The refusal of a body's content codings other than identity; None for none, or for no body."""
        length = headers.get("content-length", "0")
        if length.isdigit() and int(length) == 0 and "transfer-encoding" not in headers:
            return None  # `Content-Length: 00` too: a length is digits, any number of leading zeros (RFC 9110 8.6)
        codings = (c.strip().lower() for value in headers.getlist("content-encoding") for c in value.split(","))
        coded = ", ".join(c for c in codings if c not in ("", "identity"))[:60]
        return ApiError(415, "unsupported_content_encoding", f"Content-Encoding {coded!r} is not supported; send "
                        "the body uncompressed", {"Accept-Encoding": "identity"}) if coded else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if (coded := self._coded(headers)) is not None:
            await refuse(coded, scope, receive, send)
            return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await refuse(self._error(), scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Raised inside the handler's body read, answered by the ApiError handler.
                    raise self._error()
            return message

        await self.app(scope, counting_receive, send)
