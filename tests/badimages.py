"""A corpus of malformed, hostile and awkward image files with the answer the service must give each.

`bad_image_corpus()` builds every file in memory with Pillow, zlib and a few hand-written headers (no files on
disk, well under a second). The same list drives the decoder unit tests and the live-server tests.

Expectations hold for any `max_pixels` between `MIN_SAFE_MAX_PIXELS` and `MAX_SAFE_MAX_PIXELS`; the
"decoded" cases also carry the (width, height) the decoder must return, EXIF orientation applied.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

# The corpus's successful images are at most 64×64; its over-the-limit images have at least 80 M pixels.
MIN_SAFE_MAX_PIXELS = 64 * 64
MAX_SAFE_MAX_PIXELS = 79_999_999

OK = 200


@dataclass(frozen=True)
class Case:
    """One corpus file: bytes, the content type a client would send, and the expected answer."""

    name: str
    data: bytes
    content_type: str
    expected_status: int
    expected_code: str | None  # None for success
    expected_size: tuple[int, int] | None = None  # (width, height) of the decoded image, for successes

    @property
    def ok(self) -> bool:
        return self.expected_status == OK


# ------------------------------------------------------------------------------------------------- helpers


def _pattern(w: int = 48, h: int = 32) -> np.ndarray:
    """A smooth colour gradient with a marker block, so orientation and channel order are checkable."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // max(1, w - 1), y * 255 // max(1, h - 1), np.full_like(x, 96)], axis=-1)
    rgb = rgb.astype(np.uint8)
    rgb[: h // 4, : w // 4] = (255, 0, 0)  # red marker in the top-left corner
    return rgb


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


_PNG_SIG = b"\x89PNG\r\n\x1a\n"


def _png_header_only(width: int, height: int, bit_depth: int = 1, colour_type: int = 0) -> bytes:
    """A PNG whose IHDR claims width×height and whose IDAT holds one compressed row only."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    row = b"\x00" * (1 + (width * bit_depth + 7) // 8 if width < 1 << 20 else 1)
    return _PNG_SIG + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(row)) + _chunk(b"IEND", b"")


def _png_bomb(width: int, height: int) -> bytes:
    """A complete, valid 1-bit PNG of width×height zeros: tiny on disk, huge once decoded."""
    row = b"\x00" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(height)]
    idat = b"".join(parts) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return _PNG_SIG + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value  # Orientation
    return exif.tobytes()


def _replace_jpeg_sof_size(jpeg: bytes, width: int, height: int) -> bytes:
    data = bytearray(jpeg)
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


# -------------------------------------------------------------------------------------------------- corpus


def bad_image_corpus() -> list[Case]:
    """Every corpus case, deterministic (fixed seeds)."""
    rng = np.random.default_rng(1234)
    rgb = _pattern()
    img = Image.fromarray(rgb)
    jpeg = _save(img, "JPEG", quality=90)
    png = _save(img, "PNG")
    size = (48, 32)
    cases: list[Case] = []

    def ok(name: str, data: bytes, ctype: str, dims: tuple[int, int] = size) -> None:
        cases.append(Case(name, data, ctype, OK, None, dims))

    def bad(name: str, data: bytes, ctype: str, status: int, code: str) -> None:
        cases.append(Case(name, data, ctype, status, code))

    # --- nothing, or not an image at all → 400 / 415
    bad("zero_length", b"", "image/png", 400, "empty_body")
    bad("svg", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
        b'<rect width="10" height="10" fill="red"/><script>alert(1)</script></svg>', "image/svg+xml",
        415, "unsupported_media_type")
    bad("pdf_header", b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n",
        "image/png", 415, "unsupported_media_type")
    bad("html", b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>", "image/jpeg",
        415, "unsupported_media_type")
    bad("plain_text", b"BMW is a car maker, not a bitmap.\n" * 4, "image/bmp", 415, "unsupported_media_type")
    bad("json", b'{"image": "not really"}', "image/png", 415, "unsupported_media_type")
    bad("random_bytes", b"\x00RND" + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "image/jpeg", 415, "unsupported_media_type")
    bad("jpeg_wrong_magic", b"XXXX" + jpeg[4:], "image/jpeg", 415, "unsupported_media_type")
    # Formats Pillow can read but the service does not accept (EPS would run Ghostscript).
    bad("eps_postscript", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto showpage\n",
        "image/png", 415, "unsupported_media_type")
    bad("pcx_not_accepted", _save(img, "PCX"), "image/x-pcx", 415, "unsupported_media_type")
    bad("ppm_not_accepted", _save(img, "PPM"), "image/x-portable-pixmap", 415, "unsupported_media_type")

    # --- a supported signature but broken → 400 corrupt_image
    bad("truncated_jpeg", jpeg[: len(jpeg) // 2], "image/jpeg", 400, "corrupt_image")
    bad("truncated_jpeg_last_bytes", jpeg[:-40], "image/jpeg", 400, "corrupt_image")
    bad("truncated_png", png[: len(png) // 2], "image/png", 400, "corrupt_image")
    bad("png_signature_only", _PNG_SIG, "image/png", 400, "corrupt_image")
    bad("jpeg_soi_only", jpeg[:20], "image/jpeg", 400, "corrupt_image")
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF  # inside the IHDR CRC
    bad("png_bad_header_crc", bytes(bad_crc), "image/png", 400, "corrupt_image")
    bad_idat = bytearray(png)
    bad_idat[png.find(b"IDAT") + 20] ^= 0xFF  # inside the deflate stream
    bad("png_corrupt_idat", bytes(bad_idat), "image/png", 400, "corrupt_image")
    bogus_dht = bytearray(jpeg)
    dht = jpeg.find(b"\xff\xc4")
    bogus_dht[dht + 5 : dht + 21] = b"\xff" * 16  # code counts that overflow the Huffman table
    bad("jpeg_bogus_huffman_table", bytes(bogus_dht), "image/jpeg", 400, "corrupt_image")
    bad("polyglot_gif_header_script", b"GIF89a/*\x00\x00\x00\x00\x00*/=1;alert(document.domain);//;",
        "image/gif", 400, "corrupt_image")
    bad("gif_without_frames", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "image/gif", 400, "corrupt_image")
    bad("png_zero_width", _png_header_only(0, 10), "image/png", 400, "corrupt_image")
    bad("jpeg_zero_height", _replace_jpeg_sof_size(jpeg, 48, 0), "image/jpeg", 400, "corrupt_image")

    # --- too many pixels → 413 image_too_large (checked on the header; nothing is decoded)
    bad("png_bomb_80mp", _png_bomb(10_000, 8_000), "image/png", 413, "image_too_large")
    bad("png_bomb_192mp", _png_bomb(16_000, 12_000), "image/png", 413, "image_too_large")
    bad("png_huge_dimension_header", _png_header_only(2**31 - 1, 2**31 - 1), "image/png", 413, "image_too_large")
    bad("jpeg_huge_dimension_header", _replace_jpeg_sof_size(jpeg, 65_000, 65_000), "image/jpeg",
        413, "image_too_large")
    bad("gif_huge_screen", b"GIF89a\xff\xff\xff\xff\x00\x00\x00,\x00\x00\x00\x00\xff\xff\xff\xff\x00"
        b"\x02\x02D\x01\x00;", "image/gif", 413, "image_too_large")
    ztxt = _chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * (8 << 20), 9))
    bad("png_ztxt_text_bomb", png[:33] + ztxt + png[33:], "image/png", 413, "image_too_large")

    # --- awkward but valid → decoded to RGB
    ok("baseline_jpeg", jpeg, "image/jpeg")
    ok("baseline_png", png, "image/png")
    ok("png_sent_as_jpeg", png, "image/jpeg")  # the bytes decide, not the declared type
    ok("one_by_one", _save(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"), "image/png", (1, 1))
    ok("thin_1x64", _save(Image.new("RGB", (1, 64), (10, 20, 30)), "PNG"), "image/png", (1, 64))
    ok("grayscale_jpeg", _save(img.convert("L"), "JPEG"), "image/jpeg")
    ok("one_bit_png", _save(img.convert("1"), "PNG"), "image/png")
    gray16 = (np.linspace(0, 65535, 48 * 32).reshape(32, 48)).astype(np.uint16)
    ok("png_16bit_gray", _save(Image.fromarray(gray16), "PNG"), "image/png")
    ok("tiff_16bit_gray", _save(Image.fromarray(gray16), "TIFF"), "image/tiff")
    ok("rgba_png", _save(img.convert("RGBA"), "PNG"), "image/png")
    ok("la_png", _save(img.convert("LA"), "PNG"), "image/png")
    pal = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    ok("palette_png_with_transparency", _save(pal, "PNG", transparency=0), "image/png")
    ok("cmyk_jpeg", _save(img.convert("CMYK"), "JPEG"), "image/jpeg")
    frames = [Image.fromarray(np.full((32, 48, 3), c, np.uint8)) for c in (0, 128, 255)]
    ok("animated_gif", _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
       "image/gif")
    ok("animated_png", _save(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=50),
       "image/png")
    ok("animated_webp", _save(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50),
       "image/webp")
    ok("webp_lossy", _save(img, "WEBP", quality=80), "image/webp")
    ok("webp_lossless_rgba", _save(img.convert("RGBA"), "WEBP", lossless=True), "image/webp")
    ok("bmp", _save(img, "BMP"), "image/bmp")
    ok("tiff", _save(img, "TIFF"), "image/tiff")
    ok("multipage_tiff", _save(frames[0], "TIFF", save_all=True, append_images=frames[1:]), "image/tiff")
    # Orientation 6: the camera was rotated; viewers turn the stored 48×32 pixels 90° clockwise to 32×48.
    ok("exif_rotated_jpeg", _save(img, "JPEG", exif=_exif_orientation(6)), "image/jpeg", (32, 48))
    ok("jpeg_broken_exif", jpeg[:2] + b"\xff\xe1\x00\x10Exif\x00\x00MM\x00*\xff\xff" + jpeg[2:], "image/jpeg")
    ok("polyglot_gif_with_trailing_html", _save(img, "GIF") + b"<script>alert(1)</script>", "image/gif")
    # libjpeg recovers from damaged entropy-coded data (a warning, not an error), as browsers do.
    damaged = bytearray(jpeg)
    sos = jpeg.find(b"\xff\xda")
    for k in range(sos + 40, len(damaged) - 10, 7):
        damaged[k] = int(rng.integers(0, 255))
    ok("jpeg_damaged_entropy_data", bytes(damaged), "image/jpeg")
    # Only the IDAT CRC is wrong; zlib's Adler-32 still vouches for the pixels.
    crc_only = bytearray(png)
    crc_only[png.find(b"IEND") - 6] ^= 0xFF
    ok("png_bad_idat_crc_only", bytes(crc_only), "image/png")
    return cases
