"""Uploads whose orientation hints sit in every place a file can carry them, each with the EXIF orientation a browser
applies to it (`Case.shown`): the decode tests hold the service to it, and tests/web/test_orientation_chromium.py
holds real Chromium to it, so both agree with what the web page shows.

Each stores the same 48x32 picture (a gradient with a marked corner: every orientation of it differs).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, PngImagePlugin

from tests.service_io.decode_helpers import png_chunk

WIDTH, HEIGHT = 48, 32
EXIF = b"Exif\x00\x00"
ORIENTATION, EXIF_IFD, MODEL = 0x0112, 0x8769, 0x0110
BYTE, ASCII, SHORT, LONG, SSHORT = 1, 2, 3, 4, 8

# What a viewer shows for each EXIF orientation, as numpy operations on the stored pixels (independent of Pillow).
SHOWN: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, k=-1),  # rotate 90 degrees clockwise
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, k=1),
}


@dataclass(frozen=True)
class Case:
    name: str
    media_type: str
    data: bytes
    shown: int  # the EXIF orientation a browser applies (1: none)
    lossless: bool


def picture() -> np.ndarray:
    """The stored pixels: red across, green down, a blue top-left corner."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    pixels = np.stack([x * 255 // (WIDTH - 1), y * 255 // (HEIGHT - 1), np.full_like(x, 60)], axis=-1)
    pixels[:8, :12, 2] = 250
    return pixels.astype(np.uint8)


def encoded(fmt: str, mode: str = "RGB", **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(picture()).convert(mode).save(buf, fmt, **kw)
    return buf.getvalue()


def entry(tag: int, kind: int, count: int, value: bytes, order: str = ">") -> bytes:
    """A TIFF directory entry; `value` is the 4-byte value field (left-justified)."""
    return struct.pack(order + "HHI", tag, kind, count) + value.ljust(4, b"\x00")


def short(value: int, order: str = ">") -> bytes:
    return struct.pack(order + "H", value)


def tiff(entries: list[bytes], order: str = ">", declared: int | None = None, tail: bytes = b"") -> bytes:
    """A TIFF structure (an EXIF block without its "Exif\\0\\0" signature): header, one directory at offset 8
    (`declared` entries, if given, instead of the count written), its next-directory offset 0, then `tail`."""
    mark = b"MM\x00*" if order == ">" else b"II*\x00"
    count = len(entries) if declared is None else declared
    return (mark + struct.pack(order + "I", 8) + struct.pack(order + "H", count) + b"".join(entries)
            + b"\x00\x00\x00\x00" + tail)


def orientation_block(value: int, order: str = ">") -> bytes:
    return tiff([entry(ORIENTATION, SHORT, 1, short(value, order), order)], order)


def in_sub_directory(value: int) -> bytes:
    """Orientation only in the EXIF sub-directory, which the first directory points to."""
    sub = 8 + 2 + 12 + 4
    return tiff([entry(EXIF_IFD, LONG, 1, struct.pack(">I", sub))],
                tail=struct.pack(">H", 1) + entry(ORIENTATION, SHORT, 1, short(value)) + b"\x00" * 4)


def xmp(value: int) -> bytes:
    return (b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
            b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
            b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="%d"/></rdf:RDF></x:xmpmeta>'
            b'<?xpacket end="w"?>' % value)


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def jpeg_with(*segments: bytes, before_scan: bool = False, base: bytes | None = None) -> bytes:
    """The picture as JPEG (`base`, or RGB at quality 95) with `segments` right after SOI, or right before the first
    scan (after SOF)."""
    base = encoded("JPEG", quality=95) if base is None else base
    at = base.index(b"\xff\xda") if before_scan else 2
    return base[:at] + b"".join(segments) + base[at:]


def png_with(*chunks: tuple[bytes, bytes], after_idat: bool = False, base: bytes | None = None) -> bytes:
    """The picture as PNG with `chunks` just after IHDR, or just before IEND."""
    base = encoded("PNG") if base is None else base
    at = len(base) - 12 if after_idat else 33
    return base[:at] + b"".join(png_chunk(kind, payload) for kind, payload in chunks) + base[at:]


def raw_profile(block: bytes) -> str:
    """ImageMagick's "Raw profile type exif" text: a header, then the hex digits of the EXIF block."""
    digits = block.hex()
    return f"\nexif\n{len(block):8d}\n" + "\n".join(digits[i : i + 72] for i in range(0, len(digits), 72)) + "\n"


def png_text(key: str, text: str, kind: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    if kind == "iTXt":
        info.add_itxt(key, text)
    else:
        info.add_text(key, text, zip=kind == "zTXt")
    return encoded("PNG", pnginfo=info)


def app1_exif(block: bytes) -> bytes:
    return segment(0xE1, EXIF + block)


def cases() -> list[Case]:
    """Every case, named for the place its hint sits in."""
    found: list[Case] = []

    def jpeg(name: str, data: bytes, shown: int) -> None:
        found.append(Case("jpeg: " + name, "image/jpeg", data, shown, False))

    def png(name: str, data: bytes, shown: int) -> None:
        found.append(Case("png: " + name, "image/png", data, shown, True))

    for value in range(1, 9):
        jpeg(f"APP1 Exif SHORT {value}", jpeg_with(app1_exif(orientation_block(value))), value)
    jpeg("APP1 Exif SHORT 6, little-endian", jpeg_with(app1_exif(orientation_block(6, "<"))), 6)
    jpeg("APP1 Exif after SOF", jpeg_with(app1_exif(orientation_block(6)), before_scan=True), 6)
    jpeg("APP1 XMP, then APP1 Exif", jpeg_with(segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + xmp(3)),
                                               app1_exif(orientation_block(6))), 6)
    jpeg("APP1 signed Exif\\0\\xff", jpeg_with(segment(0xE1, b"Exif\x00\xff" + orientation_block(6))), 6)
    jpeg("orientation only in the EXIF sub-directory", jpeg_with(app1_exif(in_sub_directory(6))), 6)
    jpeg("first of two orientation entries", jpeg_with(app1_exif(tiff([
        entry(ORIENTATION, SHORT, 1, short(6)), entry(ORIENTATION, SHORT, 1, short(3))]))), 6)
    jpeg("orientation 9, then 6", jpeg_with(app1_exif(tiff([
        entry(ORIENTATION, SHORT, 1, short(9)), entry(ORIENTATION, SHORT, 1, short(6))]))), 6)
    jpeg("orientation LONG, then SHORT", jpeg_with(app1_exif(tiff([
        entry(ORIENTATION, LONG, 1, struct.pack(">I", 3)), entry(ORIENTATION, SHORT, 1, short(6))]))), 6)
    jpeg("directory cut short", jpeg_with(app1_exif(tiff([entry(ORIENTATION, SHORT, 1, short(6))], declared=5))[:-4]),
         6)
    jpeg("first of two Exif segments (6, then 3)", jpeg_with(app1_exif(orientation_block(6)),
                                                             app1_exif(orientation_block(3))), 6)
    # CMYK: decoded by Pillow rather than libjpeg-turbo straight to numpy.
    jpeg("CMYK, APP1 Exif SHORT 6", jpeg_with(app1_exif(orientation_block(6)), base=encoded("JPEG", quality=95,
                                                                                            mode="CMYK")), 6)
    # Hints a browser does not apply.
    jpeg("APP1 XMP tiff:Orientation only", jpeg_with(segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + xmp(6))), 1)
    jpeg("orientation typed LONG", jpeg_with(app1_exif(tiff([entry(ORIENTATION, LONG, 1, struct.pack(">I", 6))]))),
         1)
    jpeg("CMYK, orientation typed LONG", jpeg_with(app1_exif(tiff([entry(ORIENTATION, LONG, 1, struct.pack(">I", 6))])),
                                                   base=encoded("JPEG", quality=95, mode="CMYK")), 1)
    jpeg("orientation typed SSHORT", jpeg_with(app1_exif(tiff([entry(ORIENTATION, SSHORT, 1, short(6))]))), 1)
    jpeg("orientation typed BYTE", jpeg_with(app1_exif(tiff([entry(ORIENTATION, BYTE, 1, b"\x06")]))), 1)
    jpeg("orientation of count 2", jpeg_with(app1_exif(tiff([entry(ORIENTATION, SHORT, 2, short(6) + short(6))]))), 1)
    jpeg("orientation 0", jpeg_with(app1_exif(orientation_block(0))), 1)
    jpeg("orientation 9", jpeg_with(app1_exif(orientation_block(9))), 1)
    jpeg("first Exif segment says 1, second 6", jpeg_with(app1_exif(orientation_block(1)),
                                                          app1_exif(orientation_block(6))), 1)
    jpeg("first Exif segment has no orientation", jpeg_with(app1_exif(tiff([entry(MODEL, ASCII, 4, b"cam\x00")])),
                                                            app1_exif(orientation_block(6))), 1)
    jpeg("first Exif segment broken", jpeg_with(app1_exif(b"not a TIFF structure"), app1_exif(orientation_block(6))),
         1)
    jpeg("Exif in APP0", jpeg_with(segment(0xE0, EXIF + orientation_block(6))), 1)
    jpeg("Exif in APP2", jpeg_with(segment(0xE2, EXIF + orientation_block(6))), 1)
    jpeg("APP1 TIFF structure without the Exif signature", jpeg_with(segment(0xE1, orientation_block(6))), 1)
    jpeg("TIFF magic 43", jpeg_with(app1_exif(b"MM\x00+" + orientation_block(6)[4:])), 1)
    jpeg("orientation only in the second directory", jpeg_with(app1_exif(
        tiff([entry(MODEL, ASCII, 4, b"cam\x00")])[:-4] + struct.pack(">I", 26)
        + struct.pack(">H", 1) + entry(ORIENTATION, SHORT, 1, short(6)) + b"\x00" * 4)), 1)
    jpeg("EXIF sub-directory pointer typed SHORT", jpeg_with(app1_exif(
        tiff([entry(EXIF_IFD, SHORT, 1, short(26))], tail=struct.pack(">H", 1) + entry(ORIENTATION, SHORT, 1, short(6))
             + b"\x00" * 4))), 1)

    png("eXIf before IDAT", png_with((b"eXIf", orientation_block(6))), 6)
    png("eXIf before IDAT, little-endian, 3", png_with((b"eXIf", orientation_block(3, "<"))), 3)
    png("eXIf written by Pillow", encoded("PNG", exif=EXIF + orientation_block(8)), 8)
    png("eXIf in an APNG", animated_png(EXIF + orientation_block(6)), 6)
    png("eXIf after IDAT", png_with((b"eXIf", orientation_block(6)), after_idat=True), 1)
    png("eXIf starting Exif\\0\\0", png_with((b"eXIf", EXIF + orientation_block(6))), 1)
    png("first of two eXIf chunks says 1", png_with((b"eXIf", orientation_block(1)), (b"eXIf", orientation_block(6))),
        1)
    png("eXIf orientation typed LONG", png_with((b"eXIf", tiff([entry(ORIENTATION, LONG, 1, struct.pack(">I", 6))]))),
        1)
    png("XMP iTXt only", png_text("XML:com.adobe.xmp", xmp(6).decode(), "iTXt"), 1)
    png("'Raw profile type exif' zTXt", png_text("Raw profile type exif", raw_profile(EXIF + orientation_block(6)),
                                                "zTXt"), 1)
    png("'Raw profile type exif' tEXt", png_text("Raw profile type exif", raw_profile(EXIF + orientation_block(6)),
                                                "tEXt"), 1)

    found.append(Case("webp: EXIF chunk, lossless", "image/webp",
                      encoded("WEBP", lossless=True, exif=EXIF + orientation_block(6)), 1, True))
    found.append(Case("webp: EXIF chunk, lossy", "image/webp",
                      encoded("WEBP", quality=95, exif=EXIF + orientation_block(6)), 1, False))
    found.append(Case("webp: XMP chunk only", "image/webp", encoded("WEBP", lossless=True, xmp=xmp(6)), 1, True))
    return found


def animated_png(exif: bytes) -> bytes:
    """The picture as the first of two APNG frames, with an eXIf chunk (Pillow writes it before IDAT)."""
    frames = [Image.fromarray(picture()), Image.fromarray(255 - picture())]
    buf = io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:], exif=exif)
    return buf.getvalue()


def expected(case: Case) -> np.ndarray:
    """The picture as a browser shows `case`."""
    return np.ascontiguousarray(SHOWN[case.shown](picture()))


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two same-shaped pixel arrays (inf when the shapes differ)."""
    return float(np.abs(a.astype(int) - b.astype(int)).mean()) if a.shape == b.shape else float("inf")
