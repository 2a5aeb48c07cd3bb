"""HEAD served as GET, and the `Allow` of a 405 saying so.

HTTP asks every server to answer HEAD wherever it answers GET (RFC 9110 §9.3.2), and monitors and `curl -I` send
it; FastAPI registers its GET routes for GET alone, so they are routed here instead, by the outermost middleware.
Since the router never learns of HEAD, the 405 it answers for another method lists `Allow: GET`; the `Allow` of a
405 must list every method the resource supports (RFC 9110 §10.2.1), so HEAD is added to it (just after GET) on
the way out.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def allow_with_head(allow: str) -> str:
    """`allow` (an `Allow` value) with HEAD just after GET when it lists GET; else unchanged. Starlette's own routes
    list GET and HEAD from a set, in an order that varies from process to process: placed here, it is always
    "GET, HEAD", whichever process of the service answers."""
    methods = [method.strip() for method in allow.split(",") if method.strip()]
    upper = [method.upper() for method in methods]
    if "GET" not in upper:
        return allow
    methods = [method for method, name in zip(methods, upper, strict=True) if name != "HEAD"]
    methods.insert([method.upper() for method in methods].index("GET") + 1, "HEAD")
    return ", ".join(methods)


def add_head_to_allow(message: Message) -> None:
    """Add HEAD to the `Allow` of a 405's start message, in place, just after GET where it lists GET."""
    headers = MutableHeaders(scope=message)
    allow = ", ".join(headers.getlist("allow"))  # one field as a rule; several read as one list (RFC 9110 §5.3)
    if allow and (widened := allow_with_head(allow)) != allow:
        headers["Allow"] = widened  # replaces every `Allow` field with the one value


class HeadAsGetMiddleware:
    """Outermost: a HEAD request is routed as GET, and a 405 that allows GET allows HEAD too. The server's own
    scope keeps the method HEAD (a copy goes inward), so uvicorn sends the GET answer's headers without its body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_allowing_head(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405:
                add_head_to_allow(message)
            await send(message)

        inner = {**scope, "method": "GET"} if scope["method"] == "HEAD" else scope
        await self.app(inner, receive, send_allowing_head)
