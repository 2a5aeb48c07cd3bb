"""What the raw-socket HTTP tests read off an answer: its headers, its error code, whether the server closed the
connection after it, and the rejection counter."""

from __future__ import annotations

import json
import socket

from testkit.metrics import metric_sum
from testkit.server import ServerProcess


def headers_of(head: bytes) -> dict[str, str]:
    """The header fields of a response head (names in lower case)."""
    return {k.strip().lower(): v.strip() for k, _, v in
            (line.decode("latin-1").partition(":") for line in head.split(b"\r\n")[1:])}


def code_of(body: bytes) -> str:
    return json.loads(body)["error"]["code"]


def closed_by_server(sock: socket.socket, within_s: float = 2.0) -> bool:
    """Whether the server closes the connection within `within_s`, with nothing more sent by it."""
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:  # reset: closed too
        return True


def rejected(server: ServerProcess, code: str) -> float:
    """`segment_rejected_total` for `code` now."""
    return metric_sum(server.metrics(), "segment_rejected_total", reason=code)
