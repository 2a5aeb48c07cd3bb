"""A request on a connection the server accepted just before a graceful shutdown began (SIGTERM, or each worker
in turn on a SIGHUP restart) is answered, with `Connection: close`, rather than the connection being closed with
the request unread (real `segment-serve` processes, raw sockets)."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from testkit.server import ServerProcess
from tests.service.svc_helpers import make_rule_model

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"


@pytest.fixture(scope="module")
def rule_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_rule_model(tmp_path_factory.mktemp("rule") / "rule.onnx")


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def _one_answer(sock: socket.socket) -> bytes:
    """One whole answer on a kept-alive connection (its head, and the body its Content-Length says)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_request_sent_as_the_shutdown_begins_is_answered(rule_model: Path) -> None:
    with ServerProcess(rule_model, log_level="info") as server:
        server.wait_ready(60)
        fresh = _connect(server.url)  # accepted, its request not sent yet (a client between connect and send)
        used = _connect(server.url)  # a keep-alive connection idle after one answer
        silent = _connect(server.url)  # one that never sends anything
        used.sendall(REQUEST)
        assert _one_answer(used).startswith(b"HTTP/1.1 200 OK")
        time.sleep(0.3)  # both connections are the server's now
        os.kill(server.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while "Shutting down" not in server.log:  # uvicorn has stopped listening and told each connection
            assert time.monotonic() < deadline, server.log
            time.sleep(0.02)
        fresh.sendall(REQUEST)
        answer = _answer(fresh)
        assert answer.startswith(b"HTTP/1.1 200 OK"), answer  # before: b"" (closed with the request unread)
        assert b"connection: close" in answer.lower(), answer
        used.sendall(REQUEST)
        assert _answer(used).startswith(b"HTTP/1.1 200 OK")
        idle = time.monotonic()
        assert server.proc.wait(15) == -signal.SIGTERM  # uvicorn's graceful stop
        assert "drained and stopped" in server.log
        # A connection that sends nothing holds the shutdown only for the grace (not the 10 s head deadline).
        assert time.monotonic() - idle < 5
        assert _answer(silent) == b""
