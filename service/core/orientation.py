"""EXIF orientation of a decoded image: reading the tag, and turning the picture upright as viewers show it.

A broken EXIF block, an unknown value or a transpose Pillow cannot make leaves the image as it is: none of them
fails a decodable image.
"""

from __future__ import annotations

import logging

from PIL import Image

log = logging.getLogger(__name__)

_ORIENTATION_TAG = 0x0112

# EXIF orientation -> the transpose that shows the picture upright, as Pillow's `ImageOps.exif_transpose` applies.
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def exif_orientation(img: Image.Image) -> int | None:
    """The EXIF orientation tag's value, or None (none, or an unreadable EXIF block: as in `oriented`, a broken
    EXIF block does not fail a decodable image)."""
    try:
        value = img.getexif().get(_ORIENTATION_TAG)
    except Exception as exc:
        log.debug("ignoring unreadable EXIF orientation: %s", exc)
        return None
    return value if isinstance(value, int) else None  # a malformed value (a tuple, a string) turns nothing


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
