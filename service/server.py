"""The HTTP server as configured for hostile clients: uvicorn on httptools, with the protocol of
service/http_protocol.py (head-size limit, head deadline, JSON answers for bad heads, bounded linger), and an
app whose failed startup logs one line, not a traceback, and whose requests cut off by the graceful-shutdown
timeout are answered 503 `shutting_down` (`answer_cut_off`); a worker told to stop while it starts lets go of
the listening socket at once (`DrainingServer`); one process serving alone restarts in place on SIGHUP and stops
with the startup failure's status when warm-up refuses its model (`SingleServer`).

The body deadline itself is ASGI middleware (service/connection.py): it needs to answer through the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import socket
from collections.abc import Iterator
from types import FrameType
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError
from .http_protocol import HardenedHttpToolsProtocol, RejectHook
from .log_format import logged_app, uvicorn_log_config
from .middleware import REQUEST_ID_HEADER, error_response, request_id_of
from .settings import Settings

__all__ = ["DrainingServer", "HardenedHttpToolsProtocol", "RejectHook", "SingleServer", "answer_cut_off",
           "build_config", "quiet_startup_failure", "server_options"]
log = logging.getLogger(__name__)


def _noop(_code: str) -> None:
    pass


def server_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn options every `segment-serve` server runs with, one process or each of several workers."""
    return {"host": settings.host, "port": settings.port, "log_level": settings.log_level, "lifespan": "on",
            # uvicorn applies it in this process and again in each worker it spawns (SEGMENT_LOG_FORMAT)
            "log_config": uvicorn_log_config(settings.log_format, settings.log_level),
            # Below compose's 30 s stop_grace_period and the pod's grace minus its preStop sleep. A stalled upload
            # cannot hold it: the body deadline answers it 408 first.
            "timeout_graceful_shutdown": math.ceil(settings.shutdown_timeout_s),
            "proxy_headers": True, "server_header": False}


def build_config(app: Any, settings: Settings, on_reject: RejectHook = _noop) -> uvicorn.Config:
    """The uvicorn configuration `segment-serve` runs with; `on_reject(code)` is called for each refusal made
    outside the app (a head too large, too slow, malformed; a request cut off by the shutdown)."""
    protocol = HardenedHttpToolsProtocol.configured(settings, on_reject)
    served = logged_app(answer_cut_off(app, on_reject), settings.log_format)
    return uvicorn.Config(served, http=protocol, **server_options(settings))


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which lets go of the listening sockets it was given the moment SIGTERM or SIGINT arrives
    while its app is still starting; the drain itself is uvicorn's.

    The workers of a supervisor share one listening socket, which the kernel keeps listening (completing new
    connections into its backlog) while any process holds a descriptor for it. uvicorn closes a worker's copy as
    its shutdown begins, within a tick of the signal (0.1 s, accepting and answering meanwhile), but only once its
    app has started: a worker told to stop while it loaded its model held its copy for as long as that took, and
    the connections made meanwhile waited with no one to accept them, to be reset when the last copy closed. A
    server still starting closes the sockets it was given at once (its event loop does not listen on them yet)
    and then listens on none."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._given: list[socket.socket] = []  # the sockets handed to a worker, until its event loop takes them
        self._taken = False  # the app has started: the event loop listens on them (or is about to)

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        if sockets is not None:
            # uvicorn's startup walks this very list once the app has started: emptied by then, it listens on none.
            self._given = sockets = list(sockets)
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        start_app = self.lifespan.startup

        async def start_app_then_take() -> None:
            await start_app()
            # One store, which the signal handler (run between two bytecodes of this thread) sees before or after:
            # before, it closed the sockets and emptied the list; after, it leaves them to uvicorn's shutdown.
            self._taken = True

        self.lifespan.startup = start_app_then_take  # type: ignore[method-assign]
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if not self._taken:
            for sock in self._given:
                sock.close()
            self._given.clear()


class SingleServer(DrainingServer):
    """The server of a process serving alone (no supervisor). SIGHUP asks for a restart in place: the drain is
    SIGTERM's (no new connections, the requests in flight answered, the queue drained), but the signal is not
    raised again once drained (uvicorn's way for SIGTERM, which ends the process), so that `segment-serve` can
    execute itself again (`restart`). A SIGTERM or SIGINT meanwhile turns the restart into a stop.

    `refuse_model()`: warm-up found the model off the contract after the port opened; the drain is the same, and
    `refused` tells `segment-serve` to exit with the startup failure's status rather than as stopped by a signal."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.restart = False
        self.refused = False

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            previous = signal.signal(signal.SIGHUP, self.handle_restart)
            try:
                yield
            finally:
                signal.signal(signal.SIGHUP, previous)

    def handle_restart(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:  # already stopping (a SIGTERM's drain, or a restart under way): a stop stays a stop
            return
        self.restart = True
        self.should_exit = True
        log.warning("SIGHUP: restarting in place: no new connections, finishing the requests in flight, then "
                    "executing segment-serve again (same PID) to load the model file anew")

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.restart:  # told to stop during a restart's drain: the drain is now this stop's
            self.restart = False
            # uvicorn takes a SIGINT that comes while stopping for a second Ctrl-C, and cuts the drain short;
            # this is the first. (The handler runs on the event loop's thread: nothing reads the flag meanwhile.)
            self.should_exit = False
        super().handle_exit(sig, frame)

    def refuse_model(self) -> None:
        """Stop (drained as on SIGTERM) because the model cannot be served; no signal to raise at the end."""
        self.refused = True
        self.restart = False
        self.should_exit = True


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
            headers = {"Retry-After": "1", "Connection": "close", "X-Content-Type-Options": "nosniff"}
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
