"""An EXIF block is read for its orientation alone, never handed to Pillow's EXIF parser (65,535 distinct tags in a
PNG eXIf chunk cost 180 CPU-ms of its parsing a decode): a directory with more entries than any camera writes is
ignored, as a broken one is (a JPEG's is refused: Pillow's own header read parses it); one within the bound still
turns the picture. A WebP's EXIF chunk turns nothing, whatever it holds: browsers ignore it."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from service.core import orientation
from service.core.decode import decode_image, decode_image_for_model

MAX_PIXELS = 40_000_000
WIDTH, HEIGHT = 48, 32


def exif_block(entries: int) -> bytes:
    """Little-endian EXIF whose first directory holds `entries` entries: orientation 6 (turn 90 degrees) and
    filler tags, each distinct."""
    orientation_6 = struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0)
    fillers = b"".join(struct.pack("<HHII", 0x0113 + i, 4, 1, i) for i in range(entries - 1))
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", entries) + orientation_6 + fillers + b"\0\0\0\0"


def upload(fmt: str, entries: int) -> bytes:
    pixels = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    pixels[:, : WIDTH // 2] = 255  # left half white: tells a turned picture from one that is not
    buf = io.BytesIO()
    # Pillow writes the block as given into a JPEG's APP1 segment and a WebP's EXIF chunk (signature included), and
    # drops the signature from a PNG's eXIf chunk.
    Image.fromarray(pixels).save(buf, format=fmt, exif=b"Exif\x00\x00" + exif_block(entries),
                                 **({"lossless": True} if fmt == "WEBP" else {}))
    return buf.getvalue()


@pytest.fixture
def exif_parses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many EXIF blocks Pillow parses (`Image.Exif.load`, called by `getexif`; Pillow's own JPEG header read
    parses a JPEG's for its resolution, so only PNG counts are asserted)."""
    calls: list[int] = []
    load = Image.Exif.load

    def counted(self: Image.Exif, data: bytes) -> None:
        calls.append(len(data))
        load(self, data)

    monkeypatch.setattr(Image.Exif, "load", counted)
    return calls


# Entries beyond the bound each carrier can hold: a JPEG's EXIF segment (64 KiB) has room for at most 5,459.
BEYOND = {"PNG": 60_000, "JPEG": 5_000}


def shape_of(decoded: object) -> tuple[int, int]:
    return np.asarray(decoded[0] if isinstance(decoded, tuple) else decoded).shape[:2]


# A JPEG's is refused instead (413), before Pillow's header read would parse it all (test_exif_bound.py).
@pytest.mark.parametrize("fmt", ["PNG"])
def test_an_exif_block_beyond_the_bound_is_ignored(fmt: str, exif_parses: list[int]) -> None:
    data = upload(fmt, BEYOND[fmt])
    assert len(data) > BEYOND[fmt] * 12  # the entries are all there
    for decoded in (decode_image(data, MAX_PIXELS), decode_image_for_model(data, MAX_PIXELS, 64)):
        assert shape_of(decoded) == (HEIGHT, WIDTH)  # not turned
    if fmt == "PNG":
        assert exif_parses == []


@pytest.mark.parametrize("fmt", sorted(BEYOND))
def test_an_exif_block_at_the_bound_still_turns_the_picture(fmt: str, exif_parses: list[int]) -> None:
    data = upload(fmt, orientation.MAX_EXIF_ENTRIES)
    for decoded in (decode_image(data, MAX_PIXELS), decode_image_for_model(data, MAX_PIXELS, 64)):
        assert shape_of(decoded) == (WIDTH, HEIGHT)  # turned by 90 degrees
    if fmt == "PNG":
        assert exif_parses == []


@pytest.mark.parametrize("entries", [1, orientation.MAX_EXIF_ENTRIES, 60_000])
def test_a_webp_exif_chunk_never_turns_the_picture(entries: int) -> None:
    """Browsers do not apply a WebP's EXIF orientation (tests/web/test_orientation_chromium.py); neither does the
    service, however few or many entries the block holds."""
    data = upload("WEBP", entries)
    with Image.open(io.BytesIO(data)) as img:
        assert img.getexif().get(0x0112) == 6  # the chunk is there, orientation 6 in it
    for decoded in (decode_image(data, MAX_PIXELS), decode_image_for_model(data, MAX_PIXELS, 64)):
        assert shape_of(decoded) == (HEIGHT, WIDTH)
