"""The HTTP server as configured for hostile clients: uvicorn on h11, with the limits httptools cannot enforce.

Why h11 and not uvicorn's default httptools: httptools has no limit on the size of a request head, so a client can
send megabytes of header and the event loop re-scans it as it grows (64 MiB took 5 s and stalled every other
request; cost grows quadratically). h11 refuses a head beyond `max_incomplete_event_size` as soon as its buffer
passes it. The per-request cost of h11 on loopback is measured in docs/RELIABILITY.md.

What this module adds to uvicorn's H11Protocol, all per connection and all answered in the service's JSON
error envelope with `Connection: close`:
- a head-size limit: 431 `headers_too_large` (or 414 `uri_too_long` when the request line alone is too long),
  400 `bad_request` for any other malformed head (uvicorn answers these in plain text);
- a head deadline: a request head must arrive within `header_timeout_s` of the connection opening or of the first
  byte after a keep-alive pause, else 408 `header_timeout` (uvicorn has none; a half-sent head stayed forever);
- a bounded linger: once a response is sent while the request body is still arriving (503, 413, …), the rest is
  read and discarded only until the keep-alive timer fires, instead of every byte re-arming that timer.
The body deadline itself is ASGI middleware (service/connection.py): it needs to answer through the app.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Callable
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import Settings

log = logging.getLogger(__name__)

RejectHook = Callable[[str], None]
_HEAD_END = re.compile(rb"\n\r?\n")  # h11 accepts bare-LF line ends too


def _noop(_code: str) -> None:
    pass


class HardenedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a head deadline, JSON answers for bad heads and a bounded linger."""

    header_timeout_s: float = 10.0
    max_header_bytes: int = 16 * 1024
    on_reject: RejectHook = staticmethod(_noop)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    @classmethod
    def configured(cls, settings: Settings, on_reject: RejectHook = _noop) -> type[HardenedH11Protocol]:
        """A subclass carrying these limits (uvicorn instantiates the protocol class itself)."""
        attrs = {"header_timeout_s": settings.header_timeout_s, "max_header_bytes": settings.max_header_bytes,
                 "on_reject": staticmethod(on_reject)}
        return type("SegmentH11Protocol", (cls,), attrs)

    # -- head deadline ----------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # a connection that never sends a byte is closed too

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:  # part of a head arrived, then nothing: tell the client why
            self._reject(408, "header_timeout", f"request head not received within {self.header_timeout_s:g} s")
        else:  # an idle connection: close quietly, as the keep-alive timeout does
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # already answered and closing: ignore what is still in flight
        if self._lingering():
            # Discard the rest of an answered request's body without cancelling the keep-alive timer, so a
            # client trickling bytes cannot keep the connection open after its answer.
            self.conn.receive_data(data)
            self.handle_events()
            return
        if self.conn.their_state is h11.IDLE:
            self._arm_head_timer()
            if self._head_too_large(data):
                return
        super().data_received(data)

    def _head_too_large(self, data: bytes) -> bool:
        """Refuse a head over the limit. h11's own limit only applies while a head is incomplete: a whole
        oversized head arriving in one read (up to 256 KiB on loopback) would be parsed and accepted."""
        pending = self.conn.trailing_data[0] + data  # h11 keeps an incomplete head below the limit: cheap
        limit = self.max_header_bytes
        if len(pending) <= limit or _HEAD_END.search(pending, 0, limit + 4):
            return False
        if b"\n" not in pending[:limit]:
            self._reject(414, "uri_too_long", f"request line longer than {limit} bytes")
        else:
            self._reject(431, "headers_too_large", f"request head larger than {limit} bytes")
        return True

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a head was parsed (or the connection failed)
            self._cancel_head_timer()

    def _lingering(self) -> bool:
        return (self.cycle is not None and self.cycle.response_complete
                and self.conn.their_state is h11.SEND_BODY)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    # -- malformed or oversized heads -------------------------------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        """Called by H11Protocol when h11 rejects the head; answer in JSON (the size limit is checked first, in
        `_head_too_large`; this is the backstop for h11's own)."""
        if len(self.conn.trailing_data[0]) > self.max_header_bytes:
            self._reject(431, "headers_too_large", f"request head larger than {self.max_header_bytes} bytes")
        else:
            self._reject(400, "bad_request", "malformed HTTP request")

    def _reject(self, status: int, code: str, message: str) -> None:
        """Answer an error outside any request cycle (no app involved) and close the connection."""
        self._cancel_head_timer()
        request_id = uuid.uuid4().hex
        body = json.dumps({"error": {"code": code, "message": message, "request_id": request_id}}).encode()
        reason = {400: "Bad Request", 408: "Request Timeout", 414: "URI Too Long",
                  431: "Request Header Fields Too Large"}[status]
        # Written as bytes, not through h11: its state machine may be in ERROR, or have seen no request.
        head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\nx-request-id: {request_id}\r\n\r\n")
        log.info("refused a connection's request: %s %s", status, code)
        self.on_reject(code)
        self.transport.write(head.encode("ascii") + body)
        self.transport.close()


def build_config(app: Any, settings: Settings, on_reject: RejectHook = _noop) -> uvicorn.Config:
    """The uvicorn configuration `segment-serve` runs with."""
    return uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level, lifespan="on",
        http=HardenedH11Protocol.configured(settings, on_reject),
        h11_max_incomplete_event_size=settings.max_header_bytes,
        # Below compose's 30 s stop_grace_period and the pod's grace minus its preStop sleep. A stalled upload
        # cannot hold it: the body deadline answers it 408 first.
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
        proxy_headers=True, server_header=False,
    )
