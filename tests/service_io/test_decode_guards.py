"""Decoder guards and the libjpeg-turbo fast path: scan bombs, text-chunk floods, deep greyscale in bounded
memory, the decode memory budget, and the fast path's exactness against Pillow."""

from __future__ import annotations

import io
import struct
import threading
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image, ImageOps

from service.core import colour, jpeg
from service.core.decode import decode_image, decode_image_for_model
from service.core.decode_budget import DecodeBudget, estimate_bytes
from service.core.errors import DecodeError
from service.core.letterbox import letterbox
from service.errors import ApiError
from testkit.images import scan_bomb
from testkit.photos import photo
from tests.service_io.decode_helpers import ztxt_flood

MAX_PIXELS = 40_000_000


def jpeg_bytes(array: np.ndarray, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", **kw)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------- scan bombs

def test_scan_bomb_is_refused_before_decoding() -> None:
    data = scan_bomb(4000)
    assert len(data) < 100_000 and jpeg.count_scans(data, 10**6) == 4010
    start = time.perf_counter()
    with pytest.raises(DecodeError) as err:
        decode_image_for_model(data, MAX_PIXELS, 320)
    assert (ApiError.from_decode(err.value).status, err.value.code) == (413, "image_too_large")
    assert time.perf_counter() - start < 0.5  # Pillow takes ~9 s to decode it


def test_scan_limit_scales_with_pixels_and_normal_progressive_files_decode() -> None:
    assert jpeg.scan_limit(2048 * 2048) == jpeg.MAX_SCANS
    assert jpeg.scan_limit(40_000_000) == 25
    assert jpeg.scan_limit(10**9) == jpeg.MIN_SCANS
    progressive = jpeg_bytes(photo("astronaut.png", size=(640, 480)), quality=90, progressive=True)
    assert jpeg.count_scans(progressive) == 10
    assert decode_image(progressive, MAX_PIXELS).shape == (480, 640, 3)
    # at the limit for 2048x2048 (64 scans) it still decodes, one scan more is refused
    assert decode_image(scan_bomb(54), MAX_PIXELS).shape == (2048, 2048, 3)
    with pytest.raises(DecodeError):
        decode_image(scan_bomb(55), MAX_PIXELS)


def test_marker_bytes_in_metadata_are_not_scans() -> None:
    """FF DA inside an APP segment (an EXIF thumbnail, binary maker notes) must not count."""
    base = jpeg_bytes(photo("astronaut.png", size=(64, 48)), quality=90)
    app = b"\xff\xda" * 200
    segment = b"\xff\xe9" + struct.pack(">H", len(app) + 2) + app
    data = base[:2] + segment + base[2:]
    assert data.count(b"\xff\xda") == 201 and jpeg.count_scans(data) == 1
    assert decode_image(data, MAX_PIXELS).shape == (48, 64, 3)


# --------------------------------------------------------------------------------------- text-chunk flood

def test_ztxt_flood_is_image_too_large() -> None:
    data = ztxt_flood()
    assert len(data) < 100_000
    with pytest.raises(DecodeError) as err:
        decode_image(data, MAX_PIXELS)
    assert (ApiError.from_decode(err.value).status, err.value.code) == (413, "image_too_large")


# ----------------------------------------------------------------------------------------- deep greyscale

def reference_grey(values: np.ndarray) -> np.ndarray:
    """The documented mapping, on the whole array at once (what the decoder did before blocks)."""
    if values.dtype.kind == "f":
        v = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = v.min(), v.max()
        if lo >= 0 and hi <= 1:
            return np.rint(v * 255).astype(np.uint8)
    else:
        lo, hi = int(values.min()), int(values.max())
        if lo >= 0 and hi <= 65535:
            return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)
        v = values.astype(np.float64)
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    return np.rint((v - lo) * (255.0 / (hi - lo))).astype(np.uint8)


@pytest.mark.parametrize("kind", ["u16", "i32_in_range", "i32_wide", "f_unit", "f_wide", "f_nan", "flat"])
def test_deep_grey_in_blocks_equals_the_whole_array_mapping(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    shape = (123, 57)
    values = {
        "u16": lambda: rng.integers(0, 65536, shape).astype(np.uint16),
        "i32_in_range": lambda: rng.integers(0, 65536, shape).astype(np.int32),
        "i32_wide": lambda: rng.integers(-(2**31), 2**31 - 1, shape).astype(np.int32),
        "f_unit": lambda: rng.random(shape).astype(np.float32),
        "f_wide": lambda: (rng.random(shape) * 1e6 - 3e5).astype(np.float32),
        "f_nan": lambda: np.where(rng.random(shape) < 0.1, np.nan, rng.random(shape) * 7).astype(np.float32),
        "flat": lambda: np.full(shape, 70000, np.int32),
    }[kind]()
    img = Image.fromarray(values)  # uint16 → I;16, int32 → I, float32 → F
    assert img.mode == {"u": "I;16", "i": "I", "f": "F"}[values.dtype.kind]
    monkeypatch.setattr(colour, "BLOCK_BYTES", 8 * 57 * 10)  # 10 rows a block: 13 blocks
    np.testing.assert_array_equal(colour.deep_grey_to_uint8(img), reference_grey(values))


def test_deep_grey_conversion_holds_no_full_size_wide_copy() -> None:
    img = Image.fromarray((np.arange(3000 * 3000, dtype=np.int32) % 70000).reshape(3000, 3000))
    tracemalloc.start()
    try:
        out = colour.to_rgb_array(img)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (3000, 3000, 3)
    # the 27 MB RGB result, the 9 MB grey plane and blocks of a few MB; the old path held ~290 MB of float64
    assert peak < 27e6 + 9e6 + 6 * colour.BLOCK_BYTES, peak


# ------------------------------------------------------------------------------------------ memory budget

def test_budget_refuses_what_can_never_fit_and_queues_the_rest() -> None:
    budget = DecodeBudget(100)
    with pytest.raises(DecodeError) as err, budget.reserve(101):
        pass
    assert ApiError.from_decode(err.value).status == 413
    order: list[str] = []
    held = budget.reserve(50)

    def second() -> None:
        held.__enter__()  # stays held: the 503 case below needs it
        order.append("second")

    with budget.reserve(80):
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.2)
        order.append("first done")
    waiter.join(5)
    assert order == ["first done", "second"] and budget.peak <= 100
    # 50 still held by the thread above, 40 more here: 60 does not fit, and is answered 503 after its wait
    with budget.reserve(40), pytest.raises(DecodeError) as err, budget.reserve(60, wait_s=0.1):
        pass
    assert ApiError.from_decode(err.value).status == 503
    assert ApiError.from_decode(err.value).headers == {"Retry-After": "1"}


def test_estimates_follow_the_mode() -> None:
    assert estimate_bytes("I", 1000) == 8000
    assert estimate_bytes("RGB", 1000) == 11000
    assert estimate_bytes("RGBA", 1000) == 19000


# -------------------------------------------------------------------------------- libjpeg-turbo fast path

def pillow_reference(data: bytes) -> np.ndarray:
    """What the Pillow path gives: Pillow decode, EXIF transpose, RGB."""
    return np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_fast_path_equals_pillow_for_every_orientation(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = jpeg_bytes(photo("chelsea.png", size=(150, 100)), quality=90, exif=exif.tobytes())
    np.testing.assert_array_equal(decode_image(data, MAX_PIXELS), pillow_reference(data))


@pytest.mark.parametrize("kw", [{"subsampling": 0}, {"subsampling": 2}, {"progressive": True}, {"grey": True}])
def test_fast_path_equals_pillow_for_layouts(kw: dict) -> None:
    array = photo("coffee.png", size=(333, 222))
    if kw.pop("grey", False):
        array = np.asarray(Image.fromarray(array).convert("L"))
    data = jpeg_bytes(array, quality=88, **kw)
    np.testing.assert_array_equal(decode_image(data, MAX_PIXELS), pillow_reference(data))


@pytest.mark.parametrize(("size", "target"), [((1024, 768), 320), ((4032, 3024), 320), ((741, 500), 320),
                                             ((1920, 1080), 512), ((640, 480), 600), ((96, 64), 320),
                                             ((5, 3), 320), ((2000, 30), 64)])
def test_reduced_decode_is_the_pillow_draft_pixel_for_pixel(size: tuple[int, int], target: int) -> None:
    """The fast path decodes at the DCT scale Pillow's draft picks: the model input is unchanged."""
    data = jpeg_bytes(photo("astronaut.png", size=size), quality=90)
    new, hw = decode_image_for_model(data, MAX_PIXELS, target)
    old = Image.open(io.BytesIO(data))
    tl = letterbox(np.zeros((hw[0], hw[1], 3), np.uint8), target, (0, 0, 0))[1]
    old.draft("RGB", (tl.new_w, tl.new_h))
    np.testing.assert_array_equal(new, np.asarray(old.convert("RGB")))
