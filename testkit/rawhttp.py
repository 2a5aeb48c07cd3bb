"""HTTP/1.1 by hand on raw sockets, for clients that misbehave on purpose (stalled, cut off, oversized) where an
HTTP library would refuse or repair the request."""

from __future__ import annotations

import contextlib
import socket
import time


def split_url(url: str) -> tuple[str, int]:
    """Host and port of an `http://host:port` URL."""
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def connect(url: str, timeout: float = 10.0, *, nodelay: bool = False) -> socket.socket:
    """A TCP connection to the server at `url`. `nodelay`: every write goes out as its own segment (so, on
    loopback, arrives as its own read), for tests that place read boundaries on purpose."""
    sock = socket.create_connection(split_url(url), timeout=timeout)
    if nodelay:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def http_request(head: str, body: bytes = b"") -> bytes:
    """A request in bytes; `head` is the request line and headers without the final blank line."""
    return head.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body


def read_response(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes (or `timeout`), and how long that took."""
    sock.settimeout(timeout)
    t0 = time.perf_counter()
    out = b""
    with contextlib.suppress(OSError):  # a reset after the answer still leaves the answer
        while chunk := sock.recv(65536):
            out += chunk
    return out, time.perf_counter() - t0


def status_of(raw: bytes) -> int:
    """The status code of a raw HTTP/1.1 response (0 when there is none)."""
    parts = raw.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() else 0


def read_responses(sock: socket.socket, count: int, timeout: float) -> list[tuple[int, bytes, bytes]]:
    """The next `count` responses on a keep-alive connection, each (status, head, body), framed by
    Content-Length; fewer when the server closes or `timeout` passes first."""
    sock.settimeout(timeout)
    buf, out = b"", []
    with contextlib.suppress(OSError):
        while len(out) < count:
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                               if line.lower().startswith(b"content-length:")), 0)
                if len(rest) >= length:
                    out.append((status_of(head), head, rest[:length]))
                    buf = rest[length:]
                    continue
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    return out
