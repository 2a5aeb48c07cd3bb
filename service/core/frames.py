"""The first frame of an animated upload, as a browser shows it before the animation moves on.

- GIF: Pillow's frame 0. A frame that covers only part of the logical screen leaves the rest transparent in a
  browser, which the decoder composites over white; Pillow fills it with palette entry 0 (an arbitrary colour,
  often black) unless the frame has a transparent entry.
- APNG: the IDAT image is the first animation frame only when a frame control chunk (fcTL) precedes it. Without
  one it is a default image that APNG viewers (every browser) never show, and Pillow opens the file at it as
  frame 0 (`info["default_image"]` True) with the animation from frame 1. Its first frame is drawn on a fully
  transparent canvas (APNG spec), so its blend operation makes no difference and any area it leaves uncovered is
  transparent, white once composited, where Pillow would blend it over, and leave around it, the default image.
  A file whose animation cannot be read past the default image gives the default image, which any PNG decoder
  shows.
- Animated WebP and multi-page TIFF: Pillow's frame 0 is the first frame (or page) as shown.
- JPEG (MPO's first picture too) is handed to libjpeg in one piece, so arithmetic-coded files decode at any size.
"""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image, PngImagePlugin

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]


def hides_default_image(img: Image.Image) -> bool:
    """Whether `img` (opened, not loaded) is an APNG whose default image is not part of its animation."""
    return img.format == "PNG" and bool(img.info.get("default_image")) and getattr(img, "n_frames", 1) > 1


def may_leave_canvas(img: Image.Image) -> bool:
    """Whether the first frame may leave part of the canvas uncovered, shown transparent (decode budget: the
    white around it is painted on a copy of the RGB array)."""
    return (img.format == "GIF" and bool(img.tile)) or hides_default_image(img)


def load_first_frame(img: Image.Image, data: bytes) -> tuple[Image.Image, Box | None]:
    """Decode the frame a browser shows first of opened `img` (the bytes `data`), and where that frame lies on the
    canvas when it does not cover all of it (None when it does): `white_outside` paints the rest. Raises what
    Pillow raises for corrupt data."""
    if img.format == "GIF":
        frame = img.tile[0][1] if img.tile else None  # known until the frame is loaded
        img.load()
        return img, _partial(frame, img.size)
    if hides_default_image(img):
        return _apng_first_frame(img, data)
    if img.format in ("JPEG", "MPO"):
        # Pillow feeds libjpeg in `decodermaxblock` (64 KiB) reads, and libjpeg's arithmetic decoder cannot wait
        # for more input mid-scan: an arithmetic-coded scan crossing a read's end failed as corrupt. The upload is
        # in memory already; read whole, from the start, the BytesIO hands over that very bytes object (no copy).
        img.decodermaxblock = max(len(data), img.decodermaxblock)
    img.load()
    return img, None


def _apng_first_frame(img: Image.Image, data: bytes) -> tuple[Image.Image, Box | None]:
    img.load()  # the default image: Pillow decodes it on the way to the frames (a corrupt one fails here)
    try:
        img.seek(1)
        # Over the transparent canvas the first frame is drawn on, blending over is plain copying; Pillow would
        # blend it over the default image instead.
        img.blend_op = PngImagePlugin.Blend.OP_SOURCE
        img.load()
    except Exception as exc:  # Pillow's errors for a missing, broken or truncated animation vary by chunk
        log.debug("APNG animation unreadable (%s); decoding its default image", exc)
        img.close()
        img = Image.open(io.BytesIO(data), formats=("PNG",))
        img.load()
        return img, None
    return img, _partial(img.info.get("bbox"), img.size)


def _partial(frame: tuple[int, ...] | None, size: tuple[int, int]) -> Box | None:
    """`frame` clipped to the canvas of `size`, or None when it covers it."""
    if frame is None:
        return None
    width, height = size
    x0, x1 = (min(max(0, int(x)), width) for x in (frame[0], frame[2]))
    y0, y1 = (min(max(0, int(y)), height) for y in (frame[1], frame[3]))
    return None if (x0, y0, x1, y1) == (0, 0, width, height) else (x0, y0, x1, y1)


def white_outside(rgb: np.ndarray, box: Box) -> np.ndarray:
    """`rgb` (H×W×3, as stored: before any EXIF turn) white outside `box`, the canvas a frame leaves transparent."""
    x0, y0, x1, y1 = box
    out = rgb if rgb.flags.writeable else rgb.copy()
    out[:y0] = 255
    out[y1:] = 255
    out[y0:y1, :x0] = 255
    out[y0:y1, x1:] = 255
    return out
