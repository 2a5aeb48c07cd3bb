"""`service.core.icc`'s verdicts on ICC profiles built byte by byte (`tests.service_io.icc_helpers`: minimal
matrix/TRC display profiles, as Display P3, Adobe RGB, ProPhoto and the sRGB variants are made): which are sRGB,
which convert, which are ignored, and the bounded cache."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import ImageCms

from service.core import icc
from tests.service_io.icc_helpers import (
    ADOBE_RGB,
    D65_XY,
    DISPLAY_P3,
    GREY_18,
    GREY_SRGB,
    NAIVE_CMYK,
    P3_PRIMARIES,
    PROPHOTO,
    SRGB_PRIMARIES,
    SRGB_VARIANTS,
    gamma_curve,
    rgb_profile,
    rgb_to_xyz,
    srgb_decode,
    srgb_encode,
    srgb_parametric_curve,
)

# ------------------------------------------------------------------------------------------------ the verdicts

@pytest.mark.parametrize("name", list(SRGB_VARIANTS))
def test_srgb_variants_are_left_alone(name: str) -> None:
    assert icc.conversion_for(SRGB_VARIANTS[name], "RGB") is None
    assert icc.conversion_for(GREY_SRGB, "L") is None


@pytest.mark.parametrize("profile", [DISPLAY_P3, ADOBE_RGB, PROPHOTO], ids=["p3", "adobe", "prophoto"])
def test_wide_gamut_profiles_convert_and_are_built_once(profile: bytes) -> None:
    conversion = icc.conversion_for(profile, "RGB")
    assert conversion is not None and conversion.space == "RGB"
    assert icc.conversion_for(profile, "P") is conversion  # palette colours are the profile's too: the same one


def test_display_p3_converts_as_the_colour_science_says() -> None:
    """Independent of LittleCMS: P3 numbers -> linear -> XYZ (D65, shared white) -> linear sRGB -> sRGB numbers."""
    rng = np.random.default_rng(1)
    p3 = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    linear = srgb_decode(p3 / 255.0) @ rgb_to_xyz(P3_PRIMARIES, D65_XY).T
    expected = srgb_encode(linear @ np.linalg.inv(rgb_to_xyz(SRGB_PRIMARIES, D65_XY)).T) * 255
    conversion = icc.conversion_for(DISPLAY_P3, "RGB")
    assert conversion is not None
    got = conversion.apply(p3.copy())
    assert np.abs(got - expected).max() < 1.5  # 8-bit LittleCMS vs float math: rounding only


def test_grey_profile_converts_every_level() -> None:
    conversion = icc.conversion_for(GREY_18, "L")
    assert conversion is not None and conversion.space == "L"
    levels = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    # Gamma 1.8 -> linear -> sRGB's curve: shadows and mid-tones come out lighter.
    expected = srgb_encode((levels / 255.0) ** 1.8) * 255
    got = conversion.apply(levels.copy())
    assert np.abs(got - expected).max() < 1.5
    assert got[0, 128, 0] - 128 > 10


@pytest.mark.parametrize(("profile", "mode"), [
    (DISPLAY_P3, "L"),  # an RGB profile on grey pixels
    (GREY_18, "RGB"),  # a grey profile on RGB pixels
    (DISPLAY_P3, "CMYK"),
    (ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes(), "RGB"),
    (ImageCms.ImageCmsProfile(ImageCms.createProfile("XYZ")).tobytes(), "RGB"),
    (b"\0" * 2000, "RGB"),
    (DISPLAY_P3[:300], "RGB"),  # cut short
    (b"", "RGB"),
], ids=["rgb-on-grey", "grey-on-rgb", "rgb-on-cmyk", "lab", "xyz", "zeros", "truncated", "empty"])
def test_profiles_that_do_not_fit_the_pixels_are_ignored(profile: bytes, mode: str) -> None:
    assert icc.conversion_for(profile, mode) is None


def test_a_cmyk_profile_on_rgb_pixels_is_ignored_and_on_cmyk_ones_converts() -> None:
    assert icc.conversion_for(NAIVE_CMYK, "RGB") is None
    conversion = icc.conversion_for(NAIVE_CMYK, "CMYK")
    assert conversion is not None and conversion.space == "CMYK"
    rgb = np.full((2, 2, 3), 77, np.uint8)
    assert icc.to_srgb(rgb, NAIVE_CMYK, "CMYK") is rgb  # a CMYK image's pixels were converted when made RGB


def test_a_profile_over_the_size_bound_is_ignored() -> None:
    def padded_p3(padding: int) -> bytes:
        return rgb_profile("Display P3", P3_PRIMARIES, D65_XY, srgb_parametric_curve(), 4, padding=padding)

    assert icc.conversion_for(padded_p3(icc.MAX_PROFILE_BYTES - 4096), "RGB") is not None
    assert icc.conversion_for(padded_p3(icc.MAX_PROFILE_BYTES), "RGB") is None


def test_the_cache_is_bounded_by_entries_not_by_what_clients_send() -> None:
    """Distinct profiles (a hostile client's stream of them) evict each other; none is kept beyond the bound."""
    for i in range(icc.CACHE_SIZE * 2):
        profile = rgb_profile(f"P3 #{i}", P3_PRIMARIES, D65_XY, gamma_curve(1.6 + i / 100), padding=4096)
        assert icc.conversion_for(profile, "RGB") is not None
        assert len(icc.VERDICTS) <= icc.CACHE_SIZE
    assert all(len(key) == 32 for key in icc.VERDICTS._items)  # digests, not the profiles' bytes
