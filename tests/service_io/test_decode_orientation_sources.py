"""The decoder turns a picture by exactly the EXIF orientation a browser applies (`orientation_cases`, checked
against Chromium in tests/web/test_orientation_chromium.py): on every decode path, the reduced JPEG decode
included, with the original size turned only when the picture is."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.core.decode import decode_image, decode_image_for_model, open_upload
from tests.service_io.orientation_cases import SHOWN, Case, cases, expected, mean_difference, picture

MAX_PIXELS = 40_000_000
CASES = cases()


def assert_shows(decoded: np.ndarray, case: Case) -> None:
    """`decoded` is the picture as a browser shows `case`: exactly when lossless, else closest to that of all
    eight orientations and within JPEG's loss."""
    want = expected(case)
    assert decoded.shape == want.shape, case.name
    if case.lossless:
        np.testing.assert_array_equal(decoded, want, err_msg=case.name)
        return
    differences = {o: mean_difference(decoded, np.ascontiguousarray(view(picture()))) for o, view in SHOWN.items()}
    assert min(differences, key=differences.get) == case.shown, (case.name, differences)
    assert differences[case.shown] < 4, (case.name, differences)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_decode_shows_the_picture_as_a_browser_does(case: Case) -> None:
    assert_shows(decode_image(case.data, MAX_PIXELS), case)
    assert_shows(decode_image(open_upload(case.data, MAX_PIXELS), MAX_PIXELS), case)
    full, original = decode_image_for_model(case.data, MAX_PIXELS, 512)
    assert_shows(full, case)
    assert original == expected(case).shape[:2]


@pytest.mark.parametrize("case", [c for c in CASES if c.media_type == "image/jpeg"],
                         ids=[c.name for c in CASES if c.media_type == "image/jpeg"])
def test_a_reduced_jpeg_decode_turns_by_the_header_orientation(case: Case) -> None:
    """Decoded at 1/2 scale in the DCT domain for a 16 px model (libjpeg-turbo, or Pillow's draft for CMYK): the
    orientation read from the header turns it, and the original size with it."""
    reduced, original = decode_image_for_model(case.data, MAX_PIXELS, 16)
    want = expected(case)
    assert original == want.shape[:2], case.name
    assert reduced.shape[:2] == (-(-want.shape[0] // 2), -(-want.shape[1] // 2)), case.name
    halved = want[::2, ::2]  # the half-scale picture, near enough to tell every orientation apart
    differences = {o: mean_difference(reduced, np.ascontiguousarray(view(picture()))[::2, ::2])
                   for o, view in SHOWN.items()}
    assert min(differences, key=differences.get) == case.shown, (case.name, differences)
    assert mean_difference(reduced, halved) < 12, case.name


@pytest.mark.parametrize("compression", ["raw", "tiff_deflate"])
@pytest.mark.parametrize("value", sorted(SHOWN))
def test_a_tiff_turns_once_by_its_own_orientation_tag(value: int, compression: str) -> None:
    """No browser shows TIFF: Pillow turns it as it loads it, and the decoder does not turn it again."""
    exif = Image.Exif()
    exif[0x0112] = value
    buf = io.BytesIO()
    Image.fromarray(picture()).save(buf, "TIFF", exif=exif, compression=compression)
    want = np.ascontiguousarray(SHOWN[value](picture()))
    np.testing.assert_array_equal(decode_image(buf.getvalue(), MAX_PIXELS), want)
    assert decode_image_for_model(buf.getvalue(), MAX_PIXELS, 16)[1] == want.shape[:2]
