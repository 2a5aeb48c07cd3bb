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
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError

T = TypeVar("T")


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
            remaining = started + self.timeout_s + received / self.min_rate - time.monotonic()
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
