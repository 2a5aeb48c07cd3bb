"""Any Pillow mode to 8-bit RGB, following the decoder's policy (see `service.imaging`).

Deep greyscale (16/32-bit integer, 32-bit float) is converted in row blocks of at most `BLOCK_BYTES`, so the
full-size temporaries are the 8-bit grey plane and nothing wider: a 6300x6300 32-bit image used to take four
full-size 64-bit copies (~1.3 GB) on the way, now ~40 MB beyond Pillow's own pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import cv2
import numpy as np
from PIL import Image

from .icc import cmyk_to_srgb

log = logging.getLogger(__name__)

_WHITE = (255, 255, 255)
# Fully parsed once; the profile object is immutable and only read by the transforms.
BLOCK_BYTES = 4 << 20  # rows per block: this many bytes of float64 temporaries


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any Pillow mode as an H×W×3 uint8 RGB array, following the decoder's documented policy."""
    if img.mode.startswith(("I", "F")):  # I;16*, I (int32), F (float32): greyscale deeper than 8 bits
        # straight from the 8-bit plane to the array: no full-size Pillow RGB image on the way
        return cv2.cvtColor(deep_grey_to_uint8(img), cv2.COLOR_GRAY2RGB)
    return np.asarray(to_rgb(img), dtype=np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB following the decoder's documented policy."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:  # the common case: nothing to convert
        return img
    if mode.startswith(("I", "F")):
        return Image.fromarray(deep_grey_to_uint8(img)).convert("RGB")
    if mode == "CMYK":
        return cmyk_to_rgb(img)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:  # also 1, L and RGB with a tRNS colour key: Pillow turns the key into alpha 0
        rgba = img.convert("RGBA")
        # only the composite outlives this line: at most three RGBA/RGB planes at once beside `img`
        composited = Image.alpha_composite(Image.new("RGBA", rgba.size, (*_WHITE, 255)), rgba)
        del rgba
        return composited.convert("RGB")
    return img.convert("RGB")  # L, 1, P, YCbCr, LAB, HSV


def _blocks(img: Image.Image) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows as an array) in blocks; each block is a copy of those rows only."""
    rows = max(1, BLOCK_BYTES // (8 * max(1, img.width)))
    for top in range(0, img.height, rows):
        yield top, np.asarray(img.crop((0, top, img.width, min(img.height, top + rows))))


def _finite(block: np.ndarray) -> np.ndarray:
    return np.nan_to_num(block.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def deep_grey_to_uint8(img: Image.Image) -> np.ndarray:
    """Map 16/32-bit integer or float greyscale to 0..255 without clipping the range away.

    Float images are taken as 0..1 when they fit (NaN and infinities as 0), otherwise stretched min..max;
    integers within 0..65535 are 16-bit data (`round(v / 257)`), others stretched min..max. Two passes over
    row blocks: the range, then the conversion. Pixels equal to a PNG tRNS colour key (`info["transparency"]`,
    in the image's own values) are fully transparent and come out white, as compositing over white gives.
    """
    is_float = img.mode.startswith("F")
    key = img.info.get("transparency")
    if not isinstance(key, (int, float)) or isinstance(key, bool):
        key = None
    lo, hi = np.inf, -np.inf
    for _, block in _blocks(img):
        values = _finite(block) if is_float else block
        lo, hi = min(lo, values.min()), max(hi, values.max())
    out = np.empty((img.height, img.width), dtype=np.uint8)
    for top, block in _blocks(img):
        target = out[top : top + block.shape[0]]
        if is_float:
            values = _finite(block)
            if lo >= 0.0 and hi <= 1.0:
                target[...] = np.rint(values * 255.0)
            else:
                _stretch(values, float(lo), float(hi), target)
        elif lo < 0 or hi > 65535:  # not 16-bit data: use the range it has
            _stretch(block.astype(np.float64), float(lo), float(hi), target)
        else:
            # 16-bit range: v / 257 maps 65535 to 255 and 0 to 0 exactly; (v + 128) // 257 is that, rounded.
            target[...] = (block.astype(np.uint32) + 128) // 257
        if key is not None:
            target[block == key] = _WHITE[0]
    return out


def _stretch(values: np.ndarray, lo: float, hi: float, out: np.ndarray) -> None:
    if hi <= lo:
        out[...] = 0
        return
    out[...] = np.rint((values - lo) * (255.0 / (hi - lo)))


def cmyk_to_rgb(img: Image.Image) -> Image.Image:
    """A CMYK image in sRGB through its embedded ICC profile (LittleCMS), else Pillow's plain conversion. RGB and
    grey profiles are `service.core.icc`'s."""
    converted = cmyk_to_srgb(img)  # a broken profile is no reason to refuse the pixels: the plain conversion then
    return converted if converted is not None else img.convert("RGB")
