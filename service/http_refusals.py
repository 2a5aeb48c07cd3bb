"""The answers service/http_protocol.py gives outside any app, and the requests it refuses for what they ask of
HTTP itself rather than of the service.

- HTTP versions: llhttp parses an `HTTP/0.9` or `HTTP/2.0` request line and hands it on as though it were HTTP/1,
  and refuses other well-formed versions (`HTTP/1.2`, `HTTP/3.0`) as it refuses a malformed head. This server
  speaks HTTP/1.0 and HTTP/1.1 only: any other version is 505 `unsupported_http_version` (RFC 9110 15.6.6), HTTP/2's
  connection preface (`PRI * HTTP/2.0`, which llhttp refuses as a malformed head) included.
- Host: llhttp passes on an HTTP/1.1 request without one, and one with two (a proxy that routes by the first while
  the app builds its URLs from another is the gap host-header attacks go through): 400 `bad_request` for either,
  and for a value that is not a host and port, as RFC 9112 3.2 requires of every server.
- Transfer codings: llhttp frames `Transfer-Encoding: gzip, chunked` as chunked and hands on the still-coded bytes
  as the body. Chunked is the only transfer coding this server decodes: any other before it is 501
  `unsupported_transfer_encoding` (RFC 9112 6.1); a list that does not end with chunked leaves the body's length
  unknown, 400 `bad_request` (RFC 9112 6.3), as llhttp would answer it, but before the app starts. An HTTP/1.0
  request has no transfer codings at all: one naming any is faulty framing (RFC 9112 6.1; a proxy that speaks
  HTTP/1.0 frames it by Content-Length or the connection's end, the server by chunks: the smuggling gap), 400.
"""

from __future__ import annotations

import json
import re
import uuid
from http import HTTPStatus

from .http_head import Refusal
from .middleware import SANE_REQUEST_ID

SUPPORTED_VERSIONS = ("1.0", "1.1")
# llhttp's reason for a request line whose version is well-formed but not one it parses (a malformed version has
# another: "Invalid minor version", "Expected dot", ...). httptools passes on only this text, not llhttp's errno.
_LLHTTP_UNSUPPORTED_VERSION = "Invalid HTTP version"
# llhttp's reason for `PRI * HTTP/2.0`, the start of HTTP/2's connection preface (a client with prior knowledge,
# RFC 9113 3.3): llhttp stops there rather than parse it as a request (another version is the one above).
_LLHTTP_HTTP2_PREFACE = "Pause on PRI/Upgrade"
_VERSION_HINT = "send HTTP/1.1 (or HTTP/1.0)"
# A Host header's value: uri-host [":" port] (RFC 9110 7.2, RFC 3986 3.2.2), by its characters: a bracketed IP
# literal or a reg-name (an IPv4 address is one), then an optional port; empty is allowed (a target without one).
_HOST = re.compile(rb"(?:\[[0-9A-Za-z\-._~!$&'()*+,;=:%]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(?::[0-9]*)?")



def unsupported_version(version: str) -> Refusal | None:
    """505 `unsupported_http_version` for a parsed request line's version other than 1.0 and 1.1, else None."""
    if version in SUPPORTED_VERSIONS:
        return None
    return 505, "unsupported_http_version", f"HTTP/{version[:8]} is not supported; {_VERSION_HINT}"


def bare_request_line(version: str, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]],
                      read: bytes) -> Refusal | None:
    """505 `unsupported_http_version` for a request line that ended without a version (`GET /path`, an HTTP/0.9
    simple request), else None. The head so far: llhttp's `version`, `method` and `url`, and its fields passed on
    (`headers`); `read`: the read just parsed.

    llhttp takes such a line for an HTTP/0.9 request with header fields to come: its client sends nothing more and
    waits for the answer (which the head deadline gave, 408). llhttp reads the version as 0.0 until a field begins,
    on a connection's first request; on a later one it still reads the earlier request's, so there the line itself
    must be in the read (a versioned line is longer; a header field line has a colon)."""
    if headers or not read.endswith(b"\n"):
        return None
    line = read[read.rfind(b"\n", 0, len(read) - 1) + 1:].rstrip(b"\r\n")
    if version == "0.0" or line == method + b" " + url:
        return unsupported_version("0.9")
    return None


def unsupported_transfer_coding(version: str, headers: list[tuple[bytes, bytes]]) -> Refusal | None:
    """The refusal of a parsed head's transfer codings (`headers` as uvicorn keeps them, names in lower case): 501
    `unsupported_transfer_encoding` for a coding other than chunked before it, 400 `bad_request` when chunked is
    not the last or the request is HTTP/1.0, else None (chunked alone, or no Transfer-Encoding)."""
    codings = [coding.strip().lower() for name, value in headers if name == b"transfer-encoding"
               for coding in value.split(b",")]
    codings = [coding for coding in codings if coding]  # a list may have empty elements (RFC 9110 5.6.1)
    if not codings:
        return None
    if version == "1.0":
        return 400, "bad_request", "Transfer-Encoding is not HTTP/1.0: send a Content-Length, or use HTTP/1.1"
    if codings == [b"chunked"]:
        return None
    if codings[-1] != b"chunked":
        return 400, "bad_request", "Transfer-Encoding must end with chunked: the body's length is unknown"
    others = b", ".join(codings[:-1]).decode("latin-1")[:60]
    return 501, "unsupported_transfer_encoding", (f"transfer coding {others!r} is not supported; send the body with "
                                                  "Transfer-Encoding: chunked alone, or with a Content-Length")


def bad_host(version: str, headers: list[tuple[bytes, bytes]]) -> Refusal | None:
    """400 `bad_request` for an HTTP/1.1 request without a Host header, any request with more than one, or one
    whose value is not a host and port (RFC 9112 3.2: MUST); else None."""
    hosts = [value for name, value in headers if name == b"host"]
    if len(hosts) > 1:
        return 400, "bad_request", "more than one Host header: send exactly one"
    if not hosts:
        return (400, "bad_request", "an HTTP/1.1 request needs a Host header") if version == "1.1" else None
    if _HOST.fullmatch(hosts[0]) is None:
        return 400, "bad_request", "the Host header is not a host name (or address) and port"
    return None


def parser_refusal(exc: Exception) -> Refusal:
    """The refusal of a head llhttp could not parse: 505 for a version it does not parse and for HTTP/2's
    connection preface, else 400."""
    reason = str(exc)
    if reason == _LLHTTP_UNSUPPORTED_VERSION:
        return 505, "unsupported_http_version", f"this HTTP version is not supported; {_VERSION_HINT}"
    if reason == _LLHTTP_HTTP2_PREFACE:
        return 505, "unsupported_http_version", f"HTTP/2 is not supported (prior knowledge, h2c); {_VERSION_HINT}"
    return 400, "bad_request", "malformed HTTP request"


def incoming_request_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    """A parsed head's own `X-Request-ID`, where the middleware would echo it (short and harmless), else None."""
    value = next((value for name, value in headers if name == b"x-request-id"), b"").decode("latin-1")
    return value if SANE_REQUEST_ID.match(value) else None


def envelope(status: int, code: str, message: str, request_id: str | None = None) -> bytes:
    """A whole response in the service's JSON error envelope (service/middleware.py) with `Connection: close`:
    the answer to a request no app sees; `request_id` is its own (a new one when None)."""
    request_id = request_id or uuid.uuid4().hex
    body = json.dumps({"error": {"code": code, "message": message, "request_id": request_id}}).encode()
    # nosniff as on every answer of the app (service/security_headers.py): the message may quote the client.
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"x-content-type-options: nosniff\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\nx-request-id: {request_id}\r\n\r\n")
    return head.encode("ascii") + body
