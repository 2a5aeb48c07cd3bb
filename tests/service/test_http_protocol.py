"""The hardened httptools protocol in-process, with a fake transport, so that every read boundary is chosen
exactly: the head-size limit holds however a head is split, and the bytes of an oversized head never reach the
parser (what kept the old httptools setup quadratic); a chunked body's framing (chunk extensions, trailer fields) is
bounded the same way; refusals come in order behind pipelined requests; a hang-up reaches every request of the
connection. The same behaviours over real sockets:
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


async def body_app(scope: dict, receive: Any, send: Any) -> None:
    """Reads the whole body, then answers its size and the request's header names."""
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size, more = size + len(message.get("body", b"")), message.get("more_body", False)
    answer = b"%d %s" % (size, b",".join(name for name, _ in scope["headers"]))
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})


def feed(pieces: list[bytes], asgi: Any = app) -> tuple[bytes, bool, int, list[str]]:
    """Each piece as one read on a fresh connection to `asgi`: what was written back, whether the connection was
    closed, how many bytes reached the parser, and the refusals reported."""
    async def run() -> tuple[bytes, bool, int, list[str]]:
        refused: list[str] = []
        cls = HardenedHttpToolsProtocol.configured(Settings(max_header_bytes=LIMIT, header_timeout_s=5),
                                                   refused.append)
        proto = cls(config=Config(app=asgi, http=cls), server_state=ServerState(), app_state={},
                    _loop=asyncio.get_running_loop())
        transport = FakeTransport()
        proto.connection_made(transport)
        parser = proto.parser = CountingParser(proto.parser)  # type: ignore[assignment]
        for piece in pieces:
            proto.data_received(piece)
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)  # let a request's task answer
        proto.connection_lost(None)
        await asyncio.sleep(0.01)  # let a request's task see the hang-up
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


CHUNKED = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
FRAMINGS = {  # a chunked body whose framing in a row passes the limit many times over
    "trailer fields": b"5\r\nhello\r\n0\r\n" + b"X-T: a\r\n" * (8 * LIMIT // 8) + b"\r\n",
    "one trailer value": b"5\r\nhello\r\n0\r\nX-T: " + b"a" * (64 * LIMIT) + b"\r\n\r\n",
    "chunk extension": b"5;x=" + b"a" * (64 * LIMIT) + b"\r\nhello\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("reads", [0, 100], ids=["one read", "100-byte reads"])
@pytest.mark.parametrize("framing", FRAMINGS, ids=list(FRAMINGS))
def test_chunked_framing_past_the_limit_is_431_before_much_is_parsed(framing: str, reads: int) -> None:
    """Chunk extensions and trailer fields are parsed (trailers buffered) by httptools with no limit: more than
    the limit of them in a row is refused, and the parser is fed no more than about three times the limit."""
    data = CHUNKED + FRAMINGS[framing]
    pieces = [data[i:i + reads] for i in range(0, len(data), reads)] if reads else [data]
    written, closed, fed, refused = feed(pieces, body_app)
    assert status(written) == [431] and closed and refused == ["headers_too_large"], written[:300]
    assert json.loads(written.partition(b"\r\n\r\n")[2])["error"]["code"] == "headers_too_large"
    assert fed <= 3 * LIMIT, fed


@pytest.mark.parametrize("reads", [0, 3, 100], ids=["one read", "3-byte reads", "100-byte reads"])
def test_tiny_chunks_and_small_trailers_are_served_and_trailers_dropped(reads: int) -> None:
    """A body of 1-byte chunks (five framing bytes per body byte, far more framing than the limit in all, but
    never much in a row) and a small trailer section: served, the trailer fields not among the headers."""
    data = CHUNKED + b"1\r\na\r\n" * (2 * LIMIT) + b"0\r\nX-Trailer: 1\r\nX-Other: 2\r\n\r\n"
    pieces = [data[i:i + reads] for i in range(0, len(data), reads)] if reads else [data]
    written, _, _, refused = feed(pieces, body_app)
    assert status(written) == [200] and not refused, written[-300:]
    assert written.endswith(b"%d host,transfer-encoding" % (2 * LIMIT)), written[-100:]


@pytest.mark.parametrize("body, code", [(b"zz\r\nhello\r\n0\r\n\r\n", 400), (FRAMINGS["trailer fields"], 431)],
                         ids=["bad chunk size", "oversized trailers"])
def test_a_refusal_inside_a_pipelined_body_comes_after_the_earlier_answer(body: bytes, code: int) -> None:
    """The refused request was queued behind a GET: the GET is answered first, then the refusal, in place of the
    refused request's own answer."""
    written, closed, _, _ = feed([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + CHUNKED + body])
    assert status(written) == [200, code] and closed, written[-300:]


def test_a_hang_up_reaches_a_running_request_with_another_queued_behind_it() -> None:
    """uvicorn tells only its newest request (the queued one) of a hang-up: the running one, waiting as
    `while_connected` does for the client to leave, must hear of it too."""
    heard: list[str] = []

    async def waiting_app(scope: dict, receive: Any, send: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        heard.append(scope["path"])

    written, _, _, _ = feed([b"GET /waits HTTP/1.1\r\nHost: x\r\n\r\nGET /queued HTTP/1.1\r\nHost: x\r\n\r\n"],
                            waiting_app)
    assert heard == ["/waits"] and not written


def test_framing_past_the_limit_after_an_early_answer_closes_without_a_second_answer() -> None:
    """The app answered before reading the body (as a 413 does); the framing that follows is refused by closing
    the connection, not by a second answer to the same request."""
    data = CHUNKED + FRAMINGS["trailer fields"]
    written, closed, _, refused = feed([data[i:i + 100] for i in range(0, len(data), 100)])
    assert status(written) == [200] and closed and refused == ["headers_too_large"], written[-300:]
