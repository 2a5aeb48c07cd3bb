"""Hardening headers on every response the app sends (pure ASGI, so that it sees the refusals of the other
middlewares too).

- `X-Content-Type-Options: nosniff` everywhere: error bodies echo client text, and a browser that sniffed a
  JSON or PNG answer as HTML would run it.
- The web page (`/` and its files under `/static/`) keeps the API key in localStorage: a Content-Security-Policy
  lets it load and connect to its own origin alone, run no inline or injected script, and be framed by no site
  (clickjacking), with `X-Frame-Options: DENY` for browsers that predate `frame-ancestors`.
- `/docs` and `/redoc` (Swagger UI and ReDoc, served from this service, service/app.py) start themselves with an
  inline script, so they get the framing ban alone.

The answers the HTTP protocol gives before any app runs (service/http_refusals.py: 400, 408, 414, 431, 501, 505) and
the 503 `shutting_down` of a request cut off by the shutdown (service/server.py `answer_cut_off`, which wraps the
app) never pass through here: they carry nosniff themselves.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# What the page uses, and no more (service/static): its modules, stylesheet and fetches are same-origin, images are
# drawn from fetched blobs with createImageBitmap (no img-src needed) and the favicon is `data:,`. Styles set from
# script go through the CSSOM, which style-src does not govern; downloads are links to blob: URLs, which no
# directive governs.
PAGE_POLICY = ("default-src 'self'; img-src 'self' data:; connect-src 'self'; style-src 'self'; script-src 'self'; "
               "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
FRAMING_POLICY = "frame-ancestors 'none'"
PAGE_PATHS = ("/",)
PAGE_PREFIXES = ("/static/",)
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc")


class SecurityHeadersMiddleware:
    """Adds the headers above to each response start, leaving any a route set itself."""

    def __init__(self, app: ASGIApp, page_paths: Iterable[str] = PAGE_PATHS,
                 page_prefixes: Iterable[str] = PAGE_PREFIXES, docs_paths: Iterable[str] = DOCS_PATHS) -> None:
        self.app = app
        self.page_paths = frozenset(page_paths)
        self.page_prefixes = tuple(page_prefixes)
        self.docs_paths = frozenset(docs_paths)

    def _headers(self, path: str) -> dict[str, str]:
        """The headers for a response to `path`."""
        headers = {"X-Content-Type-Options": "nosniff"}
        if path in self.page_paths or path.startswith(self.page_prefixes):
            headers.update({"Content-Security-Policy": PAGE_POLICY, "X-Frame-Options": "DENY"})
        elif path in self.docs_paths:
            headers.update({"Content-Security-Policy": FRAMING_POLICY, "X-Frame-Options": "DENY"})
        return headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        added = self._headers(scope["path"])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in added.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
