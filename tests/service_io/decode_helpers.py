"""Hostile uploads for the decoder-guard tests, in-process and over HTTP: a PNG flooded with text chunks."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload and CRC."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def ztxt_flood(chunks: int = 80) -> bytes:
    """A valid 8x8 PNG carrying `chunks` zTXt chunks of 1 MB text each (~1 KB compressed)."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, "PNG")
    png = buf.getvalue()
    text = png_chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"a" * 1_000_000, 9))
    return png[:33] + text * chunks + png[33:]  # after IHDR
