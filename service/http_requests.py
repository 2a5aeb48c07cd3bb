"""The requests of one HTTP connection while they are in the server: each told of a hang-up, and those on their
way answered through a graceful shutdown. service/http_protocol.py builds its limits on top of this.

uvicorn's httptools protocol keeps only the newest request (`self.cycle`) and tells only it of a hang-up: with a
request pipelined behind the running one, the running one went on (its image on the device) and wrote its answer to
the closed transport. Its graceful shutdown closed every connection without a request in progress at once, so a
request just sent on a connection accepted an instant earlier (or on an idle keep-alive one) was lost unanswered,
also at each worker of a SIGHUP restart. And a request that asked for `100 Continue` and was answered before it
was told to continue kept its connection, whose next bytes may be that body or the client's next request
(`_close_unless_continued`); an HTTP/1.0 client was sent `100 Continue`, which it reads as its answer.

Pipelined requests are taken one at a time, as nginx and Go's net/http take them: uvicorn parsed every request of a
read at once, made a request cycle and scope (about 2.3 KB) for each and queued them all, and resumed reading after
every answer, so a client that wrote megabytes of tiny pipelined requests and read no answer cost the server 70
times that in memory and seconds of the event loop. Here, once a request waits behind the running one, the parser
stops (service/http_protocol.py feeds it a read a piece at a time) and the rest of the read is held as raw bytes
(`_held`), then parsed when that request starts; reading pauses once `HELD_LIMIT` bytes are held (`HeldFlow`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn._types import ASGI3Application, ASGISendEvent
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from .middleware import CLIENT_GONE

# How long a connection without a request in progress may still bring one once a graceful shutdown has begun: a
# request a client sent as the shutdown began arrives well within it (a round trip), and connections that send
# nothing more hold the shutdown no longer than this.
SHUTDOWN_GRACE_S = 1.0
# Bytes a connection may hold unparsed behind a queued request before reading pauses: uvicorn's own high-water mark
# for a request body. Reading goes on below it (a hang-up is only seen while reading), so a connection holds at most
# this plus one read.
HELD_LIMIT = HIGH_WATER_LIMIT
HELD_PIECE = 16 * 1024  # held bytes are parsed this many at a time


class HeldFlow(FlowControl):
    """uvicorn's flow control whose `resume_reading` (called after every answer, and by every `receive()`) waits
    while `full()` says the connection holds all it may of unparsed bytes."""

    def __init__(self, transport: asyncio.Transport, full: Callable[[], bool]) -> None:
        super().__init__(transport)
        self._full = full

    def resume_reading(self) -> None:
        if not self._full():
            super().resume_reading()


class TrackedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol that knows every request of its connection in the server, tells each of a
    hang-up, and gives a connection `SHUTDOWN_GRACE_S` to bring a request once a graceful shutdown begins."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._running: RequestResponseCycle | None = None  # the request whose app runs (`self.cycle` is the newest)
        self._shutting_down = False  # a graceful shutdown has begun: every answer closes the connection
        self._held = bytearray()  # read but not parsed: it follows a request queued behind the running one

    def _head_started(self) -> bool:
        """Whether part of the next request's head has arrived (a subclass that counts heads knows)."""
        return False

    # -- pipelined requests, one at a time --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = HeldFlow(transport, self._held_full)  # before any request cycle takes it

    def data_received(self, data: bytes) -> None:
        if self._held or self.pipeline:
            self._hold(data)  # a request waits behind the running one: this read waits behind it, unparsed
            return
        taken = self._parse(data)
        if taken < len(data):
            self._hold(memoryview(data)[taken:])

    def _parse(self, data: bytes) -> int:
        """Parse a read (or held bytes): how many of its bytes were taken; the rest follows a request queued behind
        the running one. A subclass feeds the parser a piece at a time to find that point; uvicorn takes it all."""
        super().data_received(data)
        return len(data)

    def _hold(self, data: bytes | memoryview) -> None:
        """Keep `data` unparsed until the queued request starts; stop reading once `HELD_LIMIT` is held."""
        if self.transport.is_closing():
            return
        self._held += data
        if self._held_full():
            self.flow.pause_reading()

    def _held_full(self) -> bool:
        return len(self._held) >= HELD_LIMIT

    def on_response_complete(self) -> None:
        super().on_response_complete()  # the queued request, if any, starts
        # The held bytes, up to the next request queued behind the one just started. A piece at a time: each answer
        # then copies a piece, not all that is held (deleting a bytearray's front moves no bytes).
        while self._held and not self.pipeline and not self.transport.is_closing():
            taken = self._parse(bytes(self._held[:HELD_PIECE]))
            del self._held[:taken]
            if not taken:  # never expected; an endless loop here would stop the server
                break
        if not self._held_full() and not self.transport.is_closing():
            self.flow.resume_reading()  # uvicorn's call came while it was full

    # -- requests in the server -------------------------------------------------------------------------------
    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        self._running = cycle  # uvicorn keeps only the newest request, `self.cycle`, which may be a queued one
        super()._start_asgi_task(cycle, app)

    def _cycles(self) -> list[RequestResponseCycle]:
        """This connection's requests in the server, oldest first: the one whose app runs, then those queued."""
        queued = [cycle for cycle, _ in reversed(self.pipeline)]  # uvicorn appends on the left, pops on the right
        return queued if self._running is None else [self._running, *queued]

    def _disconnect_cycles(self) -> None:
        """Tell every unanswered request that its client is gone: its `receive()` returns http.disconnect (which
        `while_connected` waits for, to skip its image) and its answer is not written."""
        for cycle in self._cycles():
            if not cycle.response_complete:
                cycle.disconnected = True
                cycle.scope.setdefault("state", {})[CLIENT_GONE] = True  # its answer, if any, is not counted as sent
                cycle.message_event.set()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is None or cycle.scope is not self.scope:
            return  # no new request (an upgrade): uvicorn made no cycle for this head
        if self._shutting_down:
            cycle.keep_alive = False  # answered, then closed (`shutdown`)
        if cycle.waiting_for_100_continue and cycle.scope["http_version"] == "1.0":
            # HTTP/1.0 has no 1xx: a `100 Continue` would be read as the final answer. RFC 9110 10.1.1 (MUST ignore
            # the expectation) and 15.2 (MUST NOT send it); uvicorn sent it to any version.
            cycle.waiting_for_100_continue = False
        if cycle.waiting_for_100_continue:
            _close_unless_continued(cycle)

    def connection_lost(self, exc: Exception | None) -> None:
        # uvicorn marks only `self.cycle`: with a request pipelined behind the running one, that is the queued one,
        # and the running one would go on to the device and then write to the closed transport (RuntimeError).
        self._disconnect_cycles()
        super().connection_lost(exc)

    # -- graceful shutdown --------------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """uvicorn's graceful shutdown of this connection (it has stopped listening): a request in progress is
        answered and the connection closed after it; one without gets `SHUTDOWN_GRACE_S` to bring its request."""
        self._shutting_down = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
        elif not self.transport.is_closing():
            self.loop.call_later(SHUTDOWN_GRACE_S, self._shutdown_grace_over)

    def _shutdown_grace_over(self) -> None:
        """Close the connection if no request came in the grace; part of a head keeps the head deadline."""
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return
        if not self._head_started():
            self.transport.close()


def _close_unless_continued(cycle: RequestResponseCycle) -> None:
    """Close the connection after the answer of a request that asked for `100 Continue` if it is answered before it
    was told to continue (a refusal from its head: 401, 413, 415, 503) and before its whole body arrived.

    Such a client may send its body or not (RFC 9110 10.1.1; curl does not), so the next bytes on the connection may
    be the body or the client's next request: uvicorn kept the connection and took them for the body, so a next
    request sent without the body was swallowed unanswered. `Connection: close` on the answer says the server will not
    read on (RFC 9110 10.1.1, RFC 9112 9.6), as Go's net/http does."""
    send = cycle.send

    async def send_or_close(message: ASGISendEvent) -> None:
        if cycle.waiting_for_100_continue and cycle.more_body:  # no `100 Continue` went out: the answer starts here
            cycle.keep_alive = False  # uvicorn adds `Connection: close` to the head and closes after the body
        await send(message)

    cycle.send = send_or_close  # type: ignore[method-assign]  # `run_asgi` hands the app `self.send`
