"""Image input: decode untrusted bytes to an RGB array (letterbox geometry is `service.core.letterbox`).

Decoding policy (every failure is a `DecodeError` with a stable code, never a crash; the HTTP status the
service answers each code with is given first):

- no bytes: 400 `empty_body`;
- bytes that start with no supported signature (SVG, PDF, HTML, text, random bytes, other formats):
  415 `unsupported_media_type`;
- a supported signature that Pillow cannot parse or decode (truncated, bad CRC, broken Huffman data, a GIF
  header followed by a script): 400 `corrupt_image`;
- zero width or height: 400 `corrupt_image`;
- more pixels than `max_pixels`, a Pillow decompression bomb, PNG text/ICC chunks that inflate past
  Pillow's limits (one chunk or a flood of them), a JPEG with more progressive scans than `jpeg.scan_limit`
  allows (each scan re-walks the whole image), or an image whose decode alone would exceed the decode memory
  budget (`service.core.decode_budget`): 413 `image_too_large`.
- damaged JPEG entropy data that libjpeg recovers from, and PNG IDAT chunks whose CRC alone is wrong (zlib's
  Adler-32 still vouches for the pixels), decode as browsers show them; so does a PNG cut after its last
  pixel (only the IEND trailer missing).

Accepted formats are JPEG (MPO, the multi-picture JPEG many phones write, included), PNG/APNG, WebP, BMP, GIF and
TIFF. The allow-list goes to `Image.open(formats=...)`, so Pillow never tries its other parsers (EPS, for one,
would shell out to Ghostscript).

Clean RGB and greyscale JPEGs decode through libjpeg-turbo straight to numpy (`service.core.jpeg`), at the DCT scale
Pillow's `draft` would pick, so the pixels are the Pillow path's; anything libjpeg warns about goes the Pillow way.
Every decode holds its estimated peak memory in the process-wide decode budget while it runs.

Conversions to RGB (`service.core.colour`), all applied after EXIF orientation:
- transparency (RGBA, LA, PA, and a tRNS colour key on palette, grey, 16-bit grey or RGB) is composited over
  white, the background a viewer shows on a page, because the colour under fully transparent pixels is
  arbitrary (often black) and would mislead the model;
- 16-bit and 32-bit integer greyscale is scaled to 8 bits (`round(v / 257)`), not clipped as Pillow's own
  `convert("L")` does; float images are taken as 0..1 when they fit, otherwise stretched min..max; both in row
  blocks, so no full-size wide copy is ever made;
- CMYK with an embedded ICC profile goes through LittleCMS to sRGB, otherwise Pillow's plain conversion;
- animated GIF/PNG/WebP and multi-page TIFF give their first frame; a GIF's canvas outside that frame is
  transparent, as browsers show it, so it comes out white too.

Thread safety: nothing here mutates module or Pillow globals. The pixel limit is checked on the header size before
any pixel is decoded, instead of setting `Image.MAX_IMAGE_PIXELS` per call; Pillow's own bomb check stays on as a
second line (it raises at twice its default of ~89 MP, which is then also answered 413).
"""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from . import jpeg
from .colour import to_rgb_array
from .decode_budget import DECODE_BUDGET, estimate_bytes
from .errors import DecodeError
from .letterbox import LetterboxInfo, compute_letterbox, fit_content
from .structure import check_structure, tiff_chunk_pixels

log = logging.getLogger(__name__)

# Pillow format names we decode. Multi-picture JPEGs (MPO, as many phones write) open through the JPEG plugin.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")

# Leading bytes of the accepted formats. Used only to tell "corrupt image" (400) from "not an image" (415)
# when Pillow refuses to open the bytes.
_SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG / MPO
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"II*\x00",  # TIFF little-endian
    b"MM\x00*",  # TIFF big-endian
    b"II+\x00",  # BigTIFF
    b"MM\x00+",
)

_ORIENTATION_TAG = 0x0112
# Register every Pillow plugin now, at import, rather than lazily inside the first worker threads.
Image.init()


def _has_supported_signature(data: bytes) -> bool:
    if data.startswith(_SIGNATURES):
        return True
    if data[:2] == b"BM":  # two letters alone would match plain text; also require a known DIB header size
        return int.from_bytes(data[14:18], "little") in (12, 16, 40, 52, 56, 64, 108, 124)
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode untrusted image bytes to a uint8 H×W×3 RGB array (read-only), EXIF orientation applied.

    Raises `DecodeError` (400 `empty_body` / `corrupt_image`, 415 `unsupported_media_type`, 413 `image_too_large`).
    """
    return _decode(data, max_pixels, None)[0]


def decode_image_for_model(data: bytes, max_pixels: int, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode for inference at `size`: returns the RGB array, possibly reduced (or already resized to the letterbox
    content, when its EXIF orientation turns a partial DCT block to the top or left), and the original (h, w).

    A JPEG much larger than the model's input is decoded straight at 1/2, 1/4 or 1/8 scale in libjpeg's DCT
    domain (`dct_reduction`), so the letterbox resize shrinks by less than 2x (or enlarges by at most 1 %).
    For a 1024x768 upload to a 512 model that halves decode + letterbox time, to a 513 model it cuts it
    2.8x, and a 12 MP phone photo decodes ~8x faster. Other formats decode in full. Errors as `decode_image`.
    """
    return _decode(data, max_pixels, size)


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


def _fit_before_turning(width: int, height: int, size: int | None, denom: int,
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


def _decode(data: bytes, max_pixels: int, reduce_to: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    if not data:
        raise DecodeError("empty_body", "the request carried no image bytes")
    # Pillow's module-level LOAD_TRUNCATED_IMAGES must stay False, or truncated files decode as grey padding.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; truncated uploads would be accepted")

    # Before Pillow parses a single marker, chunk or strip: floods of them cost seconds in its Python parsers.
    check_structure(data, max_pixels)
    try:
        img = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise DecodeError("image_too_large", f"image refused as a decompression bomb: {exc}") from exc
    except Exception as exc:  # any parser failure on hostile bytes is the client's problem, not a 500
        error = _decode_failure(exc, "the image header is corrupt or truncated")
        if error.code == "corrupt_image" and not _has_supported_signature(data):
            # Pillow tried a plugin on a loose match (e.g. text starting with "BM") or found nothing at all.
            error = DecodeError("unsupported_media_type",
                f"not a supported image; send one of: {', '.join(f.lower() for f in ACCEPTED_FORMATS)}",
            )
        raise error from exc

    with img:
        width, height = img.size
        if width <= 0 or height <= 0:
            raise DecodeError("corrupt_image", f"the image has zero size ({width}x{height})")
        # Checked on the header, before a single pixel is decoded: the bomb never gets its memory.
        if width * height > max_pixels:
            raise DecodeError("image_too_large",
                f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}",
            )
        if img.format in ("JPEG", "MPO"):
            # Every progressive scan re-walks the whole image: refuse absurd scan counts before decoding.
            limit = jpeg.scan_limit(width * height)
            scans = jpeg.count_scans(data, limit)
            if scans > limit:
                raise DecodeError("image_too_large",
                               f"the JPEG has more than {limit} scans, the limit for {width}x{height}")
        is_jpeg = img.format in ("JPEG", "MPO")
        # A JPEG's EXIF is in its header; other formats may keep it after the pixels (PNG's eXIf chunk), and
        # Pillow would decode them to find it: theirs is read once they are loaded, below.
        orientation = _exif_orientation(img) if is_jpeg else None
        # The DCT scale denominator of a reduced JPEG decode; 1: decoded at full size.
        denom = dct_reduction(width, height, reduce_to) if reduce_to is not None and is_jpeg else 1
        fit = _fit_before_turning(width, height, reduce_to, denom, orientation)
        if is_jpeg and img.mode in ("RGB", "L"):
            out_pixels = -(-width // denom) * -(-height // denom)
            # libjpeg-turbo writes the RGB array directly; an EXIF orientation other than 1 makes a turned copy.
            copies = 1 if orientation in (None, 1) else 2
            with DECODE_BUDGET.reserve(3 * out_pixels * copies):
                fast = _decode_jpeg_fast(data, img, denom, orientation, fit)
            if fast is not None:
                return fast
        if denom > 1:
            img.draft("RGB", (width // denom, height // denom))  # Pillow then picks exactly 1/denom
        has_alpha = "transparency" in img.info
        # libtiff inflates a whole tile even when it is far larger than the image: budget the larger of the two.
        budget_pixels = max(img.width * img.height, tiff_chunk_pixels(img))
        # Where a GIF's first frame lies on its canvas (known until the frame is loaded).
        gif_frame = img.tile[0][1] if img.format == "GIF" and img.tile else None
        with DECODE_BUDGET.reserve(estimate_bytes(img.mode, budget_pixels, has_alpha=has_alpha or bool(gif_frame))):
            try:
                img.load()  # decodes the first frame; raises on truncated or corrupt data
            except Exception as exc:
                raise _decode_failure(exc, "the image data is corrupt or truncated") from exc
            if gif_frame is not None:
                img = _gif_canvas(img, gif_frame)
            oriented, turned = (img, orientation in (5, 6, 7, 8)) if fit else _oriented(
                img, orientation if is_jpeg else _exif_orientation(img))
            try:
                rgb = to_rgb_array(oriented)
            except Exception as exc:  # a pixel layout Pillow parses but cannot convert (exotic TIFF modes)
                raise DecodeError("unsupported_media_type",
                                  f"unsupported pixel format (mode {img.mode}): {exc}") from exc
            if fit:
                rgb = jpeg.orient(fit_content(rgb, fit), orientation)
            # EXIF orientation may have turned the picture by 90 degrees: the original size turns with it. Known
            # from the orientation, not the shapes: a reduced decode can be square when the original is not.
            return rgb, ((width, height) if turned else (height, width))


def _decode_jpeg_fast(data: bytes, img: Image.Image, denom: int, orientation: int | None,
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


def _decode_failure(exc: Exception, what: str) -> DecodeError:
    """The client-facing error for an exception Pillow raised while parsing or decoding."""
    # Pillow refuses zlib-compressed metadata (zTXt/iTXt/iCCP) that inflates past its limits with a plain
    # ValueError; that is a decompression bomb too.
    # A flood of text chunks, each within the per-chunk limit, trips Pillow's total text budget instead.
    bomb = isinstance(exc, Image.DecompressionBombError) or (
        isinstance(exc, ValueError)
        and ("Decompressed data too large" in str(exc) or "Too much memory used in text chunks" in str(exc))
    )
    if bomb:
        return DecodeError("image_too_large", f"image refused as a decompression bomb: {exc}")
    if isinstance(exc, MemoryError):
        return DecodeError("image_too_large", "the image does not fit in memory")
    if isinstance(exc, UnidentifiedImageError):
        return DecodeError("corrupt_image", what)  # its message only names the BytesIO object
    return DecodeError("corrupt_image", f"{what}: {exc}")


def _exif_orientation(img: Image.Image) -> int | None:
    """The EXIF orientation tag's value, or None (none, or an unreadable EXIF block: as in `_oriented`, a broken
    EXIF block does not fail a decodable image)."""
    try:
        return img.getexif().get(_ORIENTATION_TAG)
    except Exception as exc:
        log.debug("ignoring unreadable EXIF orientation: %s", exc)
        return None


def _gif_canvas(img: Image.Image, frame: tuple[int, int, int, int]) -> Image.Image:
    """A GIF's first frame on its canvas, the canvas outside the frame white: browsers show it transparent, which
    the decoder composites over white, where Pillow fills it with palette entry 0, an arbitrary colour (black)."""
    width, height = img.size
    x0, x1 = (min(max(0, x), width) for x in (frame[0], frame[2]))
    y0, y1 = (min(max(0, y), height) for y in (frame[1], frame[3]))
    if "transparency" in img.info or (x0, y0, x1, y1) == (0, 0, width, height):
        return img  # covered, or Pillow already filled the canvas with the transparent entry
    canvas = img.convert("RGB")
    for box in ((0, 0, width, y0), (0, y1, width, height), (0, y0, x0, y1), (x1, y0, width, y1)):
        if box[2] > box[0] and box[3] > box[1]:
            canvas.paste((255, 255, 255), box)
    return canvas


# EXIF orientation -> the transpose that shows the picture upright, as Pillow's `ImageOps.exif_transpose` applies.
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def _oriented(img: Image.Image, orientation: int | None) -> tuple[Image.Image, bool]:
    """The image turned upright by its EXIF `orientation` (read by `_exif_orientation`), and whether it was turned
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


