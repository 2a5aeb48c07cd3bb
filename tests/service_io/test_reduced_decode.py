"""`decode_image_for_model`: large JPEGs decode reduced in the DCT domain, the geometry follows the original."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.core.decode import decode_image, decode_image_for_model
from service.core.letterbox import letterbox, unletterbox
from testkit.photos import photo

MAX_PIXELS = 40_000_000
PAD = (124, 116, 104)


def jpeg(array: np.ndarray, orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    kwargs = {}
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    Image.fromarray(array).save(buf, "JPEG", quality=92, **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="module")
def big_photo() -> np.ndarray:
    return photo("astronaut.png", size=(1024, 768))


@pytest.mark.parametrize(("size", "expected"), [(512, (384, 512)), (256, (192, 256)), (128, (96, 128)),
                                                (100, (96, 128)), (320, (384, 512)), (600, (768, 1024))])
def test_jpeg_decodes_at_the_smallest_dct_scale_not_below_the_letterbox(big_photo, size, expected) -> None:
    image, orig_hw = decode_image_for_model(jpeg(big_photo), MAX_PIXELS, size)
    assert orig_hw == (768, 1024)
    assert image.shape[:2] == expected  # 1/2, 1/4, 1/8, never below the target; no reduction possible at 600


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotation_turns_the_original_size_too(big_photo, orientation: int) -> None:
    image, orig_hw = decode_image_for_model(jpeg(big_photo, orientation), MAX_PIXELS, 256)
    assert orig_hw == (1024, 768)
    assert image.shape[:2] == (256, 192)
    assert decode_image(jpeg(big_photo, orientation), MAX_PIXELS).shape[:2] == orig_hw


def test_reduced_letterbox_matches_the_full_decode_and_restores_the_original_size(big_photo) -> None:
    data = jpeg(big_photo)
    full = decode_image(data, MAX_PIXELS)
    reduced, orig_hw = decode_image_for_model(data, MAX_PIXELS, 512)
    tensor_full, info_full = letterbox(full, 512, PAD)
    tensor_reduced, info_reduced = letterbox(reduced, 512, PAD, orig_hw=orig_hw)
    assert info_reduced == info_full  # same geometry, so unletterbox goes back to 1024x768
    # DCT-domain downscaling is an area average, like INTER_AREA: the model sees nearly the same picture.
    diff = np.abs(tensor_full.astype(int) - tensor_reduced.astype(int))
    assert diff.mean() < 2.0, diff.mean()
    labels = (tensor_reduced[..., 0] > 128).astype(np.uint8)
    assert unletterbox(labels, info_reduced).shape == (768, 1024)


def test_other_formats_are_decoded_in_full(big_photo) -> None:
    buf = io.BytesIO()
    Image.fromarray(big_photo).save(buf, "PNG")
    image, orig_hw = decode_image_for_model(buf.getvalue(), MAX_PIXELS, 256)
    assert image.shape[:2] == orig_hw == (768, 1024)
    np.testing.assert_array_equal(image, big_photo)
