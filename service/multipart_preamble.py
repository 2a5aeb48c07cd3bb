"""A multipart body's preamble, skipped before the multipart parser sees the body.

RFC 2046 5.1.1 lets a multipart body begin with a preamble, text before its first delimiter line that a MIME reader
ignores (`This is a multi-part message in MIME format.`, which mail tools write). python-multipart 0.0.x has no
preamble: after any leading line ends it wants the delimiter at once, so such an upload was refused as invalid
multipart data. Here the stream is handed on from its first delimiter line: `--boundary` at the start of the body,
or right after a CRLF (the RFC's rule: the boundary compared with the start of each line, and the CRLF before it
part of the delimiter). Only CRLF line ends are looked for, as python-multipart reads only those between parts: a
preamble ended by a bare LF still reaches the parser, which refuses it as before.

A body that starts with its delimiter, as every browser and HTTP library sends it, is passed on read by read,
untouched and uncopied; a preamble costs one copy of the rest of the read it ends in. Reads without a delimiter line
are held until one arrives or `MAX_PREAMBLE_BYTES` pass; a body with no delimiter line beginning within them (or
none at all) is handed on whole, so the parser answers it exactly as without this step.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

# A preamble is a line or two for readers that do not know MIME; a longer run of bytes before the first delimiter is
# not one, and is left to the parser, which refuses it.
MAX_PREAMBLE_BYTES = 16 * 1024


def handed_on_from(held: bytes | bytearray, delimiter: bytes, start: int = 0) -> int | None:
    """Where the body in `held` is handed on from: its first delimiter line (`delimiter` is `--boundary`) after a
    CRLF, or 0 (all of it) when the body starts with that line or the first one ends a bare LF; None when there is
    none yet. `start`: where a match after a line end may begin, the LF included."""
    if held.startswith(delimiter):
        return 0
    found = held.find(b"\n" + delimiter, start)
    if found < 0:
        return None
    # A bare LF is not a line end between parts for python-multipart: the body goes on whole, refused as before
    # (a delimiter line after a CRLF further on must not be taken for the first, skipping a part).
    return found + 1 if found and held[found - 1] == 0x0D else 0


async def without_preamble(stream: AsyncIterator[bytes], boundary: bytes,
                           limit: int = MAX_PREAMBLE_BYTES) -> AsyncIterator[bytes]:
    """`stream`, a multipart body with `boundary`, from its first delimiter line on; unchanged when none begins
    within its first `limit` bytes."""
    delimiter = b"--" + boundary
    held = bytearray()  # the reads so far, while they show no delimiter line and the limit is not passed
    searched = 0  # no match after a line end begins in held[:searched]
    async for chunk in stream:
        if held:
            held += chunk  # a bytearray: tiny reads (a chunked body's) cost linear time, not quadratic
        body = held or chunk
        start = handed_on_from(body, delimiter, searched)
        if start is None and len(body) < limit + len(delimiter):
            if body is chunk:
                held += chunk
            searched = max(0, len(body) - len(delimiter))  # a match may straddle the next read
            continue
        # From the delimiter line; all of it when none begins within the limit, wherever the reads split.
        start = 0 if start is None or start > limit else start
        yield chunk if start == 0 and body is chunk else bytes(memoryview(body)[start:])  # no preamble: uncopied
        break
    else:  # the body ended while looking: all of it (nothing, for an empty body)
        if held:
            yield bytes(held)
        return
    async for chunk in stream:
        yield chunk
