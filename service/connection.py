"""The body deadline: a request body must keep arriving, or the request is answered 408 and its connection closed.

The rule is Apache mod_reqtimeout's (`body=…,MinRate=…`): a body has `body_timeout_s` from the request head,
plus one second for every `body_min_rate` bytes received. A client sending at least that rate is never cut off,
whatever the size of its upload; one that stops, or trickles slower, is answered `408 body_timeout` with
`Connection: close`. It is enforced around ASGI `receive()`, where the app waits for the body, so the answer goes
through the app's own error envelope and metrics.

And the other end of it: once the body is in, the only thing `receive()` still brings is the client hanging up.
`while_connected` watches for that while a request waits for the device, and cancels the wait, so the batcher
skips an image whose client has gone instead of spending device time on it (clients that time out and retry
under overload would otherwise have every abandoned copy run).

And the same rule for the answer: `SendDeadline` bounds the bytes a client leaves unread in the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError

T = TypeVar("T")
log = logging.getLogger(__name__)
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST and drops what the kernel still holds


def time_left(started: float, timeout_s: float, moved: float, min_rate: float, now: float) -> float:
    """Seconds left under the rule both deadlines follow: `timeout_s` from `started`, plus one second for every
    `min_rate` bytes `moved` since (received of a body, or taken of an answer)."""
    return started + timeout_s + moved / min_rate - now


class BodyDeadlineMiddleware:
    """408 `body_timeout` when a body falls behind `timeout_s + received / min_rate` seconds."""

    def __init__(self, app: ASGIApp, timeout_s: float, min_rate: float) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.min_rate = min_rate

    def _error(self, received: int) -> ApiError:
        return ApiError(408, "body_timeout",
                        f"request body stopped arriving ({received} bytes received; the deadline is "
                        f"{self.timeout_s:g} s plus 1 s per {self.min_rate:g} bytes)", {"Connection": "close"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        received = 0
        done = False

        async def receive_with_deadline() -> Message:
            nonlocal received, done
            if done:  # body complete: only a disconnect can follow, and waiting for it is the app's choice
                return await receive()
            remaining = time_left(started, self.timeout_s, received, self.min_rate, time.monotonic())
            if remaining <= 0:  # as `wait_for` with no time left: refused without looking for more
                raise self._error(received)
            # `asyncio.timeout`, not `wait_for`: `wait_for` wraps `receive()` in a task of its own, an extra task
            # and loop turn per body read (10.8 -> 6.9 µs on uvloop, measured).
            try:
                async with asyncio.timeout(remaining):
                    message = await receive()
            except TimeoutError:
                raise self._error(received) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                done = not message.get("more_body", False)
            return message

        await self.app(scope, receive_with_deadline, send)


async def while_connected(receive: Receive, work: Awaitable[T]) -> T:
    """`work`, awaited while the client stays connected. If it hangs up first, the wait is cancelled (and with it
    `work`: a queued image is then skipped) and ClientDisconnect is raised, which is answered as 499 without a
    traceback. Call it once the body has been read."""
    task = asyncio.current_task()
    assert task is not None
    left = False

    async def watch() -> None:
        nonlocal left
        while (await receive())["type"] != "http.disconnect":
            pass
        left = True
        task.cancel()

    # One task that waits on the connection, rather than `work` in a task of its own raced against it: the
    # request's own task keeps awaiting `work` directly.
    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if left and task.uncancel() == 0:  # cancelled by the watcher alone, not by a shutdown
            raise ClientDisconnect from None
        raise
    finally:
        watcher.cancel()


class SendDeadline:
    """The body deadline's rule for the bytes a client is sent: once they wait in the transport's buffer, they must
    leave within `timeout_s`, plus one second for every `min_rate` bytes that do; else the connection is aborted.

    uvicorn writes a whole response body into the transport at once, and asyncio keeps whatever the socket does not
    take (and `close()` waits for it): a client that stops reading pinned its answer (90 MB for a large overlay
    PNG) for as long as it kept the connection open. A reader at `min_rate` or faster is never cut off.
    """

    tick_s = 1.0  # how often the buffer is looked at: the bytes that left it in between are the client's credit

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, timeout_s: float,
                 min_rate: float, on_expired: Callable[[], None]) -> None:
        self.loop, self.transport = loop, transport
        self.timeout_s, self.min_rate, self.on_expired = timeout_s, min_rate, on_expired
        self._timer: asyncio.TimerHandle | None = None
        self._since = self._drained = 0.0
        self._pending: int | None = None  # the buffer's size at the last tick

    def watch(self) -> None:
        """Start the deadline unless it runs; it ends by itself once the buffer is empty. Call it when a write
        filled the buffer (`pause_writing`), and when a response is complete or the connection closing."""
        if self._timer is None:  # the buffer is looked at a tick later: most often empty by then, and done with
            self._since, self._drained, self._pending = self.loop.time(), 0.0, None
            self._timer = self.loop.call_later(min(self.tick_s, self.timeout_s), self._check)

    def cancel(self) -> None:
        """Stop it (the connection is gone)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        pending = self.transport.get_write_buffer_size()
        if not pending:
            return  # all taken: the next stall starts afresh
        # A net growth (a later write) hides what left in the same tick: the credit errs on the client's loss.
        if self._pending is not None:
            self._drained += max(0, self._pending - pending)
        self._pending = pending
        now = self.loop.time()
        left = time_left(self._since, self.timeout_s, self._drained, self.min_rate, now)
        if left > 0:
            self._timer = self.loop.call_later(min(self.tick_s, left), self._check)
            return
        log.info("aborted a connection whose client stopped reading: %d bytes unsent after %.0f s (%d taken)",
                 pending, now - self._since, self._drained)
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # closed under us: abort() below still drops the buffer
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        self.transport.abort()
        self.on_expired()
