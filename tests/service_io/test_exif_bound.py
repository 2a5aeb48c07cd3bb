"""Pillow's JPEG header read parses the first directory of a JPEG's EXIF block (for its resolution) and of its MPF
index, in Python, before any check of ours sees the opened image: one 64 KB APP1 segment of 5,459 entries cost
~13 CPU-ms to open (a plain JPEG 0.03), 13 segments joined into one directory of 65,535 entries ~125 CPU-ms, an
MPF index of 5,459 entries ~24 CPU-ms. The structure checks count those entries first, walking the markers as
Pillow does, and refuse more than `MAX_TIFF_TAGS` with 413 `image_too_large`, as a TIFF's own first directory is;
a block at the bound still decodes and turns the picture."""

from __future__ import annotations

import io
import struct
import time

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from service.core import jpeg
from service.core.decode import decode_image, decode_image_for_model
from service.core.errors import DecodeError
from service.core.structure import MAX_TIFF_TAGS

MAX_PIXELS = 40_000_000
WIDTH, HEIGHT = 48, 32
SEGMENT_ROOM = 0xFFFF - 2  # the most payload one marker segment holds
CPU_BUDGET_S = 0.005  # for a refusal; Pillow's parse of the smallest case here alone took 10 ms


def base_jpeg() -> bytes:
    pixels = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    pixels[:, : WIDTH // 2] = 255  # left half white: tells a turned picture from one that is not
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def segment(marker: int, payload: bytes) -> bytes:
    assert len(payload) <= SEGMENT_ROOM
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def directory(entries: int, external: bool = False) -> bytes:
    """A little-endian TIFF structure whose first directory holds orientation 6 and `entries - 1` distinct
    filler tags: inline SHORTs, or (`external`) 8-byte values stored elsewhere, a seek and read each for Pillow."""
    orientation_6 = struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0)
    kind, count, value = (1, 8, struct.pack("<I", 8)) if external else (3, 1, b"\1\0\0\0")
    tags = [tag for tag in range(1 << 16) if tag != 0x0112][: entries - 1]
    fillers = b"".join(struct.pack("<HHI", tag, kind, count) + value for tag in tags)
    return b"II*\x00" + struct.pack("<IH", 8, entries) + orientation_6 + fillers + b"\0\0\0\0"


def most_entries(room: int) -> int:
    return (room - 14) // 12


def exif_segments(block: bytes) -> bytes:
    """`block` in APP1 "Exif" segments, split where a segment is full (Pillow joins them again)."""
    room = SEGMENT_ROOM - 6
    return b"".join(segment(0xE1, b"Exif\0\0" + block[i : i + room]) for i in range(0, len(block), room))


def with_header(*parts: bytes) -> bytes:
    base = base_jpeg()
    return base[:2] + b"".join(parts) + base[2:]


ONE_SEGMENT = most_entries(SEGMENT_ROOM - 6)
ONE_MPF = most_entries(SEGMENT_ROOM - 4)
# Each upload, and the entries of the directory Pillow reads from it
HOSTILE = {
    "one full EXIF segment": (with_header(exif_segments(directory(ONE_SEGMENT))), ONE_SEGMENT),
    "one full EXIF segment, values stored apart": (
        with_header(exif_segments(directory(ONE_SEGMENT, external=True))), ONE_SEGMENT),
    "65,535 entries over 13 joined EXIF segments": (with_header(exif_segments(directory(65_535))), 65_535),
    "the EXIF after a fake end of image": (
        with_header(b"\xff\xd9", exif_segments(directory(ONE_SEGMENT))), ONE_SEGMENT),
    # JPG0 and JPG13 have no length for Pillow: the two bytes after JPG0 are not a length that skips the EXIF
    "the EXIF behind markers Pillow reads alone": (
        with_header(b"\xff\xf0\xff\xfd", exif_segments(directory(2000))), 2000),
    "a full MPF index": (with_header(segment(0xE2, b"MPF\0" + directory(ONE_MPF, external=True))), ONE_MPF),
}


@pytest.fixture
def tiff_parses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The entries of every TIFF directory Pillow reads (the EXIF block's and the MPF index's included)."""
    calls: list[int] = []
    load = TiffImagePlugin.ImageFileDirectory_v2.load

    def counted(self: TiffImagePlugin.ImageFileDirectory_v2, fp: io.BytesIO) -> None:
        load(self, fp)
        calls.append(len(self))

    monkeypatch.setattr(TiffImagePlugin.ImageFileDirectory_v2, "load", counted)
    return calls


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_directory_beyond_the_bound_is_refused_before_pillow_parses_it(name: str, tiff_parses: list[int]) -> None:
    data = HOSTILE[name][0]
    spent = []
    for _ in range(3):
        start = time.process_time()
        with pytest.raises(DecodeError) as refused:
            decode_image_for_model(data, MAX_PIXELS, 64)
        spent.append(time.process_time() - start)
        assert refused.value.code == "image_too_large"
        assert f"more than {MAX_TIFF_TAGS}" in str(refused.value)
    assert tiff_parses == []
    assert min(spent) < CPU_BUDGET_S, spent


@pytest.mark.filterwarnings("ignore:Image appears to be a malformed MPO file")
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_pillow_parses_them_when_opening(name: str, tiff_parses: list[int]) -> None:
    """What the refusal saves: opening the file, Pillow reads the whole directory."""
    data, entries = HOSTILE[name]
    Image.open(io.BytesIO(data)).close()
    assert max(tiff_parses) == entries > MAX_TIFF_TAGS


@pytest.mark.parametrize("where", ["one segment", "split over two"])
def test_a_directory_at_the_bound_still_turns_the_picture(where: str) -> None:
    block = directory(MAX_TIFF_TAGS)
    if where == "one segment":
        data = with_header(exif_segments(block))
    else:
        data = with_header(segment(0xE1, b"Exif\0\0" + block[:5000]), segment(0xE1, b"Exif\0\0" + block[5000:]))
    for decoded in (decode_image(data, MAX_PIXELS), decode_image_for_model(data, MAX_PIXELS, 64)[0]):
        assert decoded.shape[:2] == (WIDTH, HEIGHT)  # turned by 90 degrees


def test_a_camera_like_exif_and_mpf_still_decode() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Camera"
    exif[0x011A] = exif[0x011B] = 72.0
    buf = io.BytesIO()
    Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), np.uint8)).save(buf, "MPO", exif=exif, save_all=True,
                                                                 append_images=[Image.new("RGB", (8, 8))])
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        assert img.format == "MPO" and img.getexif()[0x0112] == 6
    assert decode_image(buf.getvalue(), MAX_PIXELS).shape[:2] == (WIDTH, HEIGHT)


@pytest.mark.parametrize("magic", [b"II\x00*", b"MM*\x00"])
def test_a_tiff_with_the_magic_bytes_swapped_is_bounded_too(magic: bytes, tiff_parses: list[int]) -> None:
    """Pillow reads "II\\0*" and "MM*\\0" as TIFF headers too; the first directory's bound holds for them."""
    order = "<" if magic.startswith(b"II") else ">"
    entries = b"".join(struct.pack(order + "HHIHH", 0x1000 + i, 3, 1, 1, 0) for i in range(2000))
    data = magic + struct.pack(order + "IH", 8, 2000) + entries + b"\0\0\0\0"
    with pytest.raises(DecodeError) as refused:
        decode_image(data, MAX_PIXELS)
    assert refused.value.code == "image_too_large" and "2000 entries" in str(refused.value)
    assert tiff_parses == []


@pytest.mark.parametrize("hiding", [b"\xff\xd9", b"\xff\xf0\xff\xfc"], ids=["after a fake end of image", "behind JPG0"])
def test_a_segment_flood_pillow_walks_is_refused(hiding: bytes) -> None:
    """The segment bound holds for every segment Pillow's header read walks: it reads on past an end-of-image
    marker, and takes JPG0-JPG13 as two bytes alone."""
    data = with_header(hiding, b"\xff\xe0\x00\x02" * (jpeg.MAX_SEGMENTS + 1))
    with Image.open(io.BytesIO(data)) as img:
        assert len(img.applist) == jpeg.MAX_SEGMENTS + 2  # Pillow walks them all (the picture's JFIF too)
    with pytest.raises(DecodeError) as refused:
        decode_image(data, MAX_PIXELS)
    assert refused.value.code == "image_too_large" and "marker segments" in str(refused.value)
