"""The class-id palette PNG and the class-colour RGB PNG, written directly: rows built once per *model* row, PNG's "Up"
filter, zlib-ng's run-length deflate.

Why not Pillow / OpenCV: for a 1024x768 map Pillow spends ~1.3 ms in its own row packing and filtering before zlib
sees a byte (measured at compress_level=0), ~1.9 ms in all, and OpenCV's libpng takes ~6.7 ms for the RGB colour
image of a 1024x768 answer. Here each model row is packed or coloured once (the upload-size map repeats each model
row several times), a repeated row becomes a row of zeros under the Up filter, and zlib-ng's Z_RLE deflate (~6x
faster than zlib's on the same bytes) squeezes those runs: ~0.15 ms for the palette PNG, ~2.6 ms for the colour PNG
with its colouring (against ~8.5 through OpenCV's libpng), sizes within 1 % of libpng's. The format is plain PNG
(IHDR, PLTE for the palette, IDAT, IEND; palette bit depth 1/2/4/8 chosen from the palette size as Pillow does), so
every decoder reads the class ids, or colours, back unchanged.
"""

from __future__ import annotations

import struct
import sys
import zlib

import cv2
import numpy as np
from zlib_ng import zlib_ng

from service.core.outputs.labelmap import LabelMap

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPE_PALETTE = 3
_COLOUR_TYPE_RGB = 2
_FILTER_UP = 2
# Level 1 with Z_RLE: label maps are runs; a higher level only costs time (same size at 6, measured).
_LEVEL = 1


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def with_icc_profile(png: bytes, profile: bytes) -> bytes:
    """`png` (a whole PNG file, IHDR first as the format requires) with an iCCP chunk carrying ICC `profile`
    inserted right after IHDR, where the format wants it (before PLTE and IDAT). OpenCV's encoder cannot write one;
    the rest of the file is kept byte for byte."""
    start = len(_SIGNATURE)
    if png[:start] != _SIGNATURE or png[start + 4 : start + 8] != b"IHDR":
        raise ValueError("not a PNG starting with its IHDR chunk")
    ihdr_end = start + 12 + struct.unpack(">I", png[start : start + 4])[0]  # length, type, data, CRC
    # Profile name, NUL, compression method 0 (zlib), the deflated profile: what Pillow writes and reads.
    iccp = _chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(profile))
    return png[:ihdr_end] + iccp + png[ihdr_end:]


def bit_depth(n_colours: int) -> int:
    """The smallest PNG palette bit depth holding `n_colours` entries (Pillow's choice too)."""
    for bits in (1, 2, 4, 8):
        if n_colours <= 1 << bits:
            return bits
    raise ValueError(f"a PNG palette holds at most 256 colours, got {n_colours}")


def pack_rows(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack each row of 2-D uint8 `values` (< 2**bits) into PNG's big-endian sub-byte layout.

    The fields are added, wrapping at 256, rather than or-ed: the same bytes for values below 2**bits, and a
    linear map modulo 256 for any values, so packing differences of rows (modulo 256) gives the differences of
    the packed rows, which is how `encode_palette_png` forms PNG's Up filter."""
    if bits == 8:
        return values
    per_byte = 8 // bits
    h, w = values.shape
    if bits == 4 and w % 2 == 0 and sys.byteorder == "little" and values.flags.c_contiguous:
        # Two pixels as one little-endian uint16 (even pixel low): the low byte of 16 * pair + pair // 256 is
        # 16 * even + odd, in array passes ~5x faster than the strided general path below. Products and
        # quotients, not shifts: numpy's integer shifts are not vectorised (~15x slower here).
        pairs = values.view(np.uint16)
        packed = np.empty(pairs.shape, np.uint8)
        return np.add(pairs * 16, pairs // 256, out=packed, casting="unsafe")  # unsafe: keep the low byte
    padded_w = -(-w // per_byte) * per_byte
    if padded_w != w:
        values = np.pad(values, ((0, 0), (0, padded_w - w)))
    groups = values.reshape(h, padded_w // per_byte, per_byte)
    packed = groups[:, :, 0] * (1 << (8 - bits))  # uint8: wraps modulo 256
    for i in range(1, per_byte):
        packed += groups[:, :, i] * (1 << (8 - bits * (i + 1)))
    return packed


def encode_palette_png(labels: LabelMap, palette_rgb: np.ndarray) -> bytes:
    """A palette PNG of `labels` (pixel value = class id) with `palette_rgb` (n×3 uint8) as its PLTE."""
    n_colours = len(palette_rgb)
    if not 1 <= n_colours <= 256:
        raise ValueError(f"a PNG palette holds 1..256 colours, got {n_colours}")
    height, width = labels.shape
    bits = bit_depth(n_colours)
    header = struct.pack(">IIBBBBB", width, height, bits, _COLOUR_TYPE_PALETTE, 0, 0, 0)
    plte = _chunk(b"PLTE", np.ascontiguousarray(palette_rgb, dtype=np.uint8).tobytes())
    if labels.identity:
        wide, rows = labels.wide_rows()
        return _png(header, _up_filtered(pack_rows(wide, bits), rows), plte)
    return _png(header, _up_filtered_map(labels, bits), plte)


def _up_filtered_map(labels: LabelMap, bits: int) -> np.ndarray:
    """`_up_filtered(pack_rows(wide rows), rows)` of a map at another size than its model's, byte for byte, with
    less work (1024x768 answers of a 320 model, 4-bit: ~165 -> ~50 µs):

    - under the Up filter the first output row of each used model row holds its packed difference to the row
      above, the others are zeros; widening and packing (`pack_rows` adds modulo 256) commute with differences
      modulo 256, so the differences are taken on the model's rows, before they are widened;
    - the columns are widened as rows of the transposed map: a gather of whole rows (memcpy) instead of
      OpenCV's resize pixel by pixel, and the neighbouring output columns that one PNG byte packs are rows too.
    """
    rows = labels.axes[0]
    small = labels.small[rows.used] if rows.dropped else labels.small
    delta = np.empty_like(small)
    delta[0] = small[0]  # the row above the first is zeros
    np.subtract(small[1:], small[:-1], out=delta[1:])  # uint8: modulo 256, as PNG's filters are
    columns = cv2.transpose(delta)
    per_byte = 8 // bits
    index = labels.cols
    if len(index) % per_byte:  # the last byte's missing pixels are zeros, as `pack_rows` pads them
        columns = np.vstack((columns, np.zeros((1, columns.shape[1]), np.uint8)))
        index = np.concatenate((index, np.full(per_byte - len(index) % per_byte, len(columns) - 1, np.intp)))
    packed = np.take(columns, index[0::per_byte], axis=0)
    if per_byte > 1:  # products, not shifts: numpy's integer shifts are not vectorised (~15x slower)
        np.multiply(packed, 1 << (8 - bits), out=packed)  # uint8: wraps modulo 256
        for i in range(1, per_byte):
            part = np.take(columns, index[i::per_byte], axis=0)
            packed += np.multiply(part, 1 << (8 - bits * (i + 1)), out=part)
    body = np.zeros((len(labels.rows), packed.shape[0] + 1), dtype=np.uint8)
    body[:, 0] = _FILTER_UP
    body[rows.start, 1:] = cv2.transpose(packed)
    return body


def encode_rgb_png(wide_rgb: np.ndarray, rows: np.ndarray, level: int = _LEVEL) -> bytes:
    """An 8-bit RGB PNG whose output row y is `wide_rgb[rows[y]]` (n×width×3 uint8: each source row already at
    the final width, as `LabelMap.wide_rows` gives them, coloured)."""
    if wide_rgb.ndim != 3 or wide_rgb.shape[2] != 3 or wide_rgb.dtype != np.uint8:
        raise ValueError(f"rows must be uint8 n×width×3, got {wide_rgb.dtype} {wide_rgb.shape}")
    header = struct.pack(">IIBBBBB", wide_rgb.shape[1], len(rows), 8, _COLOUR_TYPE_RGB, 0, 0, 0)
    return _png(header, _up_filtered(wide_rgb.reshape(len(wide_rgb), -1), rows), level=level)


def _up_filtered(source_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """PNG's filtered image data for output rows `source_rows[rows[y]]` under the Up filter: each row minus the
    one above (uint8 wrap-around, as PNG defines it), so a repeated source row is a row of zeros. The first
    row's "above" is zeros, so it is stored as is."""
    height = len(rows)
    body = np.empty((height, source_rows.shape[1] + 1), dtype=np.uint8)
    body[:, 0] = _FILTER_UP
    body[0, 1:] = source_rows[rows[0]]
    if height > 1:
        changed = np.flatnonzero(rows[1:] != rows[:-1]) + 1
        body[1:, 1:] = 0
        if rows[0] == 0 and np.array_equal(rows[changed], np.arange(1, len(source_rows))):
            # Every source row once, in order (an enlarged map): differences of neighbours, without gathers.
            body[changed, 1:] = source_rows[1:] - source_rows[:-1]
        else:
            body[changed, 1:] = source_rows[rows[changed]] - source_rows[rows[changed - 1]]
    return body


def _png(header: bytes, body: np.ndarray, *chunks: bytes, level: int = _LEVEL) -> bytes:
    """The PNG file: signature, IHDR `header`, any `chunks` (PLTE), the deflated `body`, IEND."""
    compressor = zlib_ng.compressobj(level, zlib_ng.DEFLATED, 15, 9, zlib_ng.Z_RLE)
    idat = compressor.compress(body) + compressor.flush()
    return b"".join((_SIGNATURE, _chunk(b"IHDR", header), *chunks, _chunk(b"IDAT", idat), _chunk(b"IEND", b"")))
