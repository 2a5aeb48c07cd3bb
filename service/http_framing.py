"""Counting a chunked body's framing (chunk-size lines, chunk extensions, trailer fields) between the parser's
feeds (service/http_protocol.py).

httptools (llhttp) parses a chunked body's framing with no limit, and joins a trailer field's pieces on every read,
as it does a header's: 98 MiB of trailer fields, or one 46 MiB value, cost gigabytes and seconds of the event loop.
Inside a chunked body the protocol feeds httptools at most `limit` bytes at a time, and `FramingMeter` counts the
non-body bytes of each feed, so that framing in a row is refused before httptools has parsed much more of it.

And the body of a request whose upgrade the server does not take: httptools skips it, as though another protocol
followed the head, and parsed what came next as a request (the body smuggled one through); `body_parser` makes a
parser that starts inside that body instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httptools

from .http_head import Refusal


@dataclass
class FramingMeter:
    """The current request's framing in a row, counted per feed of at most `limit` bytes.

    httptools does not say where in a feed the body bytes were, so the count restarts at each feed that carried some
    (with that feed's framing), and adds the whole of each feed that carried none. Framing in a row (a chunk
    extension, or trailer fields: no body byte comes after the last chunk) is so refused after at most twice the
    limit, three times when it began in the head's feed, which is not counted. A legitimate body is never: its
    chunk-size lines are a few bytes between data, so a feed of `limit` bytes always carries some data."""

    limit: int
    chunked: bool = False  # the current request's body is chunked (any other transfer coding is refused)
    framing: int = 0  # non-body bytes since the last feed that carried body bytes
    body_in_feed: int = 0  # body bytes httptools passed on from the current feed
    head_ended_in_feed: bool = False  # a head ended inside the current feed (its body's framing is not counted)
    length_left: int = 0  # bytes still to come of the current request's body framed by a Content-Length

    def head_ended(self, headers: list[tuple[bytes, bytes]]) -> None:
        """A head ended inside the current feed; `headers` (names in lower case) frame its body."""
        self.chunked = any(name == b"transfer-encoding" for name, _ in headers)
        self.length_left = 0 if self.chunked else content_length(headers)
        self.head_ended_in_feed = True

    def body(self, size: int) -> None:
        """The parser passed on `size` bytes of a body."""
        self.body_in_feed += size
        self.length_left = max(0, self.length_left - size)

    def start_feed(self) -> None:
        """A feed is about to be parsed."""
        self.body_in_feed, self.head_ended_in_feed = 0, False

    def count(self, size: int, in_head: bool) -> Refusal | None:
        """Count the non-body bytes of the feed of `size` bytes just parsed (`in_head`: it ended inside a head):
        the refusal when more than `limit` came in a row inside a chunked body, else None."""
        if in_head or not self.chunked or self.head_ended_in_feed:
            self.framing = 0
            return None
        framing = size - self.body_in_feed
        self.framing = framing if self.body_in_feed else self.framing + framing
        if self.framing <= self.limit:
            return None
        return (431, "headers_too_large",
                f"chunked body framing (chunk extensions, trailer fields) longer than {self.limit} bytes")


def feed_end(data: bytes, start: int, limit: int | None) -> int:
    """Where the parser's next feed of `data` from `start` ends: just past the next blank line (CRLF CRLF), which
    every request head ends with (llhttp takes no bare LF), so that a feed holds at most one head's end (and one
    more whose blank line began in the feed before); and at most `limit` bytes on (None: no limit). A body framed
    by a Content-Length is not searched: it is fed by its length (`FramingMeter.length_left`)."""
    stop = len(data) if limit is None else min(len(data), start + limit)
    blank = data.find(b"\r\n\r\n", start, stop)
    return stop if blank < 0 else blank + 4


def content_length(headers: list[tuple[bytes, bytes]]) -> int:
    """A parsed head's Content-Length (names in lower case; llhttp let only digits, and one value, through), or 0."""
    return int(next((value for name, value in headers if name == b"content-length"), b"0"))


def skipped_body(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """For a request whose upgrade is not taken (httptools skipped its body: another protocol would follow its head),
    a head that frames a body as `headers` (names in lower case) frame it; None when it has no body."""
    if any(name == b"transfer-encoding" for name, _ in headers):
        return b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"  # any other coding was refused
    length = content_length(headers)
    return b"PUT / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % length if length else None


class BodyFirst:
    """The callbacks of a parser that takes over inside a request's body (`body_parser`): the head it is primed with
    goes nowhere, then every callback goes to the connection's protocol, the body's and every later request's."""

    def __init__(self, protocol: Any) -> None:
        self._protocol, self._priming = protocol, True

    def on_message_begin(self) -> None:
        if not self._priming:
            self._protocol.on_message_begin()

    def on_url(self, url: bytes) -> None:
        if not self._priming:
            self._protocol.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._priming:
            self._protocol.on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._priming:
            self._priming = False  # the body starts here
        else:
            self._protocol.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._protocol.on_body(body)

    def on_message_complete(self) -> None:
        self._protocol.on_message_complete()


def body_parser(protocol: Any, head: bytes) -> httptools.HttpRequestParser:
    """A parser for `protocol` that starts inside a body framed as `head` (`skipped_body`) says."""
    parser = httptools.HttpRequestParser(BodyFirst(protocol))
    parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn's own parser
    parser.feed_data(head)
    return parser
