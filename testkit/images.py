"""Image bytes that both the tests and the benchmarks send or read: an upload encoded as a client would, the
labels of an answer, and hostile images (a JPEG scan bomb, a deep greyscale TIFF)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode(image: np.ndarray, fmt: str = "JPEG", quality: int = 90) -> bytes:
    """Encode an RGB array the way a client would upload it."""
    buf = io.BytesIO()
    kwargs = {"quality": quality} if fmt == "JPEG" else {}
    Image.fromarray(image).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def decode_labels(png: bytes) -> np.ndarray:
    """The class-id map from a `labels` PNG (palette indices)."""
    return np.asarray(Image.open(io.BytesIO(png)))


def scan_bomb(repeats: int, size: int = 2048) -> bytes:
    """A flat progressive JPEG whose last (tiny) scan is repeated: valid to libjpeg, slow to decode."""
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (120, 130, 140)).save(buf, "JPEG", quality=50, progressive=True)
    data = buf.getvalue()
    last = data.rindex(b"\xff\xda")
    return data[:-2] + data[last:-2] * repeats + data[-2:]


def deep_grey_tiff(size: int = 6300) -> bytes:
    """A `size`² 32-bit greyscale TIFF (mode I), small on the wire (~0.3 MB) but ~320 MB to decode at 6300²."""
    values = np.zeros((size, size), np.int32)
    values[::7, ::5] = 70000  # beyond 16 bits: the stretched path
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, "TIFF", compression="tiff_adobe_deflate")
    return buf.getvalue()
