"""A JPEG decoded for the model: at a reduced DCT scale, and through libjpeg-turbo straight to numpy when clean.

`dct_reduction` picks the scale Pillow's `draft` would be asked for; `decode_jpeg_fast` decodes a clean RGB or
greyscale JPEG at that scale through `service.core.jpeg`, so the pixels are the Pillow path's.
"""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image

from . import jpeg
from .letterbox import LetterboxInfo, compute_letterbox, fit_content

log = logging.getLogger(__name__)

# How far below the letterbox size a DCT-reduced decode may fall (then enlarged by at most this much). DeepLab's
# 513 is 2^9 + 1: without it a 1024, 2048 or 4096 px upload decoded at 2x, 4x or 8x the size it needs, because
# 1/2, 1/4 or 1/8 gave 512, one pixel short. Measured (1024x768 JPEGs of the five test photos to 513, 2 CPUs):
# decode + letterbox 7.5 -> 2.7 CPU-ms; model input vs the full decode: mean difference 0.8-1.7 grey levels,
# labels of the embedded model agree on 98.4-99.7 % of pixels, as the 1/2 reduction already taken at 320 does
# (0.5-1.1 grey levels, 98.9-99.8 %).
DCT_SLACK = 0.01


def dct_reduction(width: int, height: int, size: int) -> int:
    """The DCT scale denominator (8, 4, 2, or 1 for none) to decode a width x height JPEG at for letterbox
    `size`: the largest whose result is at least the letterboxed size, less `DCT_SLACK`, on both sides."""
    target = compute_letterbox(height, width, size)
    scale = min(width / target.new_w, height / target.new_h) * (1 + DCT_SLACK)
    return next((d for d in (8, 4, 2) if scale >= d), 1)


# EXIF orientations that turn the stored image's last column (resp. last row) to the left or top of the picture.
_LAST_COLUMN_FIRST = frozenset({2, 3, 7, 8})
_LAST_ROW_FIRST = frozenset({3, 4, 6, 7})


def fit_before_turning(width: int, height: int, size: int | None, denom: int,
                       orientation: int | None) -> LetterboxInfo | None:
    """The letterbox geometry (in the stored orientation) to resize a reduced decode to before turning it, when
    its EXIF orientation would turn a partial DCT block to the left or top; else None.

    A side that is not a multiple of `denom` ends in a partial block, which `letterbox.fit_content` expects at the
    right or bottom; turned to the left or top it would shift the mask by up to a block (1.7 model pixels,
    measured). Resized to the letterbox content first, the image is turned at that (small) size instead, and the
    letterbox then copies it as it is. Phone photos (4032x3024, 4000x3000, ...) have whole blocks anyway."""
    if size is None or denom == 1 or not ((orientation in _LAST_COLUMN_FIRST and width % denom)
                                          or (orientation in _LAST_ROW_FIRST and height % denom)):
        return None
    return compute_letterbox(height, width, size)


def decode_jpeg_fast(data: bytes, img: Image.Image, denom: int, orientation: int | None,
                     fit: LetterboxInfo | None) -> tuple[np.ndarray, tuple[int, int]] | None:
    """A clean RGB or greyscale JPEG through libjpeg-turbo (see `service.jpeg`) at 1/`denom` scale, resized to
    `fit` if given, EXIF orientation applied; None when libjpeg reports anything, so that the Pillow path gives its
    established answer."""
    width, height = img.size
    min_w = min_h = 0
    if denom > 1:
        # The scale the Pillow path asks `draft` for (`dct_reduction`), so the pixels are the very ones it
        # decodes: libjpeg-turbo's other n/8 scales have no SIMD IDCT (3/8 and 5/8 decode slower than 1/2).
        min_w, min_h = -(-width // denom), -(-height // denom)
    try:
        pixels = jpeg.decode_rgb(data, min_w, min_h)
    except ValueError as exc:
        log.debug("libjpeg-turbo fast path declined (%s); decoding with Pillow", exc)
        return None
    if fit is not None:
        pixels = fit_content(pixels, fit)
    turned = orientation in (5, 6, 7, 8)
    return jpeg.orient(pixels, orientation), ((width, height) if turned else (height, width))
