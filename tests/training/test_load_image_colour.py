"""`model_export.data.load_image` reads the colours the service is served: an embedded ICC profile (Display P3,
grey gamma 1.8, CMYK) is converted to sRGB as the service's decoder converts it, but EXIF orientation is not applied
(dataset labels are aligned with the stored pixels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_export.data import VOCSegmentation, load_image
from service.core.decode import decode_image
from tests.service_io.icc_helpers import (
    DISPLAY_P3,
    GREY_18,
    NAIVE_CMYK,
    SRGB_VARIANTS,
    assert_shows,
    encoded,
    from_srgb,
    patches,
)

MAX_PIXELS = 40_000_000


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_display_p3_files_load_as_the_service_decodes_them(tmp_path: Path, fmt: str) -> None:
    srgb = patches(96, 128)
    data = encoded(from_srgb(srgb, DISPLAY_P3), fmt, DISPLAY_P3)
    path = tmp_path / f"p3.{fmt.lower()}"
    path.write_bytes(data)
    loaded = load_image(path)
    assert_shows(loaded, srgb, 3)
    np.testing.assert_array_equal(loaded, decode_image(data, MAX_PIXELS))


@pytest.mark.parametrize(("profile", "mode"), [(GREY_18, "L"), (NAIVE_CMYK, "CMYK")], ids=["grey", "cmyk"])
def test_grey_and_cmyk_profiles_load_as_the_service_decodes_them(tmp_path: Path, profile: bytes,
                                                                 mode: str) -> None:
    pixels = np.random.default_rng(4).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    data = encoded(pixels, "JPEG", profile, mode=mode)
    path = tmp_path / "image.jpg"
    path.write_bytes(data)
    loaded = load_image(path)
    served = decode_image(data, MAX_PIXELS)
    np.testing.assert_array_equal(loaded, served)
    plain = np.asarray(Image.open(path).convert("RGB"))
    assert np.abs(loaded.astype(int) - plain).mean() > 10  # the profile made a difference


def test_exif_orientation_is_not_applied_but_the_colours_are(tmp_path: Path) -> None:
    srgb = patches(48, 64)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees: the service turns it, the loader must not
    path = tmp_path / "turned.jpg"
    path.write_bytes(encoded(from_srgb(srgb, DISPLAY_P3), "JPEG", DISPLAY_P3, exif=exif.tobytes()))
    loaded = load_image(path)
    assert loaded.shape == (48, 64, 3)
    assert_shows(loaded, srgb, 3)


def test_a_dataset_of_display_p3_jpegs_reads_srgb_and_srgb_files_are_untouched(tmp_path: Path) -> None:
    voc = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    srgb = patches(48, 64)
    (voc / "JPEGImages" / "p3.jpg").write_bytes(encoded(from_srgb(srgb, DISPLAY_P3), "JPEG", DISPLAY_P3))
    noise = np.random.default_rng(5).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    (voc / "JPEGImages" / "srgb.jpg").write_bytes(encoded(noise, "JPEG", SRGB_VARIANTS["iec61966-2.1"]))
    (voc / "JPEGImages" / "plain.jpg").write_bytes(encoded(noise, "JPEG", None))
    for name in ("p3", "srgb", "plain"):
        Image.fromarray(np.zeros((48, 64), np.uint8)).save(voc / "SegmentationClass" / f"{name}.png")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("p3\nsrgb\nplain\n")
    dataset = VOCSegmentation(tmp_path, "val")
    assert_shows(dataset.read(0)[0], srgb, 3)
    np.testing.assert_array_equal(dataset.read(1)[0], dataset.read(2)[0])
