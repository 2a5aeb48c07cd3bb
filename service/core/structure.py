"""Container-structure checks run before Pillow parses an upload.

Pillow parses container structure in Python, one loop turn per marker, chunk, sub-block or strip, so a tiny image
wrapped in millions of empty structures costs seconds of a codec thread (and, for TIFF strips, gigabytes of tile
tuples) before a pixel is decoded or the decode memory budget is consulted. Measured on Pillow 13, per structure:
JPEG marker ~1.2 µs, PNG chunk ~2.5 µs, GIF sub-block ~0.3 µs, TIFF strip ~5.6 µs and ~250 bytes, RLE BMP pair
~0.5 µs. `check_structure` walks the same structures (jumping from one length field to the next, so a normal file
costs a few µs) and refuses, with 413 `image_too_large`, counts no real encoder writes. `tiff_chunk_pixels` gives
the pixels of one TIFF tile or strip, which libtiff inflates whole even when it is far larger than the image.

Pillow's JPEG header read parses TIFF structures too, in Python: the first directory of the EXIF block (for the
resolution) and of the MPF index. `_check_jpeg_metadata` walks the markers as Pillow's parser does and counts their
entries first.
"""

from __future__ import annotations

import struct

from PIL import Image, TiffImagePlugin

from . import jpeg
from .errors import DecodeError

# PNG: chunks up to IEND. Encoders write IDAT in 8-64 KB pieces, so a big file may have thousands; beyond this
# base, one chunk per KiB of file is allowed.
MAX_PNG_CHUNKS = 4096
# GIF: extension blocks and sub-blocks before the first image (a large XMP packet makes ~1,000).
MAX_GIF_BLOCKS = 16384
# TIFF: strips or tiles in the first IFD; beyond this, only as many as one per 256 pixels (a 16x16 tile).
MAX_TIFF_CHUNKS = 65536
MIN_PIXELS_PER_TIFF_CHUNK = 256
# TIFF: a tile libtiff inflates whole, however small the image, is refused above this when over 4x the image.
MAX_TIFF_TILE_PIXELS = 1 << 20
# TIFF: entries in the first directory (Pillow reads every one in Python, ~2 µs each, when it opens the file: a
# BigTIFF's count is 64-bit, so an 18 MB upload of a 32x24 image held 900,000 of them, 1.9 s of a codec thread).
# Writers put 10-60 tags there (baseline, GeoTIFF, EXIF/GPS pointers, private tags); 1,024 leaves ample room.
MAX_TIFF_TAGS = 1024
# JPEG: Pillow's header read parses, ~2.5 µs an entry, the first directory of the EXIF block (every APP1 segment
# signed "Exif\0\0" before the first scan, joined) unless a JFIF header gives the resolution, and ~4.4 µs an entry
# that of the MPF index (APP2 "MPF\0", the last one; its values decoded too). One 64 KB segment holds 5,459 entries:
# 10-14 CPU-ms (EXIF) or 24 (MPF) to open a 66 KB file, a plain one 0.03; 13 joined EXIF segments hold 65,535,
# 125 CPU-ms for 788 KB. Cameras write tens: beyond MAX_TIFF_TAGS either is refused, as a TIFF's own first
# directory is, in 0.02-0.06 ms.
# BMP: Pillow decodes RLE4/RLE8 in Python, one loop turn per 2-byte pair.
MAX_BMP_RLE_BYTES = 1 << 20

_PNG = b"\x89PNG\r\n\x1a\n"
# The headers Pillow reads as TIFF (two with the magic number's bytes swapped), file or EXIF block alike; it reads a
# BigTIFF's layout where the third byte is "+" ("II+\0"), the classic one otherwise ("MM\0+" included).
_TIFF = tuple(TiffImagePlugin.PREFIXES)
_TIFF_SCALAR = {1: "B", 3: "H", 4: "I", 16: "Q"}  # BYTE, SHORT, LONG, LONG8


def _too_large(message: str) -> DecodeError:  # as `jpeg.header_segments` refuses
    return DecodeError("image_too_large", message)


def check_structure(data: bytes, max_pixels: int) -> None:
    """Raise `DecodeError` (413 `image_too_large`) when `data`'s container structure would cost Pillow far more
    to parse than its pixels justify. Anything malformed is left for the decoder to judge."""
    if data.startswith(b"\xff\xd8"):
        _check_jpeg_metadata(data)
    elif data.startswith(_PNG):
        _check_png(data)
    elif data.startswith((b"GIF87a", b"GIF89a")):
        _check_gif(data)
    elif data.startswith(_TIFF):
        _check_tiff(data, max_pixels)
    elif data.startswith(b"BM"):
        _check_bmp(data)


def _check_png(data: bytes) -> None:
    limit = MAX_PNG_CHUNKS + len(data) // 1024
    pos, end, chunks = 8, len(data), 0
    while pos + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        pos += 12 + length
        chunks += 1
        if kind == b"IEND":
            return
        if chunks > limit:
            raise _too_large(f"the PNG has more than {limit} chunks for {len(data)} bytes")


def _check_gif(data: bytes) -> None:
    pos, end, blocks = 13, len(data), 0
    if end > 10 and data[10] & 0x80:  # global colour table
        pos += 3 << ((data[10] & 7) + 1)
    while pos < end and data[pos] == 0x21:  # extensions before the first image descriptor
        pos += 2  # introducer and label
        while pos < end and data[pos] and blocks <= MAX_GIF_BLOCKS:
            pos += data[pos] + 1
            blocks += 1
        pos += 1
        blocks += 1
        if blocks > MAX_GIF_BLOCKS:
            raise _too_large(f"the GIF has more than {MAX_GIF_BLOCKS} extension blocks before its first image")


def _check_bmp(data: bytes) -> None:
    if len(data) < 34 or int.from_bytes(data[14:18], "little") < 40:
        return  # OS/2 headers have no compression field
    compression = int.from_bytes(data[30:34], "little")
    pixel_bytes = len(data) - int.from_bytes(data[10:14], "little")
    if compression in (1, 2) and pixel_bytes > MAX_BMP_RLE_BYTES:
        raise _too_large(f"RLE-compressed BMP data over {MAX_BMP_RLE_BYTES} bytes is refused (decoded slowly); "
                         "send the image as PNG")


def _check_tiff(data: bytes, max_pixels: int) -> None:
    entries = _tiff_first_ifd(data)
    if entries is None:
        return
    width, height = entries.get(256, (0, 0))[1], entries.get(257, (0, 0))[1]
    if width <= 0 or height <= 0:
        return
    across, down = 1, height
    if 322 in entries and 323 in entries:
        tile_w, tile_h = entries[322][1], entries[323][1]
        if tile_w <= 0 or tile_h <= 0:
            return
        across, down = -(-width // tile_w), -(-height // tile_h)
    else:
        rows = entries.get(278, (1, 0xFFFFFFFF))[1]
        if rows <= 0:
            return
        down = -(-height // min(rows, height))
    planes = entries.get(277, (1, 1))[1] if entries.get(284, (1, 1))[1] == 2 else 1
    expected = across * down * max(1, planes)
    allowed = max(MAX_TIFF_CHUNKS, min(width * height, max_pixels) // MIN_PIXELS_PER_TIFF_CHUNK)
    for tag in (273, 279, 324, 325):  # strip/tile offsets and byte counts
        count = entries.get(tag, (0, 0))[0]
        if count > expected and count > MAX_TIFF_CHUNKS // 64:
            raise _too_large(f"the TIFF lists {count} strips or tiles where its {width}x{height} geometry has "
                             f"{expected}")
        if count > allowed:
            raise _too_large(f"the TIFF has {count} strips or tiles, more than {allowed} for {width}x{height}")


def _tiff_first_ifd(data: bytes) -> dict[int, tuple[int, int]] | None:
    """Tag -> (value count, first value when it is an inline integer, else 0) of the first IFD; None when the
    header is broken (the decoder then answers). Raises `DecodeError` (413) for more than MAX_TIFF_TAGS entries."""
    order = "<" if data[:2] == b"II" else ">"
    big = data[2] == 43  # as Pillow reads it
    try:
        if big:
            (ifd,) = struct.unpack_from(order + "Q", data, 8)
            (count,) = struct.unpack_from(order + "Q", data, ifd)
            entry, start, value_size = order + "HHQ8s", ifd + 8, 8
        else:
            (ifd,) = struct.unpack_from(order + "I", data, 4)
            (count,) = struct.unpack_from(order + "H", data, ifd)
            entry, start, value_size = order + "HHI4s", ifd + 2, 4
        size = struct.calcsize(entry)
        block = data[start : start + min(count, 65535) * size]
        rows = struct.iter_unpack(entry, block[: len(block) - len(block) % size])
    except struct.error:
        return None
    # Counted as far as the file holds them: Pillow reads entries until the data ends (a count past the end of a
    # short file is a corrupt header, which Pillow refuses at once).
    _check_tags(min(count, max(0, len(data) - start) // size), "the TIFF's first directory")
    entries = {}
    for tag, kind, n, raw in rows:
        fmt = _TIFF_SCALAR.get(kind)
        inline = fmt is not None and n >= 1 and struct.calcsize(fmt) * n <= value_size
        entries[tag] = (n, struct.unpack_from(order + fmt, raw)[0] if inline and fmt else 0)
    return entries


def _check_tags(present: int, what: str) -> None:
    if present > MAX_TIFF_TAGS:
        raise _too_large(f"{what} has {present} entries, more than {MAX_TIFF_TAGS}")


def _check_jpeg_metadata(data: bytes) -> None:
    """Refuse (413) a JPEG whose EXIF block or MPF index has more entries in its first directory than
    `MAX_TIFF_TAGS`, or whose header holds more segments or junk than `jpeg.header_segments` allows."""
    exif, mpf = jpeg.header_segments(data)
    if exif:
        block = memoryview(b"".join(exif))
        start = 12 if block[6:12] == b"Exif\0\0" else 6  # Pillow drops the signature, twice if repeated
        _check_tiff_block(block[start:], "the JPEG's EXIF block's first directory")
    if mpf is not None:
        _check_tiff_block(mpf, "the JPEG's MPF index")


def _check_tiff_block(block: memoryview, what: str) -> None:
    """Refuse (413) a TIFF structure Pillow parses whose first directory holds more than `MAX_TIFF_TAGS` entries,
    counted as far as the block holds them (Pillow reads on until it ends). A BigTIFF header Pillow fails on."""
    if len(block) < 8 or bytes(block[:4]) not in _TIFF or block[2] == 43:
        return
    order = "<" if block[0] == ord("I") else ">"
    (ifd,) = struct.unpack_from(order + "I", block, 4)
    if ifd + 2 <= len(block):
        (count,) = struct.unpack_from(order + "H", block, ifd)
        _check_tags(min(count, (len(block) - ifd - 2) // 12), what)


def tiff_chunk_pixels(img: Image.Image) -> int:
    """Pixels of one strip or tile of an opened TIFF, as libtiff allocates and inflates it (a tile is not cut to
    the image, a strip is); 0 for other formats. Raises `DecodeError` (413) for a tile far larger than the image
    (over 4x its pixels and over 1 MP: writers size tiles to the image, 256x256 for a small one)."""
    if img.format != "TIFF":
        return 0
    tags = img.tag_v2  # type: ignore[attr-defined]
    width, height = img.size
    tile_w, tile_h = tags.get(322), tags.get(323)
    if not (tile_w and tile_h):
        return width * min(int(tags.get(278) or height), height)
    tile = int(tile_w) * int(tile_h)
    if tile > max(4 * width * height, MAX_TIFF_TILE_PIXELS):
        raise _too_large(f"the TIFF's {tile_w}x{tile_h} tiles are far larger than its {width}x{height} image")
    return tile
