"""Counting a request head's bytes as they arrive, before httptools parses them (service/http_protocol.py).

httptools (llhttp) has no head-size limit, and joins a header value split over many reads on every read: a 64 MiB
header cost quadratic time on the event loop. `HeadMeter` looks at each byte of a head once and at most `limit` of
them, so the cost stays linear in what arrives, and says when the head passes the limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Refusal = tuple[int, str, str]  # status, error code, message
_LEADING_CRLF = re.compile(rb"[\r\n]*")  # llhttp skips these before a request line: not part of a head


@dataclass
class HeadMeter:
    """The current head's size so far. `inexact`: the head began inside a read after another request's end, so
    its offset is unknown; its size is then a lower bound from what httptools passed on (`resync`), and the
    whole head is checked once parsed (`check_parsed`)."""

    limit: int
    size: int = 0  # bytes of the current head so far
    tail: bytes = b""  # its last 3 bytes: a blank line may be split across reads
    line_done: bool = False  # the request line's LF was among them
    inexact: bool = False

    @property
    def started(self) -> bool:
        """Whether part of a head has arrived."""
        return bool(self.size) or self.inexact

    def reset(self) -> None:
        """A head ended: the next one starts from nothing."""
        self.size, self.tail, self.line_done, self.inexact = 0, b"", False, False

    def resync(self, lower_bound: int, data: bytes, line_done: bool) -> None:
        """The next head began inside `data` and is incomplete: count `lower_bound` bytes of it (what httptools
        passed on); the following reads are counted as bytes again."""
        self.size, self.tail, self.line_done = lower_bound, data[-3:], line_done

    def count(self, data: bytes) -> Refusal | None:
        """Count `data` into the current head: the refusal when the head passes the limit (414 while the request
        line is not done, else 431), or None."""
        limit, seen, tail = self.limit, self.size, self.tail
        start = self._start(data)
        stop = start + limit - seen  # the head may end no later than here
        if tail:  # the blank line split across reads?
            joined = tail + data[:3]
            i = joined.find(b"\r\n\r\n")
            if 0 <= i < len(tail) and i + 4 - len(tail) <= stop:
                return None
        if data.find(b"\r\n\r\n", start, stop) >= 0:
            return None  # the head ends within the limit: httptools parses it
        line_done = self.line_done or data.find(b"\n", start, stop) >= 0
        if seen + len(data) - start > limit:
            if line_done:
                return 431, "headers_too_large", f"request head larger than {limit} bytes"
            return 414, "uri_too_long", f"request line longer than {limit} bytes"
        if start < len(data):
            self.size = seen + len(data) - start
            self.tail = (tail + data[-3:])[-3:]
            self.line_done = line_done
        return None

    def within(self, data: bytes) -> bytes:
        """The part of `data`, a read `count` refused, that is within the limit."""
        return data[:self._start(data) + self.limit - self.size]

    def _start(self, data: bytes) -> int:
        """Where the current head begins in `data`: past the blank lines before a request line, in its first read."""
        if not self.size and not self.inexact and data[:1] in (b"\r", b"\n"):
            return _LEADING_CRLF.match(data).end()  # type: ignore[union-attr]
        return 0

    def check_parsed(self, method: bytes, url: bytes, lower_bound: int) -> Refusal | None:
        """An inexact head, parsed whole: the refusal when what httptools passed on (`lower_bound` bytes of URL
        and headers) was over the limit, or None."""
        if not self.inexact:
            return None
        size = len(method) + 12 + lower_bound + 2  # "M url HTTP/1.1\r\n" ... "\r\n"
        if size <= self.limit:
            return None
        if len(method) + len(url) + 12 > self.limit:
            return 414, "uri_too_long", f"request line longer than {self.limit} bytes"
        return 431, "headers_too_large", f"request head larger than {self.limit} bytes"
