"""What the raw-socket HTTP tests read off an answer: its headers, its error code, whether the server closed the
connection after it, and the rejection counter; and the one answer on a socket, and a chunk of a body."""

from __future__ import annotations

import json
import socket

from testkit.metrics import metric_sum, samples
from testkit.rawhttp import read_responses
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


def rejections(server: ServerProcess) -> dict[str, float]:
    """`segment_rejected_total` now, by code."""
    return {dict(labels)["reason"]: value
            for labels, value in samples(server.metrics(), "segment_rejected_total").items()}


def counted_since(before: dict[str, float], server: ServerProcess) -> dict[str, float]:
    """The codes `segment_rejected_total` counted since `before` (`rejections`), with how many of each."""
    return {code: value - before.get(code, 0.0) for code, value in rejections(server).items()
            if value != before.get(code, 0.0)}


def chunk(data: bytes) -> bytes:
    """`data` as one chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def one_answer(sock: socket.socket, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """The one answer the server sends on `sock`: status, headers (lower-case names), body."""
    answers = read_responses(sock, 1, timeout)
    assert len(answers) == 1, answers
    status, head, body = answers[0]
    return status, headers_of(head), body
