"""Pillow's JPEG header read walks two more kinds of segment content in Python, before any check of ours sees the
opened image: quantization tables (DQT, a table at a time, copying the rest of the segment after each) and Photoshop
resource blocks (APP13 "Photoshop 3.0", a "8BIM" block at a time). An 8x8 JPEG grown to 19 MB with either cost
0.75-1 CPU-s to open. The marker walk bounds both (`jpeg.MAX_DQT_BYTES`, `jpeg.MAX_PHOTOSHOP_BLOCKS`) and refuses
more with 413 `image_too_large`; a file at the bounds still decodes to the same pixels."""

from __future__ import annotations

import io
import struct
import time

import numpy as np
import pytest
from PIL import Image

from service.core import jpeg
from service.core.decode import decode_image, decode_image_for_model
from service.core.errors import DecodeError

MAX_PIXELS = 40_000_000
SEGMENT_ROOM = 0xFFFF - 2
TABLE = b"\x00" + bytes(range(1, 65))  # an 8-bit quantization table for slot 0 (Pillow reads a slot's last)
BLOCK = b"8BIM" + struct.pack(">H", 0x0400) + b"\0\0" + struct.pack(">I", 0)  # an empty resource block
PHOTOSHOP = b"Photoshop 3.0\0"
CPU_BUDGET_S = 0.05  # for a refusal of a 19 MB file; opening it took Pillow 0.75-1 s


def segment(marker: int, payload: bytes) -> bytes:
    assert len(payload) <= SEGMENT_ROOM
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


@pytest.fixture(scope="module")
def base() -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def with_segments(base: bytes, segments: bytes) -> bytes:
    """`segments` right after the start-of-image marker, before the file's own tables."""
    return base[:2] + segments + base[2:]


def dqt_flood(count: int) -> bytes:
    return segment(0xDB, TABLE * (SEGMENT_ROOM // len(TABLE))) * count


def photoshop_flood(count: int) -> bytes:
    return segment(0xED, PHOTOSHOP + BLOCK * ((SEGMENT_ROOM - len(PHOTOSHOP)) // len(BLOCK))) * count


def refused_in_budget(data: bytes) -> DecodeError:
    for decode in (lambda: decode_image(data, MAX_PIXELS), lambda: decode_image_for_model(data, MAX_PIXELS, 64)):
        started = time.process_time()
        with pytest.raises(DecodeError) as caught:
            decode()
        assert time.process_time() - started < CPU_BUDGET_S
        assert caught.value.code == "image_too_large"
    return caught.value


@pytest.mark.parametrize("flood", [dqt_flood, photoshop_flood])
def test_a_19_mb_flood_of_header_content_is_refused_at_once(base: bytes, flood) -> None:
    data = with_segments(base, flood(300))
    assert len(data) > 19_000_000
    error = refused_in_budget(data)
    assert "quantization tables" in str(error) and "Photoshop" in str(error)


def test_one_segment_past_either_bound_is_refused(base: bytes) -> None:
    tables = TABLE * (jpeg.MAX_DQT_BYTES // len(TABLE) + 1)
    refused_in_budget(with_segments(base, segment(0xDB, tables)))
    blocks = PHOTOSHOP + BLOCK * (jpeg.MAX_PHOTOSHOP_BLOCKS + 1)
    refused_in_budget(with_segments(base, segment(0xED, blocks)))


def test_the_bounds_add_up_over_segments(base: bytes) -> None:
    half_tables = segment(0xDB, TABLE * (jpeg.MAX_DQT_BYTES // len(TABLE) // 2 + 1))
    refused_in_budget(with_segments(base, half_tables * 2))
    half_blocks = segment(0xED, PHOTOSHOP + BLOCK * (jpeg.MAX_PHOTOSHOP_BLOCKS // 2 + 1))
    refused_in_budget(with_segments(base, half_blocks * 2))


def test_a_file_at_the_bounds_decodes_to_the_same_pixels(base: bytes) -> None:
    # The file's own tables follow and replace slot 0's, so the pixels are the plain file's.
    own_tables = sum(int.from_bytes(base[i + 2 : i + 4], "big") - 2 for i in range(len(base) - 1)
                     if base[i] == 0xFF and base[i + 1] == 0xDB)
    assert own_tables > 0
    tables = TABLE * ((jpeg.MAX_DQT_BYTES - own_tables) // len(TABLE))
    blocks = PHOTOSHOP + BLOCK * jpeg.MAX_PHOTOSHOP_BLOCKS
    data = with_segments(base, segment(0xDB, tables) + segment(0xED, blocks))
    with Image.open(io.BytesIO(data)) as img:
        assert len(img.info["photoshop"]) == 1  # Pillow read the blocks (all the same resource)
    plain = decode_image(base, MAX_PIXELS)
    assert np.array_equal(np.asarray(decode_image(data, MAX_PIXELS)), np.asarray(plain))
