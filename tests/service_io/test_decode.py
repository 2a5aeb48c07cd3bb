"""decode_image on real encoded bytes: formats, EXIF orientation, mode conversions, limits, threads."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageFile

from service.core import colour
from service.core.decode import decode_image
from service.core.errors import DecodeError
from service.errors import ApiError
from testkit.photos import photo

MAX_PIXELS = 40_000_000


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return photo("astronaut.png", size=(96, 64))


def test_png_photo_is_lossless(astronaut: np.ndarray) -> None:
    out = decode_image(encode(Image.fromarray(astronaut), "PNG"), MAX_PIXELS)
    assert out.dtype == np.uint8 and out.shape == (64, 96, 3)
    np.testing.assert_array_equal(out, astronaut)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_other_formats_decode_close_to_source(astronaut: np.ndarray, fmt: str) -> None:
    out = decode_image(encode(Image.fromarray(astronaut), fmt), MAX_PIXELS)
    assert out.shape == astronaut.shape
    # GIF quantises to 256 colours and JPEG/WebP are lossy, so a tolerance; BMP/TIFF are exact.
    tolerance = {"BMP": 0, "TIFF": 0}.get(fmt, 12)
    assert np.abs(out.astype(int) - astronaut.astype(int)).mean() <= tolerance


# What a viewer shows for each EXIF orientation, as numpy operations on the stored pixels (independent of Pillow).
DISPLAYED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, k=-1),  # rotate 90° clockwise
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, k=1),
}


@pytest.mark.parametrize("orientation", sorted(DISPLAYED))
def test_exif_orientation_png_exact(astronaut: np.ndarray, orientation: int) -> None:
    data = encode(Image.fromarray(astronaut), "PNG", exif=exif_bytes(orientation))
    np.testing.assert_array_equal(decode_image(data, MAX_PIXELS), DISPLAYED[orientation](astronaut))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpeg_comes_back_upright(astronaut: np.ndarray, orientation: int) -> None:
    data = encode(Image.fromarray(astronaut), "JPEG", quality=95, exif=exif_bytes(orientation))
    out = decode_image(data, MAX_PIXELS).astype(int)
    # The right orientation is by far the closest of all eight candidates.
    errors = {
        o: np.abs(out - f(astronaut).astype(int)).mean() if f(astronaut).shape == out.shape else np.inf
        for o, f in DISPLAYED.items()
    }
    assert min(errors, key=errors.get) == orientation
    assert errors[orientation] < 4


def test_grayscale_replicates_to_three_equal_channels(astronaut: np.ndarray) -> None:
    gray = Image.fromarray(astronaut).convert("L")
    out = decode_image(encode(gray, "PNG"), MAX_PIXELS)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], np.asarray(gray))


def test_one_bit_becomes_black_and_white() -> None:
    bits = np.zeros((8, 8), dtype=bool)
    bits[2:5, 3:7] = True
    out = decode_image(encode(Image.fromarray(bits), "PNG"), MAX_PIXELS)
    np.testing.assert_array_equal(out[..., 0], np.where(bits, 255, 0))


def test_16bit_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257, 1000, 32896, 65535, 65279]], dtype=np.uint16)
    out = decode_image(encode(Image.fromarray(values), "PNG"), MAX_PIXELS)
    # round(v / 257): Pillow's own convert("L") would clip everything above 255 to white.
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 4, 128, 255, 254])
    assert (out[..., 0] == out[..., 2]).all()


def test_16bit_rgb_png_keeps_colour() -> None:
    rgb16 = np.zeros((4, 4, 3), dtype=np.uint16)
    rgb16[..., 0] = 65535
    rgb16[..., 2] = 32896
    # Pillow writes 16-bit RGB through mode "RGB" with 16-bit rawmode is not possible; use OpenCV's writer.
    import cv2

    ok, buf = cv2.imencode(".png", rgb16[..., ::-1])
    assert ok
    out = decode_image(buf.tobytes(), MAX_PIXELS)
    np.testing.assert_array_equal(out[0, 0], [255, 0, 128])


def test_float_tiff_in_unit_range() -> None:
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    out = decode_image(encode(Image.fromarray(values, mode="F"), "TIFF"), MAX_PIXELS)
    np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255])


def test_int32_tiff_outside_16bit_is_stretched() -> None:
    values = np.array([[-100_000, 0, 100_000]], dtype=np.int32)
    out = decode_image(encode(Image.fromarray(values, mode="I"), "TIFF"), MAX_PIXELS)
    np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255])


def test_rgba_composited_on_white() -> None:
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (0, 0, 0, 0)  # fully transparent black → white
    rgba[0, 1] = (200, 10, 30, 255)  # opaque → unchanged
    rgba[0, 2] = (0, 0, 255, 128)  # half blue over white
    out = decode_image(encode(Image.fromarray(rgba), "PNG"), MAX_PIXELS)
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 1], [200, 10, 30])
    assert np.abs(out[0, 2].astype(int) - [127, 127, 255]).max() <= 1


def test_la_composited_on_white() -> None:
    la = np.array([[[0, 0], [0, 255]]], dtype=np.uint8)
    out = decode_image(encode(Image.fromarray(la, mode="LA"), "PNG"), MAX_PIXELS)
    np.testing.assert_array_equal(out[0], [[255, 255, 255], [0, 0, 0]])


def test_palette_with_transparency_uses_white_for_transparent_index() -> None:
    idx = np.array([[0, 1, 2]], dtype=np.uint8)
    img = Image.fromarray(idx)
    img.putpalette([9, 9, 9, 255, 0, 0, 0, 255, 0])
    out = decode_image(encode(img, "PNG", transparency=0), MAX_PIXELS)
    np.testing.assert_array_equal(out[0], [[255, 255, 255], [255, 0, 0], [0, 255, 0]])


def test_palette_without_transparency() -> None:
    img = Image.fromarray(np.array([[0, 1]], dtype=np.uint8))
    img.putpalette([1, 2, 3, 250, 251, 252])
    out = decode_image(encode(img, "PNG"), MAX_PIXELS)
    np.testing.assert_array_equal(out[0], [[1, 2, 3], [250, 251, 252]])


# A PNG tRNS colour key makes every pixel of exactly that value fully transparent: composited over white, as a
# viewer shows it, in every mode Pillow reports the key for (L, RGB, 16-bit grey).
def _keyed_png(values: np.ndarray, key: object) -> bytes:
    data = encode(Image.fromarray(values), "PNG", transparency=key)
    assert Image.open(io.BytesIO(data)).info["transparency"] == key  # the tRNS chunk is really there
    return data


def test_grey_png_colour_key_composited_on_white() -> None:
    grey = np.array([[10, 11, 200]], dtype=np.uint8)
    out = decode_image(_keyed_png(grey, 10), MAX_PIXELS)
    np.testing.assert_array_equal(out[0], [[255, 255, 255], [11, 11, 11], [200, 200, 200]])


def test_rgb_png_colour_key_composited_on_white() -> None:
    rgb = np.array([[[10, 20, 30], [10, 20, 31], [0, 0, 0]], [[200, 10, 30], [10, 20, 30], [9, 20, 30]]],
                   dtype=np.uint8)
    out = decode_image(_keyed_png(rgb, (10, 20, 30)), MAX_PIXELS)
    expected = rgb.copy()
    expected[(rgb == (10, 20, 30)).all(axis=2)] = 255  # only exact matches of all three samples
    np.testing.assert_array_equal(out, expected)


def test_rgb_png_without_colour_key_is_unchanged() -> None:
    rgb = np.array([[[10, 20, 30], [0, 0, 0], [255, 255, 255]]], dtype=np.uint8)
    data = encode(Image.fromarray(rgb), "PNG")
    assert "transparency" not in Image.open(io.BytesIO(data)).info
    np.testing.assert_array_equal(decode_image(data, MAX_PIXELS), rgb)
    img = Image.open(io.BytesIO(data))
    img.load()
    assert colour.to_rgb(img) is img  # the common case stays a no-op: no RGBA planes, no copy


def test_16bit_grey_png_colour_key_composited_on_white(monkeypatch: pytest.MonkeyPatch) -> None:
    # The key is compared in 16 bits: 2571 also scales to 10 but is not transparent.
    values = np.array([[2570, 2571, 0, 65535], [65535, 2570, 2569, 2570]] * 3, dtype=np.uint16)
    monkeypatch.setattr(colour, "BLOCK_BYTES", 8 * values.shape[1])  # one row a block: the key in every block
    out = decode_image(_keyed_png(values, 2570), MAX_PIXELS)
    expected = np.where(values == 2570, 255, (values.astype(np.uint32) + 128) // 257)
    np.testing.assert_array_equal(out, np.repeat(expected[..., None], 3, axis=2))


def test_cmyk_jpeg_converts_to_rgb(astronaut: np.ndarray) -> None:
    cmyk = Image.fromarray(astronaut).convert("CMYK")
    out = decode_image(encode(cmyk, "JPEG", quality=95), MAX_PIXELS)
    assert out.shape == astronaut.shape
    assert np.abs(out.astype(int) - astronaut.astype(int)).mean() < 6


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (8, 6), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40)
    out = decode_image(data, MAX_PIXELS)
    assert out.shape == (6, 8, 3)
    assert (out == [255, 0, 0]).all()


def test_animated_webp_gives_first_frame() -> None:
    frames = [Image.new("RGB", (8, 6), c) for c in ((0, 0, 255), (255, 255, 0))]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    np.testing.assert_array_equal(decode_image(data, MAX_PIXELS), np.asarray(frames[0]))


def test_max_pixels_boundary() -> None:
    data = encode(Image.new("RGB", (40, 25)), "PNG")
    assert decode_image(data, max_pixels=1000).shape == (25, 40, 3)
    with pytest.raises(DecodeError) as err:
        decode_image(data, max_pixels=999)
    assert (ApiError.from_decode(err.value).status, err.value.code) == (413, "image_too_large")


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"", 400, "empty_body"),
        (b"hello", 415, "unsupported_media_type"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 30, 400, "corrupt_image"),
    ],
)
def test_error_codes(data: bytes, status: int, code: str) -> None:
    with pytest.raises(DecodeError) as err:
        decode_image(data, MAX_PIXELS)
    assert (ApiError.from_decode(err.value).status, err.value.code) == (status, code)
    assert err.value.message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncation_anywhere_is_detected(astronaut: np.ndarray, fmt: str) -> None:
    data = encode(Image.fromarray(astronaut), fmt)
    # From the full signature up to a cut that still removes real image data (PNG keeps 20 bytes of trailer).
    for cut in np.linspace(8, len(data) - 32, 15).astype(int):
        with pytest.raises(DecodeError) as err:
            decode_image(data[:cut], MAX_PIXELS)
        assert err.value.code == "corrupt_image", cut


def test_png_missing_only_its_trailer_is_accepted(astronaut: np.ndarray) -> None:
    # Every pixel arrived; only the IEND chunk is missing. Browsers show such files, and so do we.
    data = encode(Image.fromarray(astronaut), "PNG")
    assert data.endswith(b"IEND\xaeB`\x82")
    np.testing.assert_array_equal(decode_image(data[:-12], MAX_PIXELS), astronaut)


def test_refuses_to_run_with_truncated_loading_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        decode_image(encode(Image.new("RGB", (2, 2)), "PNG"), MAX_PIXELS)


def test_concurrent_decoding_matches_serial() -> None:
    names = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")
    blobs = [encode(Image.fromarray(photo(n, size=(160, 120))), fmt) for n in names for fmt in ("PNG", "JPEG")]
    blobs += [b"junk", blobs[0][:100]]  # failures interleaved with successes

    def run(data: bytes) -> object:
        try:
            return decode_image(data, MAX_PIXELS)
        except DecodeError as exc:
            return exc.code

    serial = [run(b) for b in blobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            parallel = list(pool.map(run, blobs * 2))
            for want, got in zip(serial * 2, parallel, strict=True):
                if isinstance(want, str):
                    assert got == want
                else:
                    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("orientation", [1, 3, 6])
def test_a_jpeg_turned_by_exif_reserves_its_turned_copy_too(orientation: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """libjpeg-turbo's RGB array, and for an orientation other than 1 the turned copy made beside it: the decode
    memory budget must hold both, or concurrent rotated photos overrun it twofold."""
    from service.core import decode as decode_module

    reserved: list[int] = []
    real = decode_module.DECODE_BUDGET.reserve

    def recording(nbytes: int, *args: object, **kwargs: object):
        reserved.append(nbytes)
        return real(nbytes, *args, **kwargs)

    monkeypatch.setattr(decode_module.DECODE_BUDGET, "reserve", recording)
    buffer = io.BytesIO()
    Image.fromarray(np.full((48, 64, 3), 120, np.uint8)).save(buffer, "JPEG", exif=exif_bytes(orientation))
    decoded = decode_image(buffer.getvalue(), 10_000)
    assert decoded.shape[:2] == ((64, 48) if orientation == 6 else (48, 64))
    assert reserved == [3 * 48 * 64 * (1 if orientation == 1 else 2)]
