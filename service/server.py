"""The HTTP server as configured for hostile clients: uvicorn on httptools, with the protocol of
service/http_protocol.py (head-size limit, head deadline, JSON answers for bad heads, bounded linger), and an
app whose failed startup logs one line, not a traceback.

The body deadline itself is ASGI middleware (service/connection.py): it needs to answer through the app.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .http_protocol import HardenedHttpToolsProtocol, RejectHook
from .settings import Settings

__all__ = ["HardenedHttpToolsProtocol", "RejectHook", "build_config", "quiet_startup_failure", "server_options"]


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
    before a request exists (head too large, too slow, malformed)."""
    return uvicorn.Config(app, http=HardenedHttpToolsProtocol.configured(settings, on_reject),
                          **server_options(settings))


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
