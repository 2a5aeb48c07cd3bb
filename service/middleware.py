"""Pure-ASGI middleware: HEAD as GET (service/head_routing.py), request ids + request metrics, and API-key auth
(the upload's limits: service/body_limits.py).

Pure ASGI (not BaseHTTPMiddleware) so uploads stream through untouched and the size limit can count bytes as
they arrive.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import time
import uuid
from collections.abc import Iterable, Iterator
from http import HTTPStatus

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError
from .metrics import Metrics

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
# An incoming id is echoed only if it is short and harmless in logs and headers.
SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id_of(scope: Scope) -> str | None:
    """The id assigned to this request by RequestContextMiddleware."""
    return scope.get("state", {}).get("request_id")


def error_response(error: ApiError, scope: Scope) -> JSONResponse:
    """The JSON envelope for an ApiError, carrying the request id."""
    return JSONResponse(error.to_body(request_id_of(scope)), status_code=error.status, headers=error.headers)


_REFUSED = "refused"  # the key, in the request's state, of a refusal made by a middleware
# Set in a request's state, to the status answered, by the HTTP protocol when it refuses the request below the app
# (a malformed chunk): the disconnect the app then sees is that refusal, which the protocol counts, not a client
# that went away.
REFUSED_BELOW_APP = "refused_below_app"
# Set in a request's state by the HTTP protocol when its client went away before its answer was written whole
# (service/http_requests.py): the app may still have produced an answer, which no one received.
CLIENT_GONE = "client_gone"


async def refuse(error: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer `error` from a middleware, before the app: RequestContextMiddleware counts it in
    `segment_rejected_total`, as the app's error handler counts the refusals made inside the app."""
    scope.setdefault("state", {})[_REFUSED] = error.code
    await error_response(error, scope)(scope, receive, send)


def route_of(scope: Scope) -> BaseRoute | None:
    """The route that handled the request; for one answered before routing (a 401, a 413 from Content-Length),
    the route the app's router would have chosen (a full match, else one for the path alone, as for a 405), or
    None for an unknown path."""
    route = scope.get("route")
    if route is not None:
        return route
    router = getattr(scope.get("app"), "router", None)  # Starlette puts the app in the scope
    partial = None
    for candidate in _flat_routes(getattr(router, "routes", ())):
        match, _ = candidate.matches(scope)
        if match is Match.FULL:
            return candidate
        if match is Match.PARTIAL and partial is None:
            partial = candidate
    return partial


def _flat_routes(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """`routes` in the router's order, with the routes of the routers included in the app in their place: older
    FastAPI copies those into the app's list, newer keeps each included router whole (`original_router`). They are
    included without a prefix, as the service's are (with one, their routes would not match: "unmatched")."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _flat_routes(included.routes)
        else:
            yield route


class RequestContextMiddleware:
    """Outermost but for the HEAD routing: assigns X-Request-ID, counts every response by route template and
    status, catches crashes."""

    def __init__(self, app: ASGIApp, metrics: Metrics, inflight_paths: Iterable[str] = ("/segment",)) -> None:
        self.app = app
        self.metrics = metrics
        self.inflight_paths = frozenset(inflight_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get(REQUEST_ID_HEADER)
        request_id = incoming if incoming and SANE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        started = False
        plain_error: PlainError | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status, started, plain_error
            if plain_error is not None:  # a plain-text error being turned into the envelope
                if plain_error.add(message):
                    await plain_error.send(scope, send, request_id)
                return
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                if status >= 400 and PlainError.applies(message):
                    plain_error = PlainError(message)
                    return
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        tracked = scope["path"] in self.inflight_paths
        if tracked:
            self.metrics.inflight.inc()
        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            # Cut off by the server's shutdown before answering: `answer_cut_off` (service/server.py) answers it
            # 503 `shutting_down`, which is what it counts as here; not a 500 for the error-rate alert.
            if not started:
                status = 503
            raise
        except ClientDisconnect:
            # The client went away (mid-upload, or while waiting for its answer; a half-close counts: nginx and Go treat
            # an end of input as an abort too): its fault, not ours, so no 5xx (the 5xx alert must not fire on
            # flaky networks) and no traceback. 499 is nginx's "client closed request"; nothing is sent.
            refused_below = scope["state"].get(REFUSED_BELOW_APP)  # the status the protocol answered, if it did
            status = refused_below or 499
            if refused_below is None:
                self.metrics.count_rejection("client_closed")
                log.info("request %s: client closed the connection before it was answered", request_id)
        except Exception:
            log.exception("unhandled error in request %s", request_id)
            if started:
                raise  # half a response is out: only closing the connection (uvicorn does) can end it
            # Answered in our envelope and not re-raised: the connection stays usable (a re-raise made uvicorn
            # close it without `Connection: close`, breaking the client's next request on it).
            error = ApiError(500, "internal_error", "internal server error")
            await refuse(error, scope, receive, send_with_id)
        finally:
            if tracked:
                self.metrics.inflight.dec()
            if status < 400 and scope["state"].get(CLIENT_GONE) and not scope["state"].get(REFUSED_BELOW_APP):
                # Answered, but the client hung up while the answer was made (encoded, rendered) or written: nobody
                # got it, so it is no success for the success ratio or the latency histograms; counted as the hang-ups
                # before the answer are (a refusal, 4xx/5xx, keeps its own count).
                status = 499
                self.metrics.count_rejection("client_closed")
                log.info("request %s: client closed the connection before its answer was written", request_id)
            refused = scope["state"].get(_REFUSED)
            if refused is not None:
                self.metrics.count_rejection(refused)
            # Templates only, and "unmatched" for an unknown path: bounded label values.
            label = getattr(route_of(scope), "path", None) or "unmatched"
            self.metrics.request_done(label, status, time.perf_counter() - t0)


# Codes for the statuses Starlette's own components answer in plain text (else `http_<status>`, as the app's
# HTTPException handler names them).
_PLAIN_ERROR_CODES = {400: "bad_request", 416: "range_not_satisfiable"}


class PlainError:
    """A plain-text error answered by a component the app's error handlers never see, turned into the JSON envelope
    (code by status, the text as message, the other headers kept): Starlette's CORS middleware refuses a preflight
    with 400 `Disallowed CORS origin`, and `FileResponse` (the web page, /static) a bad `Range` with 400 or 416."""

    def __init__(self, start: Message) -> None:
        self.start = start
        self.body = bytearray()

    @staticmethod
    def applies(start: Message) -> bool:
        """Whether a response's start message is that of a plain-text answer."""
        return any(key.lower() == b"content-type" and value.startswith(b"text/plain")
                   for key, value in start.get("headers", ()))

    def add(self, message: Message) -> bool:
        """Take one body message; True once the body is complete. Bounded: these bodies are one short line."""
        if message["type"] == "http.response.body" and len(self.body) < 1024:
            self.body += message.get("body", b"")[:1024]
        return message["type"] != "http.response.body" or not message.get("more_body", False)

    async def send(self, scope: Scope, send: Send, request_id: str) -> None:
        """Send the envelope in place of the plain text (counted in `segment_rejected_total` by its code)."""
        status = self.start["status"]
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in self.start.get("headers", ())
                   if key.lower() not in (b"content-type", b"content-length")}
        message = self.body.decode("utf-8", errors="replace").strip() or _phrase(status)
        error = ApiError(status, _PLAIN_ERROR_CODES.get(status, f"http_{status}"), message, headers)
        scope.setdefault("state", {})[_REFUSED] = error.code
        response = error_response(error, scope)
        response.raw_headers.append((REQUEST_ID_HEADER.lower().encode(), request_id.encode()))
        await response(scope, _no_receive, send)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


async def _no_receive() -> Message:  # a response sent from within `send` never reads the request
    return {"type": "http.disconnect"}


# The request's state key of the fingerprint of the API key it presented (`key_fingerprint`); absent when the service
# has no keys (or the path is public).
KEY_FINGERPRINT = "api_key_fingerprint"
BULK_KEY = "bulk_api_key"


def key_fingerprint(key: bytes) -> bytes:
    """Who a stored result belongs to: the first 16 bytes of the key's SHA-256.

    A plain hash rather than an HMAC under a per-process secret: every worker must compute the same fingerprint
    for a result another stored (a secret shared through the settings would do, but adds a setting for nothing).
    The keys are random secrets, which a hash does not reveal; and the fingerprints sit only beside the uploads
    themselves, in memory or in the service's private folder, so whoever reads them holds the images already."""
    return hashlib.sha256(key).digest()[:16]


def key_fingerprint_of(scope: Scope) -> bytes | None:
    """The fingerprint of the API key this request was let in with; None when the service has no keys."""
    return scope.get("state", {}).get(KEY_FINGERPRINT)


def bulk_key_of(scope: Scope) -> bool:
    """Whether this request was let in with one of `SEGMENT_BULK_API_KEYS`: its work is bulk, whatever it asks."""
    return scope.get("state", {}).get(BULK_KEY, False)


class ApiKeyMiddleware:
    """401 `unauthorized` unless `X-API-Key: <key>` or `Authorization: Bearer <key>` matches a configured key;
    the matched key's fingerprint goes in the request's state (`key_fingerprint_of`), to whom results belong, and
    whether it is one of the `bulk_keys` (`bulk_key_of`)."""

    def __init__(self, app: ASGIApp, keys: Iterable[str], public_paths: Iterable[str],
                 public_prefixes: Iterable[str] = (), bulk_keys: Iterable[str] = ()) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.bulk_keys = frozenset(k.encode() for k in bulk_keys)
        self.fingerprints = {key: key_fingerprint(key) for key in self.keys}  # once, not per request
        self.public_paths = frozenset(public_paths)
        self.public_prefixes = tuple(public_prefixes)

    def _matched(self, headers: Headers) -> bytes | None:
        """The configured key the request presents, or None."""
        # Either header may carry the key: an empty or stale X-API-Key beside a valid bearer token (a proxy or a
        # client library adding its own) must not hide it.
        scheme, _, token = headers.get("authorization", "").partition(" ")
        candidates = [headers.get("x-api-key", ""), token.strip() if scheme.lower() == "bearer" else ""]
        # compare_digest against every key: timing reveals nothing about which prefix matched.
        return next((key for candidate in candidates if candidate for key in self.keys
                     if secrets.compare_digest(candidate.encode(), key)), None)

    def _allowed(self, scope: Scope) -> bool:
        """Whether the request presents a key; if so, its fingerprint is recorded in the request's state."""
        key = self._matched(Headers(scope=scope))
        if key is None:
            return False
        state = scope.setdefault("state", {})
        state[KEY_FINGERPRINT] = self.fingerprints[key]
        state[BULK_KEY] = key in self.bulk_keys
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or not self.keys or scope["method"] == "OPTIONS"
                or scope["path"] in self.public_paths or scope["path"].startswith(self.public_prefixes)
                or self._allowed(scope)):
            await self.app(scope, receive, send)
            return
        error = ApiError(401, "unauthorized", "missing or invalid API key (send X-API-Key or "
                         "Authorization: Bearer)", {"WWW-Authenticate": "Bearer"})
        await refuse(error, scope, receive, send)
