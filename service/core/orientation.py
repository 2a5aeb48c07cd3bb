"""EXIF orientation of an upload, read where a browser reads it, and turning the picture upright as it shows it.

The web page draws the picture the browser decoded under the mask the service answers, so an orientation the
browser does not apply must not turn the mask either. Chromium's rules (each case checked against it by
tests/web/test_orientation_chromium.py):

- JPEG (MPO too): the first APP1 segment whose payload starts "Exif\\0" (its sixth byte is not looked at); a later
  EXIF segment is never read, even when the first has no orientation.
- PNG: the first eXIf chunk, and only when it comes before the first IDAT; it holds the bare TIFF structure (one
  that starts "Exif\\0\\0" is not read).
- In that TIFF structure: the first orientation entry (tag 0x0112) of type SHORT, count 1 and value 1-8, looked
  for in entry order in the first directory and in the EXIF sub-directory where its pointer (tag 0x8769, LONG)
  stands; a directory cut short by the end of the block is read as far as its whole entries go.
- WebP, GIF, BMP: none (browsers ignore WebP's EXIF chunk). Nor are XMP `tiff:Orientation` or PNG text chunks
  ("Raw profile type exif") read, in any of these formats.
- TIFF, which no browser shows: none here, because Pillow turns a TIFF by its own orientation tag as it loads it
  (and its header already gives the turned size).

A directory of more than `MAX_EXIF_ENTRIES` entries is ignored, as a broken block, an unknown value or a transpose
Pillow cannot make are: none of them fails a decodable image, the image is left as it is. (A JPEG whose EXIF block,
signed "Exif\\0\\0", has more in its first directory does not get here: Pillow's header read would parse them all,
so the structure checks refuse it first, 413 `image_too_large`; `service.core.structure`.)
"""

from __future__ import annotations

import logging
import struct

from PIL import Image

from .structure import MAX_TIFF_TAGS

log = logging.getLogger(__name__)

_ORIENTATION_TAG = 0x0112
_EXIF_IFD_TAG = 0x8769
_SHORT, _LONG = 3, 4
_ENTRY = 12  # bytes of a directory entry: tag, type, count, value or offset
_PNG_SIGNATURE = 8
# Entries of one EXIF directory: a camera writes tens. They are read in Python, ~0.15 ms for 1,024; a PNG eXIf
# chunk can hold 65,535 of them (21 ms, measured). Beyond this many the directory is ignored, as a broken one is
# (Chromium would read it): the same bound as a TIFF's own first directory, for the same reason.
MAX_EXIF_ENTRIES = MAX_TIFF_TAGS

# EXIF orientation -> the transpose that shows the picture upright, as Pillow's `ImageOps.exif_transpose` applies.
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def exif_orientation(img: Image.Image, data: bytes) -> int | None:
    """The EXIF orientation (1-8) a browser applies to opened, not yet loaded, `img` (the upload `data`), or None.
    Read from the header alone, so a JPEG's reduced decode can plan with it before a pixel is decoded."""
    if img.format in ("JPEG", "MPO"):
        block = _jpeg_exif(img)
    elif img.format == "PNG":
        block = _png_exif(data)
    else:  # WebP, GIF, BMP; and TIFF, which Pillow turns itself as it loads it (module docstring)
        return None
    return None if block is None else _orientation_in(block)


def _jpeg_exif(img: Image.Image) -> bytes | None:
    """The TIFF structure of the first APP1 segment signed "Exif\\0", as libjpeg saved it for Chromium."""
    for marker, payload in getattr(img, "applist", ()):  # every APPn segment before the first scan, in file order
        if marker == "APP1" and payload.startswith(b"Exif\x00"):
            return payload[6:]
    return None


def _png_exif(data: bytes) -> memoryview | None:
    """The payload of the first eXIf chunk before the first IDAT (the structure checks bounded the chunk count)."""
    view, pos = memoryview(data), _PNG_SIGNATURE
    while pos + 8 <= len(view):
        length, kind = struct.unpack_from(">I4s", view, pos)
        if kind == b"IDAT":
            return None
        if kind == b"eXIf":
            return view[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return None


def _orientation_in(block: bytes | memoryview) -> int | None:
    """The orientation a TIFF structure (an EXIF block) gives, by Chromium's rules (module docstring)."""
    if len(block) < 8 or bytes(block[:4]) not in (b"II*\x00", b"MM\x00*"):
        return None
    order = "<" if block[0] == ord("I") else ">"
    return _search(block, order, struct.unpack_from(order + "I", block, 4)[0], root=True)


def _search(block: bytes | memoryview, order: str, offset: int, root: bool) -> int | None:
    if offset + 2 > len(block):
        return None
    declared = struct.unpack_from(order + "H", block, offset)[0]
    entries = min(declared, (len(block) - offset - 2) // _ENTRY)  # a cut-short directory: its whole entries
    if entries > MAX_EXIF_ENTRIES:
        log.debug("ignoring an EXIF directory of %d entries (more than %d)", entries, MAX_EXIF_ENTRIES)
        return None
    for pos in range(offset + 2, offset + 2 + entries * _ENTRY, _ENTRY):
        tag, kind, count = struct.unpack_from(order + "HHI", block, pos)
        if count != 1:
            continue
        if tag == _ORIENTATION_TAG and kind == _SHORT:
            value = struct.unpack_from(order + "H", block, pos + 8)[0]
            if 1 <= value <= 8:
                return value
        elif tag == _EXIF_IFD_TAG and kind == _LONG and root:
            found = _search(block, order, struct.unpack_from(order + "I", block, pos + 8)[0], root=False)
            if found is not None:
                return found
    return None


def oriented(img: Image.Image, orientation: int | None) -> tuple[Image.Image, bool]:
    """The image turned upright by its EXIF `orientation` (read by `exif_orientation`), and whether it was turned
    by 90 degrees. No copy when there is nothing to turn (the common case); unknown values, and a transpose
    Pillow cannot make, leave the image as it is rather than failing a decodable image."""
    method = _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    if method is None:
        return img, False
    try:
        return img.transpose(method), orientation in (5, 6, 7, 8)
    except Exception as exc:
        log.debug("ignoring EXIF orientation %s: %s", orientation, exc)
        return img, False
