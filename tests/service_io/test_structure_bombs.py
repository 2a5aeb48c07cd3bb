"""Container-structure bombs: tiny images wrapped in millions of strips, markers, chunks or sub-blocks, or in one
giant tile, are refused before Pillow's Python parsers walk them; legitimate files of every format still decode
exactly as Pillow does."""

from __future__ import annotations

import io
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.core.decode import decode_image, decode_image_for_model
from service.core.decode_budget import DECODE_BUDGET
from service.core.errors import DecodeError
from service.errors import ApiError
from testkit.photos import photo
from testkit.server import ServerProcess
from tests.service.svc_helpers import decoded_pixels, make_rule_model

MAX_PIXELS = 40_000_000
QUICK_S = 0.5  # each refusal takes ~2 ms; the old code decoded these bombs (200) in 0.13-1.9 s each


# ----------------------------------------------------------------------------------------------- generators

def tiff_strips(n: int, width: int = 1, height: int = 2) -> bytes:
    """A raw 8-bit grey TIFF, RowsPerStrip=1, listing `n` StripOffsets (SHORT), all pointing at its pixels."""
    tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
            (273, 3, n, 8 + 2 + 7 * 12 + 4 + 6), (278, 3, 1, 1)]
    out = bytearray(b"II*\x00" + struct.pack("<I", 8 + 6) + b"\x80" * 6)  # header, then 6 bytes of pixels
    out += struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        out += struct.pack("<HHIHH", tag, kind, count, value, 0) if kind == 3 and count == 1 else \
            struct.pack("<HHII", tag, kind, count, value)
    out += b"\x00" * 4
    return bytes(out + struct.pack("<H", 8) * n)


def tiled_tiff(rgb: np.ndarray, tile: int) -> bytes:
    """A deflate-compressed RGB TIFF in tile x tile tiles (edge tiles padded, as the format wants), as libtiff
    writes one (Pillow cannot)."""
    height, width = rgb.shape[:2]
    down, across = -(-height // tile), -(-width // tile)
    padded = np.zeros((down * tile, across * tile, 3), np.uint8)
    padded[:height, :width] = rgb
    tiles = [zlib.compress(padded[y : y + tile, x : x + tile].tobytes(), 6)
             for y in range(0, down * tile, tile) for x in range(0, across * tile, tile)]
    n = len(tiles)
    tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 3, 0), (259, 3, 1, 8), (262, 3, 1, 2),
            (277, 3, 1, 3), (284, 3, 1, 1), (322, 4, 1, tile), (323, 4, 1, tile), (324, 4, n, 0), (325, 4, n, 0)]
    arrays = 8 + 2 + len(tags) * 12 + 4
    tags[2] = (258, 3, 3, arrays)
    offsets_at, counts_at = arrays + 8, arrays + 8 + 4 * n
    data_at = counts_at + 4 * n
    offsets = [data_at + sum(len(t) for t in tiles[:i]) for i in range(n)]
    tags[9] = (324, 4, n, offsets[0] if n == 1 else offsets_at)
    tags[10] = (325, 4, n, len(tiles[0]) if n == 1 else counts_at)
    out = bytearray(b"II*\x00" + struct.pack("<IH", 8, len(tags)))
    for tag, kind, count, value in tags:
        out += struct.pack("<HHIHH", tag, kind, count, value, 0) if kind == 3 and count == 1 else \
            struct.pack("<HHII", tag, kind, count, value)
    out += b"\x00" * 4 + struct.pack("<HHH", 8, 8, 8) + b"\x00\x00"
    out += struct.pack(f"<{n}I", *offsets) + struct.pack(f"<{n}I", *(len(t) for t in tiles))
    return bytes(out + b"".join(tiles))


def tiff_giant_tile(tile: int, side: int = 16) -> bytes:
    """A side x side RGB deflate TIFF whose one tile is declared tile x tile (deflated whole)."""
    return tiled_tiff(np.zeros((side, side, 3), np.uint8), tile)


def gif_comment_flood(size: int) -> bytes:
    """A 1x1 GIF with one comment extension of `size`/3 two-byte sub-blocks."""
    head = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    image = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00;"
    return head + b"!\xfe" + b"\x02ab" * (size // 3) + b"\x00" + image


def jpeg_marker_flood(size: int) -> bytes:
    """An 8x8 JPEG with `size`/4 empty APP5 segments after SOI."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buf, "JPEG")
    return buf.getvalue()[:2] + b"\xff\xe5\x00\x02" * (size // 4) + buf.getvalue()[2:]


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_chunk_flood(size: int) -> bytes:
    """A 1x1 PNG with `size`/12 empty private chunks before IDAT."""
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    idat = png_chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
    return b"\x89PNG\r\n\x1a\n" + ihdr + png_chunk(b"prVt", b"") * (size // 12) + idat + png_chunk(b"IEND", b"")


def bmp_rle8(width: int, height: int, run: int = 1) -> bytes:
    """A valid 8-bit grey RLE8 BMP made of `run`-pixel runs (run 1: Pillow's Python decoder turns once a pixel)."""
    row = b"".join(bytes([run, (x * 7) & 0xFF]) for x in range(0, width, run)) + b"\x00\x00"
    body = row * height + b"\x00\x01"
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    offset = 14 + 40 + len(palette)
    dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(body), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(body), 0, 0, offset) + dib + palette + body


def eps_flood(size: int) -> bytes:
    """An EPS (not an accepted format) declaring 5000x5000, then `size`/4 comment lines."""
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 5000 5000\n" + b"%%a\n" * (size // 4) + b"%%EOF\n"


# ------------------------------------------------------------------------------------------------ helpers

def refused(decode: Callable[[bytes], object], data: bytes) -> tuple[int, str, str, float]:
    """(HTTP status, code, message, seconds) of `decode(data)`, which must raise `DecodeError`."""
    start = time.perf_counter()
    with pytest.raises(DecodeError) as err:
        decode(data)
    elapsed = time.perf_counter() - start
    return ApiError.from_decode(err.value).status, err.value.code, err.value.message, elapsed


def full(data: bytes) -> object:
    return decode_image(data, MAX_PIXELS)


def for_model(data: bytes) -> object:
    return decode_image_for_model(data, MAX_PIXELS, 64)


def encoded(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- the bombs

def test_decoded_pixels_opens_only_accepted_formats() -> None:
    data = eps_flood(2_000_000)
    start = time.perf_counter()
    # Pillow's EPS parser, reached when Image.open tried every plugin, read the 5000x5000 box (and walked every
    # comment line); the service decodes no EPS, so no header size may come out of it.
    assert decoded_pixels(data, full_resolution=True) == 0
    assert time.perf_counter() - start < 0.05
    assert refused(full, data)[:2] == (415, "unsupported_media_type")


@pytest.mark.parametrize(("data", "what"), [
    (tiff_strips(300_000), "where its 1x2 geometry has 2"),  # far more offsets than the geometry has strips
    (tiff_strips(300_000, height=300_000), "more than 65536"),  # as many as the geometry has, 1 pixel each
], ids=["beyond-geometry", "within-geometry"])
def test_tiff_strip_floods_are_refused_before_pillow_builds_tiles(data: bytes, what: str) -> None:
    for decode in (full, for_model):
        status, code, message, elapsed = refused(decode, data)
        assert (status, code) == (413, "image_too_large") and what in message
        assert elapsed < QUICK_S
    start = time.perf_counter()
    assert decoded_pixels(data, full_resolution=True) == 0  # the pool choice does not open it either
    assert time.perf_counter() - start < QUICK_S


def test_tiff_tile_far_larger_than_the_image_is_refused() -> None:
    data = tiff_giant_tile(4096)  # 16x16 image, 4096x4096x3 = 48 MiB inflated by libtiff from 49 KB
    assert len(data) < 100_000
    status, code, message, elapsed = refused(full, data)
    assert (status, code) == (413, "image_too_large") and "4096x4096 tiles" in message
    assert elapsed < QUICK_S


def test_tiff_tile_larger_than_the_image_is_held_in_the_decode_budget() -> None:
    data = tiff_giant_tile(1024, side=600)  # within the tile rule (1 MP tile), but 2.9x the image's pixels
    capacity = DECODE_BUDGET.capacity
    DECODE_BUDGET.set_capacity(8 << 20)  # the 600x600 image fits (~4 MB), the 1024x1024 tile (~11.5 MB) does not
    try:
        status, code, message, _ = refused(full, data)
    finally:
        DECODE_BUDGET.set_capacity(capacity)
    assert (status, code) == (413, "image_too_large") and "decode memory budget" in message
    assert full(data).shape == (600, 600, 3)  # and under the real budget it decodes


@pytest.mark.parametrize(("make", "what"), [
    (lambda: gif_comment_flood(6_000_000), "GIF has more than"),
    (lambda: jpeg_marker_flood(6_000_000), "JPEG has more than"),
    (lambda: png_chunk_flood(6_000_000), "PNG has more than"),
    (lambda: bmp_rle8(4000, 750), "RLE-compressed BMP"),
], ids=["gif-comment", "jpeg-markers", "png-chunks", "bmp-rle8"])
def test_parse_floods_are_refused_quickly(make: Callable[[], bytes], what: str) -> None:
    data = make()
    for decode in (full, for_model):
        status, code, message, elapsed = refused(decode, data)
        assert (status, code) == (413, "image_too_large") and what in message
        assert elapsed < QUICK_S
    start = time.perf_counter()
    decoded_pixels(data, full_resolution=True)
    assert time.perf_counter() - start < QUICK_S


# ---------------------------------------------------------------------------------------- legitimate files

def legit_files() -> Iterator[tuple[str, bytes]]:
    rgb = Image.fromarray(photo("astronaut.png", size=(200, 150)))
    yield "tiff-striped", encoded(rgb, "TIFF", compression="tiff_deflate")
    yield "tiff-1-row-strips", encoded(rgb, "TIFF", compression="tiff_deflate", strip_size=1)
    yield "tiff-raw", encoded(rgb, "TIFF")
    yield "tiff-tiled", tiled_tiff(np.asarray(rgb), 64)
    yield "tiff-one-big-tile", tiled_tiff(np.asarray(rgb)[:30, :40], 256)
    yield "gif", encoded(rgb.convert("P"), "GIF", comment=b"c" * 3000)
    png = encoded(rgb, "PNG")
    idat = b"".join(png[p + 8 : p + 8 + int.from_bytes(png[p : p + 4])] for p in _png_chunks(png, b"IDAT"))
    small = b"".join(png_chunk(b"IDAT", idat[i : i + 16]) for i in range(0, len(idat), 16))  # many tiny IDATs
    yield "png-small-idats", png[:33] + png_chunk(b"tEXt", b"k\x00v") + small + png_chunk(b"IEND", b"")
    exif = Image.Exif()
    exif[0x010F] = "maker"
    yield "jpeg-icc-exif", encoded(rgb, "JPEG", quality=90, exif=exif.tobytes(), icc_profile=b"\0" * 200_000)
    yield "bmp", encoded(rgb, "BMP")
    yield "bmp-rle8", bmp_rle8(200, 100, run=4)


def _png_chunks(png: bytes, kind: bytes) -> list[int]:
    positions, pos = [], 8
    while pos < len(png):
        length = int.from_bytes(png[pos : pos + 4])
        if png[pos + 4 : pos + 8] == kind:
            positions.append(pos)
        pos += 12 + length
    return positions


@pytest.mark.parametrize(("name", "data"), list(legit_files()), ids=lambda v: v if isinstance(v, str) else "")
def test_legitimate_files_decode_as_pillow_does(name: str, data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as img:
        expected = np.asarray(img.convert("RGB"))
        assert name[:3] != "tif" or ("tile" in name) == (322 in img.tag_v2)
    np.testing.assert_array_equal(decode_image(data, MAX_PIXELS), expected)
    assert decoded_pixels(data, full_resolution=True) == expected.shape[0] * expected.shape[1]


def test_tiff_with_many_legitimate_strips_decodes() -> None:
    grey = Image.fromarray(np.arange(300 * 2000, dtype=np.uint32).reshape(2000, 300).astype(np.uint8))
    data = encoded(grey, "TIFF", compression="tiff_deflate", strip_size=1)  # one strip per row: 2,000 strips
    with Image.open(io.BytesIO(data)) as img:
        assert len(img.tag_v2[273]) == 2000
    np.testing.assert_array_equal(decode_image(data, MAX_PIXELS)[..., 0], np.asarray(grey))


# ------------------------------------------------------------------------------------------- real server

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    model: Path = make_rule_model(tmp_path_factory.mktemp("structure") / "rule.onnx")
    with ServerProcess(model, SEGMENT_INTRA_OP_THREADS="1") as proc:
        yield proc.wait_ready()


def test_server_refuses_structure_bombs_and_serves_legitimate_files(server: ServerProcess) -> None:
    bombs = [(tiff_strips(300_000), 413, "image_too_large"), (tiff_giant_tile(4096), 413, "image_too_large"),
             (jpeg_marker_flood(6_000_000), 413, "image_too_large"), (png_chunk_flood(6_000_000), 413,
             "image_too_large"), (eps_flood(2_000_000), 415, "unsupported_media_type")]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for data, status, code in bombs:
            start = time.perf_counter()
            r = client.post("/segment", content=data, params={"output": "stats"})
            assert (r.status_code, r.json()["error"]["code"]) == (status, code)
            assert time.perf_counter() - start < 2.0
        for name, data in legit_files():
            r = client.post("/segment", content=data, params={"output": "stats"})
            assert r.status_code == 200, (name, r.text)
