"""uvicorn's httptools protocol with the connection-level limits a hostile client needs.

httptools (llhttp) is fast but has no request-head size limit: a header value split over many reads is
concatenated inside httptools on every read, so a 64 MiB header costs quadratic time on the event loop. Here the
bytes of the current head are counted *before* httptools sees them, so an oversized head is never parsed past the
limit (its part within the limit only for its X-Request-ID, service/http_refusing.py).

What `HardenedHttpToolsProtocol` adds, per connection, every refusal in the service's JSON error envelope with
`Connection: close` (after the answers to any requests before it on the connection, in order, with the client's own
X-Request-ID where it arrived, and counted once: service/http_refusing.py):
- a head-size limit on the request line and headers, blank line included: 431 `headers_too_large`, or 414
  `uri_too_long` when the request line alone is longer; 400 `bad_request` for any other malformed head
  (uvicorn answers these in plain text);
- HTTP/1.0 and HTTP/1.1 only: 505 `unsupported_http_version` for any other version (llhttp took HTTP/0.9 and
  HTTP/2.0 as HTTP/1; a request line without a version, HTTP/0.9's, is refused as soon as it ends), and chunked
  the only transfer coding: 501 `unsupported_transfer_encoding` for another one before it (llhttp passed the
  still-coded bytes on as the body), 400 when chunked is not the last or the request is HTTP/1.0 (llhttp framed it
  by chunks); 400 for an HTTP/1.1 request without a Host header, or any with two (service/http_refusals.py);
- a head deadline: a head must arrive within `header_timeout_s` of the connection opening or of the first byte
  after a keep-alive pause, else 408 `header_timeout`; a connection that sends nothing is closed quietly;
- a limit on a chunked body's framing: httptools parses chunk-size lines, chunk extensions and trailer fields with
  no limit (and joins a trailer field's pieces on every read, as it does a header's), so more than
  `max_header_bytes` of them in a row is 431 `headers_too_large` (`FramingMeter`, service/http_framing.py); trailer
  fields are discarded, not added to the request's headers, which the app has already read;
- a request asking for an upgrade the server does not take (any but a websocket one its app accepts) served as any
  other, its body included (httptools skipped it and parsed what followed as requests: `_not_upgraded`);
- a bounded linger: once a response is sent while its request body is still arriving (503, 413, ...), the rest is
  read and discarded only until the keep-alive timer fires, instead of every byte re-arming that timer;
- pipelined requests taken one at a time: once one waits behind the running one, the rest of its read is held
  unparsed (at most `HELD_LIMIT` bytes and a read) until it starts (`_feed`; service/http_requests.py);
- every request still in the server told of a hang-up, and a graceful shutdown that gives a connection
  `SHUTDOWN_GRACE_S` to bring a request, answered with `Connection: close` (its base, service/http_requests.py);
- a send deadline (`SendDeadline`, service/connection.py): bytes left unread in the transport's buffer must leave
  within `send_timeout_s` plus 1 s per `send_min_rate` bytes, else the connection is aborted (buffer dropped),
  counted as `send_timeout`; uvicorn kept an unread answer, and the connection, for as long as the client liked.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from . import http_refusals as refusals
from .connection import SendDeadline
from .http_framing import FramingMeter, body_parser, feed_end, skipped_body
from .http_head import HeadMeter
from .http_refusing import FIELD_START, Refused, RefusingHttpToolsProtocol, RejectHook, ignore_reject
from .http_requests import SHUTDOWN_GRACE_S
from .settings import Settings

__all__ = ["SHUTDOWN_GRACE_S", "HardenedHttpToolsProtocol", "RejectHook"]


class HardenedHttpToolsProtocol(RefusingHttpToolsProtocol):
    """uvicorn's httptools protocol with a head-size limit, a head deadline, JSON answers for bad heads and for
    HTTP it does not speak, and a bounded linger."""

    header_timeout_s: float = 10.0
    max_header_bytes: int = 16 * 1024
    send_timeout_s: float = 30.0
    send_min_rate: float = 32 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head = HeadMeter(self.max_header_bytes)  # the current head's size so far
        self._completed_in_read = False  # a request ended inside the current read
        self._head_timer: asyncio.TimerHandle | None = None
        self._framing = FramingMeter(self.max_header_bytes)  # a chunked body's framing in a row (see `_feed`)
        self._skipped: bytes | None = None  # the body framing of a request whose upgrade is not taken (`_not_upgraded`)
        self._upgrade_end = 0  # where in its read the head of a request asking for an upgrade ended

    @classmethod
    def configured(cls, settings: Settings, on_reject: RejectHook = ignore_reject) -> type[HardenedHttpToolsProtocol]:
        """A subclass carrying these limits (uvicorn instantiates the protocol class itself)."""
        subclass = type("SegmentHttpProtocol", (cls,), {})
        subclass.apply_limits(settings, on_reject)
        return subclass

    @classmethod
    def apply_limits(cls, settings: Settings, on_reject: RejectHook = ignore_reject) -> None:
        """Set these settings' limits, and the hook told of each refusal, on this class itself."""
        cls.header_timeout_s = settings.header_timeout_s
        cls.max_header_bytes = int(settings.max_header_bytes)
        cls.send_timeout_s, cls.send_min_rate = settings.send_timeout_s, float(settings.send_min_rate)
        cls.on_reject = staticmethod(on_reject)

    # -- bytes in ---------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # a connection that never sends a byte is closed too
        self._send_deadline = SendDeadline(self.loop, transport, self.send_timeout_s, self.send_min_rate,
                                           lambda: self.on_reject("send_timeout"))

    def _parse(self, data: bytes) -> int:
        start = 0
        while start < len(data):  # again only after the head of a request whose upgrade is not taken (`_not_upgraded`)
            start += self._receive(data[start:] if start else data)
            if self.pipeline:  # a request waits behind the running one: the rest waits too (`_hold`)
                break
        return start

    def _receive(self, data: bytes) -> int:
        """Take a read: how many of its bytes were taken (parsed or discarded), all but what follows a request queued
        behind the running one (`_feed`) or the head of a request whose upgrade is not taken."""
        if self.transport.is_closing() or self._refusal is not None:
            return len(data)  # answered (or about to be) and closing: ignore what is still in flight
        if self._in_head and self._head_too_large(data):
            return len(data)
        if not self._lingering():
            self._unset_keepalive_if_required()
        # else: discard the rest of an answered request's body without cancelling the keep-alive timer, so a
        # client trickling bytes cannot keep the connection open after its answer.
        self._completed_in_read = False
        try:
            fed = self._feed(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()  # uvicorn's websocket protocol takes over from the head alone
                return len(data)
            self._not_upgraded()
            return self._upgrade_end  # what follows is parsed again (`_parse`)
        except httptools.HttpParserError as exc:  # `Refused` from a callback arrives wrapped in one too
            if self._refusal is None:
                self.logger.warning("Invalid HTTP request received.")
                self._refuse_with(refusals.parser_refusal(exc))  # the fields httptools passed on before
            else:
                self._refuse()
            return len(data)
        if fed is None:
            return len(data)
        if fed < len(data):
            data = data[:fed]  # the rest follows a request queued behind the running one: not this read's
        if self._in_head and self._begun and self.url and (refusal := refusals.bare_request_line(
                self.parser.get_http_version(), self.parser.get_method(), self.url, self.headers, data)) is not None:
            self._refuse_with(refusal)  # an HTTP/0.9 client waits for its answer: no blank line will come
            return fed
        if self._in_head and self._completed_in_read and self._head.inexact:
            # The next head began inside this read and is incomplete (its request line is done once a header is).
            self._head.resync(self._head_lower_bound(), data, bool(self.headers))
        if self._in_head and (self._head.inexact or not self._completed_in_read):
            self._arm_head_timer()  # part of a head is here (or blank lines): from now on it has `header_timeout_s`
        return fed

    def _feed(self, data: bytes) -> int | None:
        """Parse a read, a piece at a time: how many of its bytes were parsed, or None when it was refused for its
        chunked-body framing. Each piece ends at the read's next blank line (`feed_end`), so that it holds at most one
        request's head end: once a request waits behind the running one, the rest is left (to `_hold`), not parsed
        into more. Inside a chunked body (or a head: such a body may begin in the same read) httptools is fed at most
        `max_header_bytes` at a time, so that the framing is counted between feeds, before httptools has parsed
        much more of it. A body with a Content-Length has no framing: it goes in whole, up to its length."""
        start, framing = 0, self._framing
        while start < len(data):
            if self._in_head or framing.chunked or not framing.length_left:
                end = feed_end(data, start, self.max_header_bytes if self._in_head or framing.chunked else None)
            else:  # the rest of a body of known length (a blank line in an upload is no request's end)
                end = min(len(data), start + framing.length_left)
            framing.start_feed()
            try:
                self.parser.feed_data(data[start:end] if start or end < len(data) else data)
            except httptools.HttpParserUpgrade as exc:
                self._upgrade_end = start + exc.args[0]
                raise
            refusal = framing.count(end - start, self._in_head)
            if refusal is not None:
                self._refuse_with(refusal)
                return None
            start = end
            if self.pipeline and not (self._in_head and self._begun):  # a head part-parsed is finished first
                break
        return start

    def _not_upgraded(self) -> None:
        """A request's upgrade not taken (RFC 9110 7.8 lets a server ignore one: this one takes none but a websocket
        upgrade its app accepts) is served as any other. httptools stopped at the end of its head, skipped its body
        and would parse what follows as a new request: a parser started inside that body takes over, and the rest of
        the read is parsed again (`_parse`). Before, the body was parsed as requests (request smuggling), or,
        in the head's read, dropped with the requests after it."""
        if self._skipped is not None:
            self.parser, self._skipped = body_parser(self, self._skipped), None

    def _head_too_large(self, data: bytes) -> bool:
        """Count `data` into the current head (`HeadMeter`); refuse when the head passes the limit."""
        refusal = self._head.count(data)
        if refusal is None:
            return False
        # Header fields (431, not 414) within the limit are parsed for the head's X-Request-ID: never more.
        self._refuse_with(refusal, self._head.within(data) if refusal[0] == 431 else b"")
        return True

    def _head_lower_bound(self) -> int:
        """The fewest bytes the parts of the current head httptools has passed on can have been sent in."""
        return len(self.url) + sum(len(name) + len(value) + 3 for name, value in self.headers)

    def _lingering(self) -> bool:
        return self.cycle is not None and self.cycle.response_complete and not self._in_head

    # -- parser callbacks -------------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._framing.chunked, self._framing.length_left = False, 0
        if self._completed_in_read:
            self._head.inexact = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            super().on_header(name, value)
        # else: a trailer field, after a chunked body. Discarded (RFC 9110 6.5.1 allows it): uvicorn would append it
        # to the request's headers, which the app has already read, one list entry per field.

    def on_body(self, body: bytes) -> None:
        self._framing.body(len(body))
        super().on_body(body)

    def on_headers_complete(self) -> None:
        if self._reading_for_id:
            raise Refused  # a refused head parsed for its X-Request-ID: never ends within its limit, but never runs
        # An inexact head's start was not counted as bytes: check what was parsed. Then what it asks of HTTP, before
        # uvicorn starts the app on it.
        refusal = (self._head.check_parsed(self.parser.get_method(), self.url, self._head_lower_bound())
                   or refusals.unsupported_version(version := self.parser.get_http_version())
                   or refusals.unsupported_transfer_coding(version, self.headers)
                   or refusals.bad_host(version, self.headers))
        if refusal is not None:
            self._refusal, self._refused_id = refusal, self._seen_request_id()  # a whole head: its own id
            raise Refused  # httptools stops parsing this read
        self._in_head = False
        self._head.reset()
        declined = self.parser.should_upgrade() and not self._should_upgrade()  # an upgrade asked for, not taken
        self._skipped = skipped_body(self.headers) if declined else None
        self._framing.head_ended(self.headers)
        self._cancel_head_timer()
        self._unset_keepalive_if_required()  # a request after a lingering body: not idle any more
        super().on_headers_complete()
        if self._framing.chunked:
            self._watch_answer()  # only a chunked body can still prove malformed after its answer

    def on_message_complete(self) -> None:
        if self._skipped is not None:
            return  # httptools skipped the body of an upgrade not taken, which is still to come (`_not_upgraded`)
        self._in_head, self._completed_in_read = True, True
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._send_deadline.watch()  # what is still unsent, kept open or closing (close() waits for it), is bounded
        super().on_response_complete()  # and a refusal waiting for this answer goes out

    # -- head deadline ----------------------------------------------------------------------------------------
    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._in_head or self._refusal is not None:
            return
        if self._head.started:  # part of a head arrived, then nothing: tell the client why
            self._refuse_with((408, "header_timeout", f"request head not received within {self.header_timeout_s:g} s"),
                              FIELD_START)  # the last whole field of the head is passed on
        else:  # an idle connection: close quietly, as the keep-alive timeout does
            self.transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._send_deadline.watch()  # the buffer passed its high-water mark: the client must take it

    def _head_started(self) -> bool:
        return self._in_head and self._head.started

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._send_deadline.cancel()
        super().connection_lost(exc)  # every request still in the server is told (service/http_requests.py)

    def _reject(self, status: int, code: str, message: str, answered: RequestResponseCycle | None = None) -> None:
        """The base's refusal, with this protocol's timers: no head is awaited any more, and what is left unsent
        must leave within the send deadline."""
        self._cancel_head_timer()
        if not self.transport.is_closing():
            super()._reject(status, code, message, answered)
            self._send_deadline.watch()  # the refusal, or an earlier answer, must leave within the send deadline
