"""A real HTTP server on a loopback port, serving a directory from a background thread."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

from testkit.http_stub import serving


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass


@contextlib.contextmanager
def serve(root: Path) -> Iterator[str]:
    """Serve `root` over HTTP on 127.0.0.1 from a background thread; yields the base URL."""
    with serving(functools.partial(_QuietHandler, directory=str(root))) as url:
        yield f"{url}/"
