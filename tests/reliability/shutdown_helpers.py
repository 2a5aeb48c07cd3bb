"""What the shutdown checks do to a real `segment-serve` over raw sockets: hold an upload in flight on a chosen
process (so that its drain lasts until the test finishes the upload), tell what becomes of a new connection made
meanwhile, and a server whose model load waits while a file exists (a worker still starting when a stop comes)."""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from testkit.rawhttp import connect, read_response, status_of
from testkit.server import ServerProcess
from tests.service.svc_helpers import png_bytes, scene

BODY = png_bytes(scene(64, 48))
SENT_FIRST = 100  # bytes of the upload sent before it is held


@dataclass
class HeldUpload:
    """A POST /segment whose head and first bytes the server `pid` has read; the rest is the test's to send."""

    sock: socket.socket
    pid: int

    def finish(self, timeout: float = 30) -> tuple[int, bytes]:
        """Send the rest of the upload; the status and the body of the answer."""
        self.sock.sendall(BODY[SENT_FIRST:])
        answer, _ = read_response(self.sock, timeout)
        self.sock.close()
        return status_of(answer), answer.partition(b"\r\n\r\n")[2]


def hold_upload(url: str) -> HeldUpload:
    """An upload in flight on whichever process the kernel hands the connection to (its /readyz says which)."""
    sock = connect(url)
    sock.sendall(b"GET /readyz HTTP/1.1\r\nhost: t\r\n\r\n")
    answer = b""
    while b"}" not in answer:  # a keep-alive answer: read up to the end of its JSON body
        chunk = sock.recv(65536)
        assert chunk, answer
        answer += chunk
    pid = int(re.search(rb'"pid":\s*(\d+)', answer).group(1))  # type: ignore[union-attr]
    sock.sendall(b"POST /segment?output=labels HTTP/1.1\r\nhost: t\r\ncontent-type: image/png\r\n"
                 b"content-length: %d\r\n\r\n" % len(BODY) + BODY[:SENT_FIRST])
    return HeldUpload(sock, pid)


def hold_one_on_each(server: ServerProcess, pids: set[int], timeout: float = 30) -> list[HeldUpload]:
    """An upload held on each process of `pids` (new connections until the kernel has handed one to each)."""
    held: list[HeldUpload] = []
    deadline = time.monotonic() + timeout
    while {h.pid for h in held} != pids:
        assert time.monotonic() < deadline, (pids, [h.pid for h in held], server.log)
        upload = hold_upload(server.url)
        if upload.pid in {h.pid for h in held} or upload.pid not in pids:
            upload.sock.close()
        else:
            held.append(upload)
    return held


def new_connection_fate(url: str, wait: float = 3.0) -> str:
    """What becomes of a request on a new connection: 'refused' (never sent: safe to send elsewhere),
    'answered <status>', or 'accepted, unanswered' (taken by the kernel, then nothing within `wait`, or a reset)."""
    try:
        sock = connect(url, timeout=5)
    except ConnectionRefusedError:
        return "refused"
    with sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        except OSError:
            return "accepted, unanswered"
        answer, _ = read_response(sock, wait)
    return f"answered {status_of(answer)}" if status_of(answer) else "accepted, unanswered"


def wait_for_log(server: ServerProcess, text: str, count: int = 1, timeout: float = 60) -> None:
    """Wait until `text` is in the server's log `count` times (the process may have exited meanwhile)."""
    deadline = time.monotonic() + timeout
    while server.log.count(text) < count:
        assert time.monotonic() < deadline, f"{count} x {text!r} not logged:\n{server.log}"
        time.sleep(0.02)


HOLD_LOAD = '''"""Tests only: each model load of this server's processes waits while $TEST_HOLD_MODEL_LOAD exists."""
import os
import sys
import time

_FLAG = os.environ.get("TEST_HOLD_MODEL_LOAD")
if _FLAG:
    from service.core import engine as _engine

    _load = _engine.load_engine

    def _held_load(*args, **kwargs):
        if os.path.exists(_FLAG):
            print(f"model load held [{os.getpid()}]", file=sys.stderr, flush=True)
            while os.path.exists(_FLAG):
                time.sleep(0.05)
        return _load(*args, **kwargs)

    _engine.load_engine = _held_load
'''


def held_load_env(folder: Path) -> tuple[dict[str, str], Path]:
    """The environment of a server whose model loads wait while the returned file exists (absent at first)."""
    (folder / "sitecustomize.py").write_text(HOLD_LOAD)
    flag = folder / "hold-load"
    return {"PYTHONPATH": str(folder), "TEST_HOLD_MODEL_LOAD": str(flag)}, flag
