"""Letterbox geometry: fit an RGB image into the model's square input and map label maps back to it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

# Interpolation choice, measured against a Pillow LANCZOS reference (PSNR) on a 2-core CPU:
# - zone plate 1024x768 → 513 (scale 0.50): LINEAR 16.3 dB 1.6 ms, AREA 24.9 dB 12.6 ms: LINEAR aliases badly;
# - astronaut 512 → 321 (0.63): LINEAR 39.6 dB 0.3 ms, AREA 40.3 dB 4.5 ms;
# - coffee 600x400 → 513 (0.86): LINEAR 39.2 dB 0.8 ms, AREA 38.7 dB 5.4 ms: no gain from AREA;
# - enlarging chelsea 451x300 → 513: LINEAR 43.2 dB, AREA 43.5 dB, same speed.
# So INTER_AREA only where it pays for itself: shrinking to less than 3/4.
AREA_BELOW_SCALE = 0.75


@dataclass(frozen=True)
class LetterboxInfo:
    """Where an original image sits inside the size×size letterboxed tensor.

    The content occupies rows `top:top+new_h` and columns `left:left+new_w`; `letterbox` always places it
    top-left (top = left = 0), but `unletterbox` honours any offsets.
    """

    orig_h: int
    orig_w: int
    new_h: int
    new_w: int
    top: int = 0
    left: int = 0
    size: int = 0


def pad_canvas(height: int, width: int, pad_rgb: Sequence[int]) -> np.ndarray:
    """A read-only height×width×3 uint8 image of the pad colour, made once per size and colour.

    Padding copies from it: numpy broadcasting a 3-value colour into an image walks it byte by byte, 40-80x
    slower than copying the same bytes (`python -m bench.padding_bench`: the 128-row strip of a 1024×768 upload
    letterboxed to 513 took 0.58 ms, copied 0.008 ms; three padded 513×513 rows of a batch bucket 8.1 ms, copied
    0.18 ms).
    """
    return _pad_canvas(height, width, tuple(int(v) for v in pad_rgb))


@lru_cache(maxsize=16)
def _pad_canvas(height: int, width: int, pad_rgb: tuple[int, ...]) -> np.ndarray:
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[...] = pad_rgb
    canvas.flags.writeable = False
    return canvas


def compute_letterbox(orig_h: int, orig_w: int, size: int) -> LetterboxInfo:
    """The letterbox geometry: the long side becomes `size`, the short side scales with it (at least 1 px)."""
    if orig_h <= 0 or orig_w <= 0:
        raise ValueError(f"image has zero size ({orig_w}x{orig_h})")
    if size <= 0:
        raise ValueError(f"letterbox size must be positive, got {size}")
    scale = size / max(orig_h, orig_w)
    new_h = min(size, max(1, round(orig_h * scale)))
    new_w = min(size, max(1, round(orig_w * scale)))
    return LetterboxInfo(orig_h=orig_h, orig_w=orig_w, new_h=new_h, new_w=new_w, top=0, left=0, size=size)


def letterbox(
    image: np.ndarray,
    size: int,
    pad_rgb: tuple[int, int, int],
    *,
    out: np.ndarray | None = None,
    orig_hw: tuple[int, int] | None = None,
) -> tuple[np.ndarray, LetterboxInfo]:
    """Resize an H×W×3 uint8 image so its long side is `size`, place it top-left, pad to size×size.

    Top-left placement matches DeepLab training, which pads crops at the bottom/right; pass the model mean as
    `pad_rgb` so the padding normalises to zero. Shrinking by more than `AREA_BELOW_SCALE` uses INTER_AREA
    (it averages, so no aliasing); milder shrinks and enlarging use INTER_LINEAR.
    `out`, if given, is a size×size×3 uint8 array (e.g. one slot of the batch tensor) written in place, which
    saves a copy when stacking a batch. `orig_hw` is the true original size when `image` was decoded reduced
    (`decode_image_for_model`): the geometry, and so `unletterbox`, follows the original.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"letterbox expects uint8 HxWx3, got {image.dtype} {image.shape}")
    info = compute_letterbox(*(orig_hw or image.shape[:2]), size)
    if out is None:
        out = np.empty((size, size, 3), dtype=np.uint8)
    elif out.shape != (size, size, 3) or out.dtype != np.uint8:
        raise ValueError(f"out must be uint8 {(size, size, 3)}, got {out.dtype} {out.shape}")

    fit_content(image, info, out[: info.new_h, : info.new_w])
    # Padding only where the content is not: the right strip and the bottom strip.
    canvas = pad_canvas(size, size, pad_rgb)
    out[: info.new_h, info.new_w :] = canvas[: info.new_h, info.new_w :]
    out[info.new_h :, :] = canvas[info.new_h :, :]
    return out, info


def fill_pad(region: np.ndarray, pad_rgb: Sequence[int]) -> None:
    """Fill an H×W×3 region with the pad colour by copying one row of it: numpy broadcasting the 3-value colour
    itself walks the region byte by byte (749 µs for the 128-row strip of a 513 letterbox, 13 µs this way). Where
    the size is any a client asks for (tiled images), caching a whole canvas of it (`pad_canvas`) would keep one
    per size."""
    if region.size:
        row = np.empty((region.shape[1], 3), np.uint8)
        row[...] = pad_rgb
        region[...] = row


def letterbox_onto(image: np.ndarray, info: LetterboxInfo, height: int, width: int,
                   pad_rgb: Sequence[int]) -> np.ndarray:
    """`image` resized to the letterbox `info` describes, top-left in a `height` x `width` canvas (at least the
    content) padded with the pad colour: the letterbox of an image run in tiles, only as large as they reach."""
    out = np.empty((height, width, 3), np.uint8)
    fit_content(image, info, out[: info.new_h, : info.new_w])
    fill_pad(out[: info.new_h, info.new_w :], pad_rgb)
    fill_pad(out[info.new_h :, :], pad_rgb)
    return out


def fit_content(image: np.ndarray, info: LetterboxInfo, region: np.ndarray | None = None) -> np.ndarray:
    """`image` (the original, or a JPEG of it decoded reduced) resized to the letterbox content, `info.new_h` x
    `info.new_w`, written into `region` when given; see `letterbox` for the interpolation."""
    if region is None:
        region = np.empty((info.new_h, info.new_w, 3), dtype=np.uint8)
    if (info.new_h, info.new_w) == image.shape[:2]:
        region[...] = image
        return region
    scale = max(info.new_h, info.new_w) / max(image.shape[:2])
    interpolation = cv2.INTER_AREA if scale < AREA_BELOW_SCALE else cv2.INTER_LINEAR
    partial = partial_block_scale(image.shape[:2], (info.orig_h, info.orig_w))
    if partial is None:
        cv2.resize(image, (info.new_w, info.new_h), dst=region, interpolation=interpolation)
    else:
        # The last reduced row or column stands for less than `partial` original pixels: resize at the true
        # scale (cv2 keeps fx and fy exact when it works out the size itself) and keep what the original
        # covers, instead of stretching the part the original does not have onto the letterbox. (A decoder that
        # turns a partial block to the top or left by EXIF orientation resizes before turning: `service.core.decode`.)
        fx, fy = info.new_w * partial / info.orig_w, info.new_h * partial / info.orig_h
        region[...] = cv2.resize(image, None, fx=fx, fy=fy, interpolation=interpolation)[: info.new_h, : info.new_w]
    return region


def partial_block_scale(image_hw: tuple[int, int], orig_hw: tuple[int, int]) -> int | None:
    """d when `image_hw` is a JPEG of `orig_hw` decoded at 1/d in libjpeg's DCT domain (each side ceil(side / d))
    and a side of the original is not a multiple of d, so that the last reduced row or column covers fewer than
    d original pixels; else None (no reduction, or whole blocks only)."""
    (h, w), (orig_h, orig_w) = image_hw, orig_hw
    for d in (2, 4, 8):
        if (h, w) == (-(-orig_h // d), -(-orig_w // d)):
            return d if orig_h % d or orig_w % d else None
    return None


def resize_nearest(values: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize with pixel-centre alignment (cv2.INTER_NEAREST_EXACT).

    Plain INTER_NEAREST samples at pixel corners, shifting masks by up to half a source pixel against the
    centre-aligned image resize and the model's align_corners=False upsample. The centre-aligned version also
    makes an enlarge-then-shrink round trip exact.
    """
    if values.shape[:2] == (height, width):
        return values
    return cv2.resize(values, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)


def unletterbox(labels: np.ndarray, info: LetterboxInfo) -> np.ndarray:
    """Crop the valid region of a model output (labels or confidence, H×W uint8) and resize it to the original.

    Returns an (orig_h, orig_w) array; nearest-neighbour, so class ids are never blended.
    """
    if labels.ndim != 2:
        raise ValueError(f"unletterbox expects a 2-D map, got shape {labels.shape}")
    if labels.shape[0] < info.top + info.new_h or labels.shape[1] < info.left + info.new_w:
        raise ValueError(f"map {labels.shape} is smaller than the letterboxed region {info}")
    valid = labels[info.top : info.top + info.new_h, info.left : info.left + info.new_w]
    if valid.shape == (info.orig_h, info.orig_w):
        return valid.copy()  # never hand out a view that keeps the whole batch output alive
    # cv2 wants contiguous input for some paths; a crop view of the padded map is not.
    return resize_nearest(np.ascontiguousarray(valid), info.orig_w, info.orig_h)
