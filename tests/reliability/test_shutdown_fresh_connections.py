"""A request on a connection the server accepted just before a graceful shutdown began (SIGTERM, or each worker
in turn on a SIGHUP restart) is answered, with `Connection: close`, rather than the connection being closed with
the request unread (real `segment-serve` processes, raw sockets)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from testkit.rawhttp import connect, read_response, read_responses
from testkit.server import ServerProcess

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"


def test_a_request_sent_as_the_shutdown_begins_is_answered(rel_rule_model: Path) -> None:
    with ServerProcess(rel_rule_model, log_level="info") as server:
        server.wait_ready(60)
        fresh = connect(server.url)  # accepted, its request not sent yet (a client between connect and send)
        used = connect(server.url)  # a keep-alive connection idle after one answer
        silent = connect(server.url)  # one that never sends anything
        used.sendall(REQUEST)
        assert [status for status, _, _ in read_responses(used, 1, 10)] == [200]
        time.sleep(0.3)  # both connections are the server's now
        os.kill(server.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while "Shutting down" not in server.log:  # uvicorn has stopped listening and told each connection
            assert time.monotonic() < deadline, server.log
            time.sleep(0.02)
        fresh.sendall(REQUEST)
        answer, _ = read_response(fresh, 10)
        assert answer.startswith(b"HTTP/1.1 200 OK"), answer  # before: b"" (closed with the request unread)
        assert b"connection: close" in answer.lower(), answer
        used.sendall(REQUEST)
        assert read_response(used, 10)[0].startswith(b"HTTP/1.1 200 OK")
        idle = time.monotonic()
        assert server.proc.wait(15) == -signal.SIGTERM  # uvicorn's graceful stop
        assert "drained and stopped" in server.log
        # A connection that sends nothing holds the shutdown only for the grace (not the 10 s head deadline).
        assert time.monotonic() - idle < 5
        assert read_response(silent, 10)[0] == b""
