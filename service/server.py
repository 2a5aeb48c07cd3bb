"""The HTTP server as configured for hostile clients: uvicorn on httptools, with the protocol of
service/http_protocol.py (head-size limit, head deadline, JSON answers for bad heads, bounded linger), and an
app whose failed startup logs one line, not a traceback, and whose requests cut off by the graceful-shutdown
timeout are answered 503 `shutting_down` (`answer_cut_off`).

The body deadline itself is ASGI middleware (service/connection.py): it needs to answer through the app.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError
from .http_protocol import HardenedHttpToolsProtocol, RejectHook
from .middleware import REQUEST_ID_HEADER, error_response, request_id_of
from .settings import Settings

__all__ = ["HardenedHttpToolsProtocol", "RejectHook", "answer_cut_off", "build_config", "quiet_startup_failure",
           "server_options"]
log = logging.getLogger(__name__)


def _noop(_code: str) -> None:
    pass


def server_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn options every `segment-serve` server runs with, one process or each of several workers."""
    return {"host": settings.host, "port": settings.port, "log_level": settings.log_level, "lifespan": "on",
            # Below compose's 30 s stop_grace_period and the pod's grace minus its preStop sleep. A stalled upload
            # cannot hold it: the body deadline answers it 408 first.
            "timeout_graceful_shutdown": math.ceil(settings.shutdown_timeout_s),
            "proxy_headers": True, "server_header": False}


def build_config(app: Any, settings: Settings, on_reject: RejectHook = _noop) -> uvicorn.Config:
    """The uvicorn configuration `segment-serve` runs with; `on_reject(code)` is called for each refusal made
    outside the app (a head too large, too slow, malformed; a request cut off by the shutdown)."""
    protocol = HardenedHttpToolsProtocol.configured(settings, on_reject)
    return uvicorn.Config(answer_cut_off(app, on_reject), http=protocol, **server_options(settings))


def answer_cut_off(app: ASGIApp, on_reject: RejectHook = _noop) -> ASGIApp:
    """Answer a request that the server stopped before it answered: 503 `shutting_down` with Retry-After and
    `Connection: close`, counted by `on_reject`.

    Requests still running when the graceful-shutdown timeout ends (a queue deeper than the device can run in that
    time) are cancelled by uvicorn, which answered each with a plain-text 500 (no Retry-After, no request id) and
    logged a traceback: a client would not retry what was never served, and a 5xx alert fired on every such
    rollout. A client's hang-up never arrives here (service/connection.py turns it into ClientDisconnect)."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, receive, watched_send)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if started or task is None:
                raise  # half an answer is out: only closing the connection (uvicorn does) can end it
            task.uncancel()  # answered here, as though it had not been cancelled
            request_id = request_id_of(scope)
            log.warning("request %s: stopped by the shutdown before it was answered; 503", request_id)
            on_reject("shutting_down")
            headers = {"Retry-After": "1", "Connection": "close"}
            if request_id:
                headers[REQUEST_ID_HEADER] = request_id
            error = ApiError(503, "shutting_down", "the server is shutting down and stopped this request before it "
                             "was served; retry", headers)
            await error_response(error, scope)(scope, receive, send)

    return wrapped


def quiet_startup_failure(app: ASGIApp) -> ASGIApp:
    """The lifespan already logged `cannot start: <reason>` in one line; drop the traceback Starlette attaches
    to the startup-failure message (kept at debug level)."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return

        async def send_quietly(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and message.get("message"):
                logging.getLogger(__name__).debug("startup failure:\n%s", message["message"])
                message = {**message, "message": ""}
            await send(message)

        await app(scope, receive, send_quietly)

    return wrapped
