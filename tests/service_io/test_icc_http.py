"""`POST /segment` on a live server with Display P3 uploads: the overlay shows the sRGB colours a browser shows
(not the duller numbers read as sRGB; more in `test_icc_overlay`), the model sees them too, and a broken profile
is no reason to refuse."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from tests.service.svc_helpers import LiveServer, rule_model_server
from tests.service_io.icc_helpers import DISPLAY_P3, assert_shows, encoded, from_srgb, patches, shown

SIZE = 96
# A dark red the rule model calls red (brightest channel >= 64); stored as Display P3 its red number is 62, which
# read as sRGB is background (< 64).
DARK_RED = (68, 5, 5)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with rule_model_server(tmp_path_factory.mktemp("rule"), SIZE) as live:
        yield live


def segment(server: LiveServer, data: bytes, fmt: str, **params: object) -> bytes:
    with server.client() as client:
        r = client.post("/segment", params=params, content=data, headers={"Content-Type": f"image/{fmt.lower()}"})
    assert r.status_code == 200, r.text
    return r.content


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_overlay_shows_the_colours_of_a_display_p3_upload(server: LiveServer, fmt: str) -> None:
    srgb = patches(300, 400)
    data = encoded(from_srgb(srgb, DISPLAY_P3), fmt, DISPLAY_P3)
    # Opacity 0 and PNG: the overlay is the decoded upload itself, losslessly, in the upload's profile, which it
    # carries: shown through it, as a colour-managed viewer does.
    overlay = shown(segment(server, data, fmt, output="overlay", alpha=0, format="png"))
    assert overlay.shape == srgb.shape
    assert_shows(overlay, srgb, 3)


@pytest.mark.parametrize(("fmt", "shape"), [("JPEG", (1200, 1600)), ("PNG", (240, 320))])  # the JPEG decodes at 1/8
def test_the_model_sees_the_colours_of_a_display_p3_upload(server: LiveServer, fmt: str,
                                                          shape: tuple[int, int]) -> None:
    srgb = np.empty((*shape, 3), np.uint8)
    srgb[:, : shape[1] // 2] = DARK_RED
    srgb[:, shape[1] // 2 :] = (30, 200, 40)
    stored = from_srgb(srgb, DISPLAY_P3)
    assert stored[0, 0].max() < 64 <= srgb[0, 0].max()
    labels = np.asarray(Image.open(io.BytesIO(segment(server, encoded(stored, fmt, DISPLAY_P3), fmt))))
    assert labels.shape == shape
    left, right = labels[:, : shape[1] // 2 - 8], labels[:, shape[1] // 2 + 8 :]
    assert (left == 1).mean() > 0.99, np.unique(left, return_counts=True)  # red, not background
    assert (right == 2).mean() > 0.99


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_garbage_profile_is_answered_as_without_one(server: LiveServer, fmt: str) -> None:
    pixels = patches(120, 160)
    plain = segment(server, encoded(pixels, fmt, None), fmt, output="overlay", alpha=0, format="png")
    tagged = segment(server, encoded(pixels, fmt, b"\x00garbage" * 100), fmt, output="overlay", alpha=0, format="png")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(tagged))), np.asarray(Image.open(io.BytesIO(plain))))
