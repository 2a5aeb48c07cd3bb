"""decode_image / decode_image_for_model on images with embedded ICC profiles: a Display P3, Adobe RGB or grey
gamma 1.8 picture decodes to the sRGB colours a colour-managed viewer shows, on libjpeg-turbo's fast path (JPEG) and
Pillow's (PNG, WebP, TIFF, palette); an sRGB-tagged one stays bit-identical to the same
pixels without a profile; a broken or mismatched profile changes nothing and refuses nothing."""

from __future__ import annotations

import io
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageCms, TiffImagePlugin, TiffTags

from service.core import decode
from service.core.decode import decode_image, decode_image_for_model
from service.core.reduced_jpeg import decode_jpeg_fast
from tests.service_io.icc_helpers import (
    ADOBE_RGB,
    D65_XY,
    DISPLAY_P3,
    GREY_18,
    P3_PRIMARIES,
    SRGB_VARIANTS,
    assert_shows,
    centres,
    cmyk_profile,
    encoded,
    from_srgb,
    patches,
    rgb_profile,
    srgb_encode,
    srgb_parametric_curve,
)

MAX_PIXELS = 40_000_000


@pytest.mark.parametrize(("fmt", "kw"), [
    ("JPEG", {}),  # libjpeg-turbo's fast path
    ("JPEG", {"progressive": True}),
    ("PNG", {}),  # Pillow's path
    ("WEBP", {"lossless": True}),
    ("TIFF", {}),
], ids=["jpeg", "jpeg-progressive", "png", "webp", "tiff"])
def test_display_p3_decodes_to_the_srgb_colours_it_shows(fmt: str, kw: dict[str, object],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    fast_path: list[bool] = []

    def watched(*args: object) -> object:  # the real fast path, watched: did libjpeg-turbo decode it?
        result = decode_jpeg_fast(*args)
        fast_path.append(result is not None)
        return result

    monkeypatch.setattr(decode, "decode_jpeg_fast", watched)
    srgb = patches()
    stored = from_srgb(srgb, DISPLAY_P3)
    assert np.abs(centres(stored) - centres(srgb)).max() > 15  # read as sRGB, the numbers are far off
    out = decode_image(encoded(stored, fmt, DISPLAY_P3, **kw), MAX_PIXELS)
    assert_shows(out, srgb, 3)
    assert fast_path == ([True] if fmt == "JPEG" else [])


def test_adobe_rgb_and_a_profile_split_over_several_app2_segments() -> None:
    """A profile over 64 KB is split over APP2 segments; Pillow joins them, and the fast path converts."""
    big_p3 = rgb_profile("Display P3", P3_PRIMARIES, D65_XY, srgb_parametric_curve(), 4, padding=150_000)
    srgb = patches()
    for profile in (ADOBE_RGB, big_p3):
        data = encoded(from_srgb(srgb, profile), "JPEG", profile)
        assert data.count(b"ICC_PROFILE\0") == (3 if profile is big_p3 else 1)
        assert_shows(decode_image(data, MAX_PIXELS), srgb, 3)


def test_palette_png_converts_its_palette_colours() -> None:
    srgb = patches()
    stored = Image.fromarray(from_srgb(srgb, DISPLAY_P3)).quantize(16)  # 5 colours: the palette holds them exactly
    buf = io.BytesIO()
    stored.save(buf, "PNG", icc_profile=DISPLAY_P3)
    assert_shows(decode_image(buf.getvalue(), MAX_PIXELS), srgb, 3)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])  # a greyscale JPEG takes the fast path too
def test_grey_profile_with_gamma_1_8(fmt: str) -> None:
    grey = np.tile(np.repeat(np.arange(0, 256, 32, dtype=np.uint8), 16)[None, :], (32, 1))
    data = encoded(np.dstack([grey] * 3), fmt, GREY_18, mode="L")
    out = decode_image(data, MAX_PIXELS).astype(int)
    expected = srgb_encode((grey / 255.0) ** 1.8) * 255  # what the grey profile means, in sRGB numbers
    middle = slice(4, -4)
    for i in range(8):  # the middle of each 16 px band
        band = out[8:-8, i * 16 : (i + 1) * 16][:, middle]
        assert np.abs(band - expected[0, i * 16 + 8]).max() <= 2.5, i
    assert out[16, 4 * 16 + 8, 0] - 128 > 15  # mid-grey 128 in gamma 1.8 is lighter in sRGB


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_decode_for_the_model_converts_at_the_letterbox_content_size(fmt: str) -> None:
    """A large image with a profile to convert is resized to the letterbox content before the conversion (which
    then costs the same for any upload): a JPEG decoded at 1/8 through libjpeg-turbo, a PNG in full; its colours
    are converted. Without a profile to convert the JPEG stays at its DCT-reduced size (the letterbox resizes it)."""
    srgb = patches(1600, 2000)
    reduced, original = decode_image_for_model(encoded(from_srgb(srgb, DISPLAY_P3), fmt, DISPLAY_P3), MAX_PIXELS, 96)
    assert original == (1600, 2000) and reduced.shape == (77, 96, 3)
    assert_shows(reduced, patches(77, 96), 3)
    plain, _ = decode_image_for_model(encoded(srgb, fmt, SRGB_VARIANTS["iec61966-2.1"]), MAX_PIXELS, 96)
    assert plain.shape == ((200, 250, 3) if fmt == "JPEG" else (1600, 2000, 3))


@pytest.mark.parametrize("name", list(SRGB_VARIANTS))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_srgb_tagged_images_stay_bit_identical(fmt: str, name: str) -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    untagged = decode_image(encoded(pixels, fmt, None), MAX_PIXELS)
    tagged = decode_image(encoded(pixels, fmt, SRGB_VARIANTS[name]), MAX_PIXELS)
    np.testing.assert_array_equal(tagged, untagged)


@pytest.mark.parametrize(("profile", "mode"), [
    (b"\x00garbage" * 100, "RGB"),
    (DISPLAY_P3[:200], "RGB"),  # cut inside the tag table
    (GREY_18, "RGB"),  # a grey profile on RGB pixels
    (DISPLAY_P3, "L"),  # an RGB profile on grey pixels
], ids=["garbage", "truncated", "grey-on-rgb", "rgb-on-grey"])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_broken_or_mismatched_profiles_change_nothing(fmt: str, profile: bytes, mode: str) -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    plain = decode_image(encoded(pixels, fmt, None, mode=mode), MAX_PIXELS)
    np.testing.assert_array_equal(decode_image(encoded(pixels, fmt, profile, mode=mode), MAX_PIXELS), plain)


@pytest.mark.parametrize("values", [(1,), (1, 2, 3, 4)], ids=["number", "numbers"])
def test_a_tiff_whose_icc_tag_holds_numbers_decodes_as_without_one(values: tuple[int, ...]) -> None:
    """Pillow's info then holds an int (or a tuple), not bytes: ignored, not a crash (500)."""
    pixels = np.random.default_rng(6).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[34675] = values
    tags.tagtype[34675] = TiffTags.SHORT
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about the tag's count
        Image.fromarray(pixels).save(buf, "TIFF", tiffinfo=tags)
        with Image.open(io.BytesIO(buf.getvalue())) as img:
            assert not isinstance(img.info["icc_profile"], bytes)
        np.testing.assert_array_equal(decode_image(buf.getvalue(), MAX_PIXELS), pixels)


def test_threads_share_one_transform() -> None:
    """Many decodes at once of Display P3 JPEGs and PNGs (the service decodes on several threads), the first ones
    meeting the profile together: every one gives the single-threaded answer."""
    profile = rgb_profile("Display P3 (threads)", P3_PRIMARIES, D65_XY, srgb_parametric_curve(), 4)  # not cached
    srgb = patches(480, 640)
    files = [encoded(from_srgb(srgb, profile), fmt, profile) for fmt in ("JPEG", "PNG")]
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda i: decode_image(files[i % 2], MAX_PIXELS), range(48)))
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out, decode_image(files[i % 2], MAX_PIXELS))
        assert_shows(out, srgb, 3)


def test_a_cmyk_profile_is_built_once_and_converts_as_littlecms_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CMYK JPEG's profile goes through LittleCMS to sRGB with the transform built on its first sight only (it
    was built on every request: ~30 CPU-ms of a 1024x768 upload's 49), with the very numbers of a fresh
    `profileToProfile`."""
    profile = cmyk_profile("CMYK built once")
    cmyk = Image.fromarray(np.random.default_rng(4).integers(0, 256, (48, 64, 4), dtype=np.uint8), "CMYK")
    buf = io.BytesIO()
    cmyk.save(buf, format="JPEG", quality=95, icc_profile=profile)
    data = buf.getvalue()
    expected = np.asarray(ImageCms.profileToProfile(Image.open(io.BytesIO(data)),
                                                    ImageCms.ImageCmsProfile(io.BytesIO(profile)),
                                                    ImageCms.createProfile("sRGB"), outputMode="RGB"))
    built = []

    class Counted(ImageCms.ImageCmsTransform):
        def __init__(self, *args: object, **kw: object) -> None:
            built.append(args)
            super().__init__(*args, **kw)

    monkeypatch.setattr(ImageCms, "ImageCmsTransform", Counted)
    for _ in range(3):
        np.testing.assert_array_equal(decode_image(data, MAX_PIXELS), expected)
    assert len(built) == 1

