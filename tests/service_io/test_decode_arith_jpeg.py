"""Arithmetic-coded JPEGs (ITU T.81; libjpeg-turbo, djpeg and OpenCV decode them) that take the Pillow path (CMYK,
or RGB that libjpeg warns about) decode at any size. libjpeg's arithmetic decoder cannot wait for more input
mid-scan, and Pillow used to feed it in 64 KiB reads: a scan crossing the end of a read was refused as corrupt.

The fixtures in data/ are a 96x64 photograph saved by Pillow (quality 80) and recoded by `jpegtran -arithmetic`
(`-progressive` too for one): no library the tests install writes arithmetic coding. Each is small enough to fit
one read; a comment segment in front makes its scan cross the end of the first.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import ImageFile

from service.core.decode import decode_image, decode_image_for_model

MAX_PIXELS = 40_000_000
DATA = Path(__file__).parent / "data"
SOS = b"\xff\xda"


def with_junk_before_eoi(data: bytes) -> bytes:
    """Three stray bytes before EOI: libjpeg warns, so even an RGB file leaves libjpeg-turbo's strict fast path."""
    return data[:-2] + b"\x00\x01\x02" + data[-2:]


# name: the upload as stored (every one takes the Pillow path)
CASES = {
    "CMYK": (DATA / "arith_cmyk.jpg").read_bytes(),
    "CMYK, progressive": (DATA / "arith_cmyk_progressive.jpg").read_bytes(),
    "RGB, stray bytes before EOI": with_junk_before_eoi((DATA / "arith_rgb.jpg").read_bytes()),
}


def crossing_the_first_read(data: bytes) -> bytes:
    """`data` with a comment segment after SOI, sized so that its first scan starts before the end of Pillow's
    first read (`ImageFile.MAXBLOCK` bytes) and ends after it, as a large ICC profile or XMP packet would put it."""
    scan = data.index(SOS)
    filler = ImageFile.MAXBLOCK - scan - (len(data) - scan) // 2 - 4
    grown = data[:2] + b"\xff\xfe" + struct.pack(">H", filler + 2) + b"c" * filler + data[2:]
    assert grown.index(SOS) < ImageFile.MAXBLOCK < len(grown)
    return grown


def test_the_fixtures_are_arithmetic_coded_and_valid() -> None:
    for name, data in CASES.items():
        assert any(marker in data for marker in (b"\xff\xc9", b"\xff\xca")), name  # SOF9 / SOF10: arithmetic
        assert cv2.imdecode(np.frombuffer(crossing_the_first_read(data), np.uint8), cv2.IMREAD_COLOR) is not None


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_arithmetic_jpeg_whose_scan_crosses_a_read_decodes(name: str) -> None:
    small = CASES[name]
    large = crossing_the_first_read(small)
    # In one read the file decoded before: the comment segment changes nothing, so the pixels are the same.
    np.testing.assert_array_equal(decode_image(large, MAX_PIXELS), decode_image(small, MAX_PIXELS))
    reduced, original = decode_image_for_model(large, MAX_PIXELS, 32)  # Pillow's draft: decoded at 1/2
    assert original == (64, 96)
    np.testing.assert_array_equal(reduced, decode_image_for_model(small, MAX_PIXELS, 32)[0])


def test_the_pixels_are_the_picture_opencv_decodes() -> None:
    """An independent decoder agrees (RGB: CMYK conversions differ between libraries)."""
    large = crossing_the_first_read(CASES["RGB, stray bytes before EOI"])
    reference = cv2.cvtColor(cv2.imdecode(np.frombuffer(large, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.abs(decode_image(large, MAX_PIXELS).astype(int) - reference.astype(int)).mean() < 1
