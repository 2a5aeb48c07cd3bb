"""JPEG specifics of the decoder: the scan-count and header-segment guards and the libjpeg-turbo fast path.

- Scan guard: a progressive JPEG may repeat scans without limit, and every scan makes libjpeg walk all the
  coefficients of the image again (a 80 KB 2048x2048 file whose last scan is repeated 4,000 times takes ~10 s).
  `count_scans` finds the start-of-scan markers before a single pixel is decoded; more than `MAX_SCANS` is refused.
- Header guard: `header_segments` walks the segments Pillow's header parser walks, in Python, and bounds them.
- Fast path: `decode_rgb` hands clean RGB/greyscale JPEGs to libjpeg-turbo through simplejpeg, which decodes
  at a DCT scale straight into a numpy array, without Pillow's per-row plumbing and copies. The caller asks
  for the scale Pillow's `draft` would pick, so the pixels are identical to the Pillow path's. Anything libjpeg
  only warns about (truncation, damaged entropy data) makes it raise, and the caller then takes the Pillow
  path, so every unusual file keeps exactly the answer it had.
"""

from __future__ import annotations

import re

import numpy as np
import simplejpeg
from PIL import JpegImagePlugin

from .errors import DecodeError

# A standard progressive JPEG has 10 scans (6 for greyscale); encoders that optimise their scan script stay
# below ~20. Each scan costs about 0.55 ns per pixel (measured: a 2048x2048 file whose last scan repeats 4,000
# times takes 9.3 s with Pillow, 0.18 s at 64 scans), so the limit is a budget of scan-pixels, 1e9 (~0.6 s
# on one core), never below 16 scans (a 40 MP photo may have 25) nor above 64.
MAX_SCANS = 64
MIN_SCANS = 16
SCAN_PIXEL_BUDGET = 1_000_000_000

# Marker segments (plus fill bytes) before the first scan: Pillow parses each in Python. Real files carry tens (up
# to ~300 with a large ICC profile and extended XMP split into 64 KB segments); junk bytes between segments are
# skipped byte by byte.
MAX_SEGMENTS = 4096
MAX_JUNK_BYTES = 65536
# Two segments' contents Pillow's header read also walks in Python, measured on an 8x8 JPEG grown to 19 MB (the upload
# limit's size): quantization tables (DQT; ~3 µs a table, and the rest of a segment copied after each, so a 64 KB
# segment of 1,000 tables costs quadratically: 300 segments 0.97 CPU-s) and Photoshop resource blocks (APP13
# "Photoshop 3.0"; ~0.7 µs a 12-byte "8BIM" block: 300 full segments 0.75 CPU-s). A baseline JPEG has 2-4 tables of
# 65-129 bytes, Photoshop writes tens of resource blocks.
MAX_DQT_BYTES = 16384
MAX_PHOTOSHOP_BLOCKS = 4096

_SOS, _EOI = 0xDA, 0xD9
# Markers without a length field: TEM, RSTn, and SOI and EOI.
_NO_LENGTH = {0x01, *range(0xD0, 0xD8)}
_STANDALONE = {0xD8, _EOI, *_NO_LENGTH}
# Markers as Pillow's header parser takes them: those it knows, and those it reads as two bytes alone.
_PILLOW_MARKERS = frozenset(code & 0xFF for code in JpegImagePlugin.MARKER)
_PILLOW_STANDALONE = frozenset(code & 0xFF for code, (*_, handler) in JpegImagePlugin.MARKER.items() if handler is None)
_FILL = re.compile(rb"\xff+")


def scan_limit(pixels: int) -> int:
    """The most scans accepted for an image of `pixels` pixels."""
    return max(MIN_SCANS, min(MAX_SCANS, SCAN_PIXEL_BUDGET // max(1, pixels)))


def count_scans(data: bytes, limit: int = MAX_SCANS) -> int:
    """The number of scans (SOS markers) of the first image in a JPEG stream.

    Counting FF DA pairs is an upper bound: in entropy-coded data every 0xFF byte is followed by 0x00 or a
    restart marker, so FF DA there is always a real marker; only metadata (an EXIF thumbnail, an MPO's second
    picture, arbitrary APPn bytes) can add false hits. Only when that bound exceeds `limit` are the markers
    walked one by one (stopping once past the limit). The pairs are counted with numpy (0.23 ms for a 1 MB
    file, where `bytes.count` takes 1.0 ms).
    """
    values = np.frombuffer(data, dtype=np.uint8)
    ff = np.flatnonzero(values[:-1] == 0xFF)
    rough = int(np.count_nonzero(values[ff + 1] == 0xDA))
    if rough <= limit:
        return rough
    return _walk_scans(data, limit)


def _walk_scans(data: bytes, limit: int) -> int:
    scans, pos, end = 0, 2, len(data)  # after SOI
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return scans  # not at a marker: the structure is broken, let the decoder judge it
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == _EOI:
            return scans
        if marker in _STANDALONE:
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == _SOS:
            scans += 1
            if scans > limit:
                return scans
            pos = _next_marker(data, pos)
    return scans


def _next_marker(data: bytes, pos: int) -> int:
    """Position of the first marker after entropy-coded data (skips stuffed FF00 and restart markers)."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return len(data)
        follower = data[pos + 1]
        if follower != 0x00 and not 0xD0 <= follower <= 0xD7 and follower != 0xFF:
            return pos
        pos += 1 if follower == 0xFF else 2


def header_segments(data: bytes) -> tuple[list[memoryview], memoryview | None]:
    """Walk a JPEG's markers before its first scan as Pillow's header parser does, in Python: on past an
    end-of-image marker, fill bytes and junk, two bytes alone for the markers it reads without a length. Raise
    `DecodeError` (413 `image_too_large`) for more than `MAX_SEGMENTS` segments or `MAX_JUNK_BYTES` of fill and
    junk (a flood of 4.5 M empty APP markers took 11 s). Returns the EXIF segments' payloads (the first with its
    "Exif\\0\\0" signature, the others without: Pillow joins them) and the last MPF index, whose first directories
    Pillow's header read parses too. Also 413 beyond `MAX_DQT_BYTES` of quantization tables or
    `MAX_PHOTOSHOP_BLOCKS` Photoshop resource blocks. Anything malformed is left for the decoder to judge."""
    view, pos, end = memoryview(data), 2, len(data)
    exif: list[memoryview] = []
    mpf, segments, junk, tables, blocks = None, 0, 0, 0, 0
    while pos + 1 < end and segments <= MAX_SEGMENTS and junk <= MAX_JUNK_BYTES:
        if data[pos] != 0xFF:  # junk, skipped a byte at a time
            nxt = data.find(b"\xff", pos)
            nxt = end if nxt < 0 else nxt
            junk, pos = junk + nxt - pos, nxt
            continue
        fill = _FILL.match(data, pos).end() - pos - 1  # fill bytes, a loop turn each
        junk, pos = junk + fill, pos + fill
        marker = data[pos + 1] if pos + 1 < end else _EOI
        if marker == 0x00:  # a stuffed zero
            junk, pos = junk + 2, pos + 2
            continue
        if marker not in _PILLOW_MARKERS or marker == _SOS:  # Pillow fails here, or starts the scan
            return exif, mpf
        segments += 1
        if marker in _PILLOW_STANDALONE:
            pos += 2
            continue
        length = max(2, int.from_bytes(data[pos + 2 : pos + 4], "big"))  # Pillow reads a shorter one as empty
        if pos + 2 + length > end:
            return exif, mpf  # cut short: Pillow fails on it
        payload = view[pos + 4 : pos + 2 + length]
        if marker == 0xE1 and payload[:6] == b"Exif\0\0":
            exif.append(payload[6:] if exif else payload)
        elif marker == 0xE2 and payload[:4] == b"MPF\0":
            mpf = payload[4:]
        elif marker == 0xDB:
            tables += length - 2
        elif marker == 0xED and payload[:14] == b"Photoshop 3.0\0":
            blocks += data.count(b"8BIM", pos + 4, pos + 2 + length)  # each block starts so: at least as many
        if tables > MAX_DQT_BYTES or blocks > MAX_PHOTOSHOP_BLOCKS:
            raise DecodeError("image_too_large", f"the JPEG has more than {MAX_DQT_BYTES} bytes of quantization "
                              f"tables or {MAX_PHOTOSHOP_BLOCKS} Photoshop resource blocks before its first scan")
        pos += 2 + length
    if segments > MAX_SEGMENTS or junk > MAX_JUNK_BYTES:
        raise DecodeError("image_too_large", f"the JPEG has more than {MAX_SEGMENTS} marker segments or "
                          f"{MAX_JUNK_BYTES} bytes of padding before its first scan")
    return exif, mpf


def decode_rgb(data: bytes, min_width: int = 0, min_height: int = 0) -> np.ndarray:
    """H×W×3 uint8 RGB at the smallest libjpeg-turbo scale (n/8) with both sides >= the minimums (0: full).

    Raises ValueError on anything libjpeg reports, warnings included (strict mode).
    """
    return simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=min_width, min_height=min_height,
                                  strict=True)


# EXIF orientation (tag 0x0112) as array operations, the same transposes Pillow's `exif_transpose` applies.
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: a.transpose(1, 0, 2)[:, ::-1],  # rotate 90° clockwise
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: a.transpose(1, 0, 2)[::-1],  # rotate 90° counter-clockwise
}


def orient(pixels: np.ndarray, orientation: int | None) -> np.ndarray:
    """Apply an EXIF orientation value to an H×W×C array (unknown values leave it as it is)."""
    op = _ORIENT.get(orientation or 1)
    return pixels if op is None else np.ascontiguousarray(op(pixels))
