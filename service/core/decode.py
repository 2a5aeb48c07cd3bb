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
- RGB (palette included) and greyscale pixels with an embedded ICC profile that is not sRGB (Display P3, Adobe RGB,
  ProPhoto, a grey gamma other than sRGB's) go through LittleCMS to sRGB too, as a colour-managed viewer shows
  them (`service.core.icc`), on both the Pillow and the libjpeg-turbo path, for the model at the letterbox content
  size (resized first). An overlay's full-size decode (`decode_image_keeping_profile`) keeps an RGB profile's
  numbers instead (palette and transparent images too: they become RGB, composited over white, which is white in
  any such profile), and returns the profile: the model's input is converted after the letterbox resize and the
  overlay is drawn in, and carries, the upload's profile (`service.core.pipeline`); a grey profile is converted
  at full size there too (a table lookup; an RGB overlay cannot carry a grey profile). An
  sRGB profile, whichever variant, leaves the pixels bit-identical; a broken profile, or one for another colour
  space than the pixels', leaves their numbers as they are (never a refusal);
- animated GIF/PNG/WebP and multi-page TIFF give the first frame a browser shows (`service.core.frames`): for an
  APNG whose IDAT image is not part of the animation, the first animation frame, not that hidden default image;
  a GIF's or APNG's canvas outside that frame is transparent, as browsers show it, so it comes out white too.

Parts: `service.core.upload` (structure checks and header read, once per upload: `open_upload`),
`service.core.reduced_jpeg` (DCT-reduced and libjpeg-turbo JPEG decodes), `service.core.frames` (first frames),
`service.core.orientation` (EXIF orientation, read where browsers read it), `service.core.icc` (RGB and grey ICC
profiles to sRGB).

Thread safety: nothing here mutates module or Pillow globals. The pixel limit is checked on the header size before
any pixel is decoded, instead of setting `Image.MAX_IMAGE_PIXELS` per call; Pillow's own bomb check stays on as a
second line (it raises at twice its default of ~89 MP, which is then also answered 413).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from . import jpeg
from .colour import to_rgb_array
from .decode_budget import DECODE_BUDGET, WAIT_S, estimate_bytes, plane_bytes
from .errors import DecodeError
from .frames import hides_default_image, load_first_frame, may_leave_canvas, white_outside
from .icc import conversion_for, keeps_profile, to_srgb
from .letterbox import LetterboxInfo, compute_letterbox, fit_content
from .orientation import exif_orientation, oriented
from .reduced_jpeg import DCT_SLACK, dct_reduction, decode_jpeg_fast, fit_before_turning
from .structure import tiff_chunk_pixels
from .upload import ACCEPTED_FORMATS, Upload, decode_failure, open_upload

# What callers import from here; the parts live in the modules named above.
__all__ = ["ACCEPTED_FORMATS", "DCT_SLACK", "DECODE_BUDGET", "Upload", "dct_reduction", "decode_image",
           "decode_image_for_model", "decode_image_keeping_profile", "open_upload"]


def decode_image(data: bytes | Upload, max_pixels: int) -> np.ndarray:
    """Decode untrusted image bytes (or an `Upload` opened from them) to a uint8 H×W×3 RGB array (treat it as
    read-only: it often is), EXIF orientation applied.

    Raises `DecodeError` (400 `empty_body` / `corrupt_image`, 415 `unsupported_media_type`, 413 `image_too_large`).
    An `Upload` was checked against the `max_pixels` it was opened with.
    """
    return _decode(data, max_pixels, None)[0]


def decode_image_keeping_profile(data: bytes | Upload, max_pixels: int) -> tuple[np.ndarray, bytes | None]:
    """`decode_image` for an overlay: the pixels of an upload with a non-sRGB RGB ICC profile keep their numbers,
    and that profile comes with them (else None, and the array is `decode_image`'s, byte for byte).

    Converting every pixel of a 12 MP Display P3 photo to sRGB cost ~175 CPU-ms; the caller converts only what
    the model sees, after the letterbox resize, and draws the overlay in the upload's profile
    (`service.core.pipeline`). Grey profiles are converted as `decode_image` does. Errors as `decode_image`."""
    rgb, _, profile = _decode(data, max_pixels, None, keep_profile=True)
    return rgb, profile


def decode_image_for_model(data: bytes | Upload, max_pixels: int, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode for inference at `size`: returns the RGB array, possibly reduced (or already resized to the letterbox
    content, when its EXIF orientation turns a partial DCT block to the top or left, or when it has an ICC profile
    to convert), and the original (h, w).

    A JPEG much larger than the model's input is decoded straight at 1/2, 1/4 or 1/8 scale in libjpeg's DCT
    domain (`dct_reduction`), so the letterbox resize shrinks by less than 2x (or enlarges by at most 1 %).
    For a 1024x768 upload to a 512 model that halves decode + letterbox time, to a 513 model it cuts it
    2.8x, and a 12 MP phone photo decodes ~8x faster. Other formats decode in full. Errors as `decode_image`.
    """
    return _decode(data, max_pixels, size)[:2]


def _memory_wait_s(upload: Upload) -> float:
    return WAIT_S if upload.memory_wait_s is None else upload.memory_wait_s


def _decode(data: bytes | Upload, max_pixels: int, reduce_to: int | None,
            keep_profile: bool = False) -> tuple[np.ndarray, tuple[int, int], bytes | None]:
    # The structure checks and the header read happen once per upload: here, or before, by whoever opened it.
    upload = data if isinstance(data, Upload) else open_upload(data, max_pixels)
    with upload:
        img, data = upload.image, upload.data
        width, height = img.size
        is_jpeg = upload.is_jpeg
        # From the header, where a browser reads it (a PNG's eXIf after the pixels is not honoured): a JPEG's
        # reduced decode plans with it before a pixel is decoded.
        orientation = exif_orientation(img, data)
        # The DCT scale denominator of a reduced JPEG decode; 1: decoded at full size.
        denom = dct_reduction(width, height, reduce_to) if reduce_to is not None and is_jpeg else 1
        fit = fit_before_turning(width, height, reduce_to, denom, orientation) or _fit_to_convert(img, reduce_to)
        if is_jpeg and img.mode in ("RGB", "L"):
            out_pixels = -(-width // denom) * -(-height // denom)
            # libjpeg-turbo writes the RGB array directly; an EXIF orientation other than 1 makes a turned copy.
            copies = 1 if orientation in (None, 1) else 2
            with DECODE_BUDGET.reserve(3 * out_pixels * copies, _memory_wait_s(upload)):
                fast = decode_jpeg_fast(data, img, denom, orientation, fit)
                if fast is not None:
                    # libjpeg-turbo ignores the APP2 profile Pillow read from the header; converted at the reduced
                    # size, in place (its extra memory is one block), unless kept.
                    rgb, kept = _colour_managed(fast[0], img, keep_profile)
                    return rgb, fast[1], kept
        if denom > 1:
            img.draft("RGB", (width // denom, height // denom))  # Pillow then picks exactly 1/denom
        has_alpha = "transparency" in img.info or may_leave_canvas(img)
        # libtiff inflates a whole tile even when it is far larger than the image: budget the larger of the two.
        budget_pixels = max(img.width * img.height, tiff_chunk_pixels(img))
        nbytes = estimate_bytes(img.mode, budget_pixels, has_alpha=has_alpha)
        if hides_default_image(img):  # Pillow keeps a copy of the default image while it decodes the first frame
            nbytes += plane_bytes(img.mode, budget_pixels)
        with DECODE_BUDGET.reserve(nbytes, _memory_wait_s(upload)):
            try:
                img, box = load_first_frame(img, data)  # raises on truncated or corrupt data
            except Exception as exc:
                raise decode_failure(exc, "the image data is corrupt or truncated") from exc
            # Turned in numpy, after the resize to `fit` or the white around a partial frame (in stored coordinates).
            turn_later = fit is not None or box is not None
            upright, turned = (img, orientation in (5, 6, 7, 8)) if turn_later else oriented(img, orientation)
            try:
                rgb = to_rgb_array(upright)
            except Exception as exc:  # a pixel layout Pillow parses but cannot convert (exotic TIFF modes)
                raise DecodeError("unsupported_media_type",
                                  f"unsupported pixel format (mode {img.mode}): {exc}") from exc
            if box is not None:
                rgb = white_outside(rgb, box)
            if fit is not None:
                rgb = fit_content(rgb, fit)
            # At the smallest size on the way (the letterbox content for the model, `_fit_to_convert`), after any
            # compositing over white: white stays white, a partly transparent edge differs by a level or so from
            # a browser's, which converts first.
            rgb, kept = _colour_managed(rgb, img, keep_profile)
            if turn_later:
                rgb = jpeg.orient(rgb, orientation)
            # EXIF orientation may have turned the picture by 90 degrees: the original size turns with it. Known
            # from the orientation, not the shapes: a reduced decode can be square when the original is not.
            return rgb, ((width, height) if turned else (height, width)), kept


def _fit_to_convert(img: Image.Image, reduce_to: int | None) -> LetterboxInfo | None:
    """For the model, the letterbox content to resize an image with an ICC profile to convert to first
    (`_colour_managed`), when that is smaller than the image: the conversion then costs the same for any upload (a
    4032x3024 Display P3 JPEG: 11.1 CPU-ms converted at 1008x756; converted at 513x385, its decode + letterbox takes
    3.0 more than untagged, measured). Resizing before converting rather than
    after changes a pixel by at most a level or so at edges (the transfer curve is not linear); flat colour not at
    all."""
    if reduce_to is None or conversion_for(img.info.get("icc_profile"), img.mode) is None:
        return None
    fit = compute_letterbox(img.height, img.width, reduce_to)
    return fit if fit.new_h * fit.new_w < img.height * img.width else None


def _colour_managed(rgb: np.ndarray, img: Image.Image, keep_profile: bool) -> tuple[np.ndarray, bytes | None]:
    """`rgb`, decoded from `img`, converted to sRGB by the image's embedded RGB or grey ICC profile, if any, and
    None; or, with `keep_profile` and an RGB profile an overlay can carry (`decode_image_keeping_profile`), `rgb`
    as it is and that profile.

    Measured, Display P3 JPEGs, decode + letterbox for a 513 model (LittleCMS's 8-bit matrix/TRC path, ~14 ns a
    pixel, at the letterbox content size, `_fit_to_convert`): 1024x768 2.6 CPU-ms untagged -> 6.0, 4032x3024
    18.4 -> 21.4; at full size the transform alone took 11.2 and 176 (what an overlay cost before it kept the
    profile). A profile's first sight (parse, build, sRGB probe, inverse) ~5 CPU-ms, once; an sRGB-tagged upload
    ~5 us (hash, cache).
    """
    profile = img.info.get("icc_profile")
    if keep_profile and keeps_profile(profile, img.mode):
        return rgb, profile
    return to_srgb(rgb, profile, img.mode), None
