"""EXIF orientation of a decoded image: reading the tag, and turning the picture upright as viewers show it.

A broken EXIF block, an unknown value or a transpose Pillow cannot make leaves the image as it is: none of them
fails a decodable image. So does an EXIF block whose first directory has more entries than `MAX_EXIF_ENTRIES`.
"""

from __future__ import annotations

import logging
import struct

from PIL import Image

from .structure import MAX_TIFF_TAGS

log = logging.getLogger(__name__)

_ORIENTATION_TAG = 0x0112
# Entries in an EXIF block's first directory: a camera writes tens. Pillow reads every one in Python (~2.7 µs
# each): 65,535 distinct tags in a PNG or WebP EXIF chunk (786 KB; a JPEG's EXIF segment holds at most 5,460)
# cost 180 CPU-ms a decode, measured. Beyond this many the block is ignored, as a broken one is. The same bound
# as a TIFF's own first directory, for the same reason.
MAX_EXIF_ENTRIES = MAX_TIFF_TAGS

# EXIF orientation -> the transpose that shows the picture upright, as Pillow's `ImageOps.exif_transpose` applies.
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def exif_orientation(img: Image.Image) -> int | None:
    """The EXIF orientation tag's value, or None (none, or an unreadable EXIF block: as in `oriented`, a broken
    EXIF block does not fail a decodable image)."""
    entries = _first_directory_entries(img)
    if entries > MAX_EXIF_ENTRIES:
        log.debug("ignoring an EXIF block of %d entries (more than %d)", entries, MAX_EXIF_ENTRIES)
        return None
    try:
        value = img.getexif().get(_ORIENTATION_TAG)
    except Exception as exc:
        log.debug("ignoring unreadable EXIF orientation: %s", exc)
        return None
    return value if isinstance(value, int) else None  # a malformed value (a tuple, a string) turns nothing


def _first_directory_entries(img: Image.Image) -> int:
    """The entry count of the first directory of the EXIF block `Image.getexif` would parse (its raw `exif`, or
    a PNG's hex "Raw profile type exif" text), read from its header; 0 where there is none or it is unreadable.
    A TIFF's own directories are bounded before it is opened (`structure.check_structure`)."""
    raw = img.info.get("exif")
    if raw is None and "Raw profile type exif" in img.info:
        try:  # as Pillow reads it: hex digits after three header lines
            raw = bytes.fromhex("".join(str(img.info["Raw profile type exif"]).split("\n")[3:]))
        except ValueError:
            return 0
    if not isinstance(raw, bytes):
        return 0
    data = raw[6:] if raw.startswith(b"Exif\x00\x00") else raw
    if len(data) < 8 or data[:2] not in (b"II", b"MM"):
        return 0
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack_from(order + "I", data, 4)
    return struct.unpack_from(order + "H", data, offset)[0] if offset + 2 <= len(data) else 0


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
