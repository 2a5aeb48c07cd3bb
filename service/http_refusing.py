"""How service/http_protocol.py answers a request it refuses below the app (a head too large, too slow or
malformed, HTTP it does not speak, a chunked body's bad framing): once every request before it on the connection
has its answer, in the service's JSON error envelope with `Connection: close`, then the connection closes.

- The request id: the refusal echoes the client's own `X-Request-ID` (as the app's answers do, under the same rule)
  whenever its header line arrived whole before the refusal, a head cut off part-way (431, 408, 400) included; else
  it carries a new one. httptools passes a header field on only once the next field's name begins (or the head
  ends): a head too large has the part of its last read within the size limit parsed (what follows a whole field
  there begins the next one), a head too slow one byte of a field name (`FIELD_START`); that parser is used for
  nothing else after. A head llhttp stopped on as malformed cannot be fed on: an id on the line just before a
  malformed field name was never passed on, and is not echoed.
- Counting: each refusal is counted once (`on_reject`). A request answered before its body was read (413, 415,
  503: counted by the app under that code) whose chunked body then proves malformed only has its connection closed:
  the client got the app's answer, and it is not counted a second time under the body's refusal. After a success
  answer the body's refusal is the request's only one, and is counted.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable
from typing import Any

import httptools
from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from . import http_refusals as refusals
from .http_head import Refusal
from .http_requests import TrackedHttpToolsProtocol
from .middleware import REFUSED_BELOW_APP

log = logging.getLogger(__name__)

RejectHook = Callable[[str], None]
FIELD_START = b"x"  # one byte of a header field name: httptools then passes on the whole field before it


def ignore_reject(_code: str) -> None:
    """The default `RejectHook`: refusals are not counted anywhere."""


class Refused(Exception):
    """Raised from a parser callback to stop httptools; the refusal is in `_refusal`."""


class RefusingHttpToolsProtocol(TrackedHttpToolsProtocol):
    """The tracked httptools protocol that answers a refusal decided below the app in order, with the request's
    own id where it was seen, counts it once, and closes the connection."""

    on_reject: RejectHook = staticmethod(ignore_reject)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # between requests or inside a head (not yet `on_headers_complete`)
        self._begun = False  # the current request has begun: uvicorn's `headers` are its own, not an earlier one's
        self._refusal: Refusal | None = None  # decided, waiting for earlier answers to go out
        self._refused_id: str | None = None  # the refused request's own X-Request-ID, where it was seen
        self._reading_for_id = False  # the parser is fed only to find a refused head's X-Request-ID
        # Requests whose own answer was an error (counted by the app): a refusal of their body only closes.
        self._error_answers: weakref.WeakSet[RequestResponseCycle] = weakref.WeakSet()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun = True

    def on_message_complete(self) -> None:
        self._begun = False
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._refusal is not None:
            self._refuse()  # the answers before it are out (or the next pipelined one started: it waits)

    # -- deciding ---------------------------------------------------------------------------------------------
    def _refuse_with(self, refusal: Refusal, unparsed: bytes = b"") -> None:
        """Refuse the current request with `refusal`. `unparsed`: bytes httptools has not parsed and may, for the
        head's X-Request-ID (`_seen_request_id`)."""
        self._refusal, self._refused_id = refusal, self._seen_request_id(unparsed)
        self._refuse()

    def _seen_request_id(self, unparsed: bytes = b"") -> str | None:
        """The current request's own X-Request-ID where the middleware would echo it, if its line arrived whole;
        else None. Inside a head, `unparsed` is parsed first (never from a parser callback: httptools cannot be fed
        there), so that httptools passes on the whole fields it holds."""
        if unparsed and self._in_head:
            self._reading_for_id = True  # the head cannot end here (see `on_headers_complete`): nothing else runs
            with contextlib.suppress(httptools.HttpParserError):  # malformed, or stopped: the fields passed on stay
                self.parser.feed_data(unparsed)
        return refusals.incoming_request_id(self.headers) if self._begun else None

    def _watch_answer(self) -> None:
        """Note whether the new request's own answer is an error: one whose chunked body then proves malformed has
        been refused, and counted, by the app already."""
        cycle = self.cycle
        if cycle is None or cycle.scope is not self.scope:
            return  # no new request (an upgrade)
        send, errors = cycle.send, self._error_answers

        async def noting_send(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                errors.add(cycle)
            await send(message)

        cycle.send = noting_send  # type: ignore[method-assign]  # `run_asgi` hands the app `self.send`

    # -- answering --------------------------------------------------------------------------------------------
    def _refuse(self) -> None:
        """Send the pending refusal once every request before it on this connection has its answer; until then
        read nothing more. A request refused inside its body (a bad chunk, too much framing) is `self.cycle`: the
        refusal is its answer, so it is taken out of the queue when pipelined behind another (its app never runs),
        or cut off when running (its app sees a disconnect)."""
        refused = None if self._in_head else self.cycle
        if refused is not None:
            for item in [item for item in self.pipeline if item[0] is refused]:
                self.pipeline.remove(item)
        # Wait for each earlier request's answer, and for the refused request's own if it has begun (an answer
        # given before its body was read, 413 or 503): a refusal cannot cut into a response.
        if any(not cycle.response_complete and (cycle is not refused or cycle.response_started)
               for cycle in self._cycles()):
            self.flow.pause_reading()
            return
        assert self._refusal is not None
        answered = refused if refused is not None and refused.response_started else None
        self._reject(*self._refusal, answered=answered)

    def _reject(self, status: int, code: str, message: str, answered: RequestResponseCycle | None = None) -> None:
        """Answer an error outside any request cycle (no app involved) and close the connection; `answered`: the
        refused request, which already has its answer, so the connection is only closed."""
        if self.transport.is_closing():
            return
        for cycle in self._cycles():  # the app of a refused request sees a disconnect: this refusal, counted here
            if not cycle.response_complete:
                cycle.scope.setdefault("state", {})[REFUSED_BELOW_APP] = status
        self._disconnect_cycles()  # a refused request whose app runs must not answer too (nor write after close)
        if answered is not None:
            log.info("closed a connection after its answer: %s %s", status, code)
            if answered not in self._error_answers:  # an error answer was counted under its own code
                self.on_reject(code)
            self.transport.close()
            return
        log.info("refused a connection's request: %s %s", status, code)
        self.on_reject(code)
        self.transport.write(refusals.envelope(status, code, message, self._refused_id))
        self.transport.close()
