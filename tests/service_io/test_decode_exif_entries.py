"""An EXIF block is read for its orientation alone: one whose first directory has more entries than any camera
writes (up to 65,535 distinct tags in a PNG or WebP EXIF chunk, 180 CPU-ms of Pillow's parsing a decode) is
ignored, as a broken one is, without being parsed; one within the bound still turns the picture."""

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
    Image.fromarray(pixels).save(buf, format=fmt, exif=exif_block(entries), **({"lossless": True} if fmt == "WEBP"
                                                                             else {}))
    return buf.getvalue()


@pytest.fixture
def exif_parses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many EXIF blocks Pillow parses (`Image.Exif.load`, called by `getexif`)."""
    calls: list[int] = []
    load = Image.Exif.load

    def counted(self: Image.Exif, data: bytes) -> None:
        calls.append(len(data))
        load(self, data)

    monkeypatch.setattr(Image.Exif, "load", counted)
    return calls


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_an_exif_block_beyond_the_bound_is_ignored_unparsed(fmt: str, exif_parses: list[int]) -> None:
    data = upload(fmt, 60_000)
    for decoded in (decode_image(data, MAX_PIXELS), decode_image_for_model(data, MAX_PIXELS, 64)):
        pixels = np.asarray(decoded[0] if isinstance(decoded, tuple) else decoded)
        assert pixels.shape[:2] == (HEIGHT, WIDTH)  # not turned
    assert exif_parses == []


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_an_exif_block_at_the_bound_still_turns_the_picture(fmt: str, exif_parses: list[int]) -> None:
    data = upload(fmt, orientation.MAX_EXIF_ENTRIES)
    decoded = decode_image(data, MAX_PIXELS)
    pixels = np.asarray(decoded[0] if isinstance(decoded, tuple) else decoded)
    assert pixels.shape[:2] == (WIDTH, HEIGHT)  # turned by 90 degrees
    assert exif_parses
