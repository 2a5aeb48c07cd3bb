"""A null HTTP/1.1 server for the load-generator ceiling: it reads every request's whole body and answers a
fixed PNG, doing no other work, so the closed-loop clients' rate against it is what they can drive at most.

    SEGMENT_PORT=8100 NULL_BODY=answer.png python -m bench.null_server

A bare asyncio protocol (uvloop when installed), not an ASGI app: the cheapest server per request, so the
clients, not this process, are what is measured. It listens where `testkit.server.ServerProcess` tells a
server to (SEGMENT_HOST / SEGMENT_PORT) and answers every path, /readyz included, with 200.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

HEAD_END = b"\r\n\r\n"


class NullProtocol(asyncio.Protocol):
    """Keep-alive HTTP/1.1: headers, then Content-Length body bytes counted (not kept), then the answer."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.buffer = b""
        self.body_left = -1  # -1: reading headers
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        while data:
            if self.body_left < 0:
                self.buffer += data
                head, sep, rest = self.buffer.partition(HEAD_END)
                if not sep:
                    return
                self.buffer, data = b"", rest
                self.body_left = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        self.body_left = int(value)
            taken = min(self.body_left, len(data))
            self.body_left -= taken
            data = data[taken:]
            if self.body_left == 0:
                assert self.transport is not None
                self.transport.write(self.answer)
                self.body_left = -1


def response(body: bytes) -> bytes:
    """The fixed answer, headers included (x-batch-size as the service sends it)."""
    head = (f"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: {len(body)}\r\n"
            f"x-batch-size: 1\r\n\r\n")
    return head.encode() + body


async def serve(host: str, port: int, answer: bytes) -> None:
    server = await asyncio.get_running_loop().create_server(lambda: NullProtocol(answer), host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    body = Path(os.environ["NULL_BODY"]).read_bytes() if os.environ.get("NULL_BODY") else b"\x89PNG\r\n\x1a\n"
    try:
        from uvloop import run
    except ImportError:  # plain asyncio is fine, only a little dearer per request
        from asyncio import run
    run(serve(os.environ.get("SEGMENT_HOST", "127.0.0.1"), int(os.environ["SEGMENT_PORT"]),
                      response(body)))


if __name__ == "__main__":
    main()
