"""The hardened httptools protocol in-process, with a fake transport, so that every read boundary is chosen
exactly: the head-size limit holds however a head is split, and the bytes of an oversized head never reach the
parser (what kept the old httptools setup quadratic). The same behaviours over real sockets:
tests/reliability/test_request_heads.py and test_hostile_clients.py."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from service.server import HardenedHttpToolsProtocol
from service.settings import Settings

LIMIT = 1024


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: Any) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class CountingParser:
    """The protocol's httptools parser, counting the bytes fed to it."""

    def __init__(self, parser: Any) -> None:
        self.parser, self.fed = parser, 0

    def feed_data(self, data: bytes) -> None:
        self.fed += len(data)
        self.parser.feed_data(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.parser, name)


async def app(scope: dict, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def feed(pieces: list[bytes]) -> tuple[bytes, bool, int, list[str]]:
    """Each piece as one read on a fresh connection: what was written back, whether the connection was closed,
    how many bytes reached the parser, and the refusals reported."""
    async def run() -> tuple[bytes, bool, int, list[str]]:
        refused: list[str] = []
        cls = HardenedHttpToolsProtocol.configured(Settings(max_header_bytes=LIMIT, header_timeout_s=5),
                                                   refused.append)
        proto = cls(config=Config(app=app, http=cls), server_state=ServerState(), app_state={},
                    _loop=asyncio.get_running_loop())
        transport = FakeTransport()
        proto.connection_made(transport)
        parser = proto.parser = CountingParser(proto.parser)  # type: ignore[assignment]
        for piece in pieces:
            proto.data_received(piece)
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)  # let a request's task answer
        proto.connection_lost(None)
        return bytes(transport.written), transport.closed, parser.fed, refused

    return asyncio.run(run())


def head_of(size: int) -> bytes:
    start, end = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: ", b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


def status(written: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", written)]


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


SPLITS = {"one read": lambda d: [d], "byte by byte": byte_by_byte,
          **{f"blank line cut after {k}": (lambda d, k=k: [d[:len(d) - 4 + k], d[len(d) - 4 + k:]]) for k in (1, 2, 3)},
          "leading blank lines, then the head": lambda d: [b"\r\n\r\n", d],
          "leading blank lines in the same read": lambda d: [b"\r\n\r\n" + d]}


@pytest.mark.parametrize("split", SPLITS, ids=list(SPLITS))
def test_the_limit_holds_at_every_read_boundary(split: str) -> None:
    written, _, _, refused = feed(SPLITS[split](head_of(LIMIT)))
    assert status(written) == [200] and not refused
    written, closed, _, refused = feed(SPLITS[split](head_of(LIMIT + 1)))
    assert status(written) == [431] and closed and refused == ["headers_too_large"]


@pytest.mark.parametrize("chunk, total", [(1, 16 * LIMIT), (100, 64 * LIMIT), (4096, 4 << 20), (1 << 20, 4 << 20)])
def test_an_oversized_head_never_reaches_the_parser(chunk: int, total: int) -> None:
    """A header of `total` bytes in reads of `chunk` bytes: refused once the head passes the limit, and the
    parser was fed no more than the limit, so the cost per connection is bounded whatever the client sends."""
    data = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * total
    written, closed, fed, refused = feed([data[i:i + chunk] for i in range(0, len(data), chunk)])
    assert status(written) == [431] and closed and refused == ["headers_too_large"]
    assert fed <= LIMIT, fed
    body = json.loads(written.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == "headers_too_large"


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_a_body_after_a_blank_line_cut_across_reads_is_not_counted_as_head(cut: int) -> None:
    """The blank line ending a head split across reads, the body (larger than the limit) in the second read."""
    body = b"\0" * (4 * LIMIT)
    data = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    end = data.index(b"\r\n\r\n") + 4
    written, _, _, refused = feed([data[:end - 4 + cut], data[end - 4 + cut:]])
    assert status(written) == [200] and not refused


def test_a_long_request_line_is_414_before_parsing() -> None:
    written, closed, fed, refused = feed([b"GET /" + b"a" * LIMIT + b" HTTP/1.1\r\nHost: x\r\n\r\n"])
    assert status(written) == [414] and closed and refused == ["uri_too_long"] and fed == 0


def test_an_oversized_head_behind_a_request_in_the_same_read() -> None:
    """Its start is not at a read boundary: refused from what the parser passed on, after the first answer."""
    first = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    for pieces in ([first + head_of(LIMIT + 200)], [first + head_of(LIMIT + 200)[:100], head_of(LIMIT + 200)[100:]],
                   [first + b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ", *[b"a" * 100] * 4000]):
        written, closed, _, refused = feed(pieces)
        assert status(written) == [200, 431] and closed and refused == ["headers_too_large"], written[-300:]
