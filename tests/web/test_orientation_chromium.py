"""The web page draws the picture Chromium decodes (`createImageBitmap(file, {imageOrientation: "from-image"})`)
under the mask the service answers: for every place a file can carry an orientation hint (`orientation_cases`),
the service's mask is the size of the picture Chromium shows, and the service's decode (its overlay at opacity 0)
is that picture. Real Chromium, a real uvicorn on the rule model."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from service.client import SegmentClient
from tests.service_io.orientation_cases import SHOWN, Case, cases, expected, mean_difference, picture
from tests.web.page_helpers import KEY, chromium

CASES = cases()

# Decodes each upload as the page does (and as an <img> sizes it); the pixels come back as base64 RGBA.
_DECODE = """async ([b64, type]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const blob = new Blob([bytes], { type });
  const bitmap = await createImageBitmap(blob, { imageOrientation: "from-image" });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0);
  const rgba = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
  let text = "";
  for (let i = 0; i < rgba.length; i += 0x8000) text += String.fromCharCode(...rgba.subarray(i, i + 0x8000));
  const img = new Image();
  img.src = URL.createObjectURL(blob);
  await img.decode();
  return [bitmap.width, bitmap.height, btoa(text), [img.naturalWidth, img.naturalHeight]];
}"""


@pytest.fixture(scope="module")
def chromium_shows() -> Iterator[dict[str, tuple[np.ndarray, tuple[int, int]]]]:
    """Each case's picture as Chromium shows it (H×W×3), and the size an <img> of it takes."""
    with chromium("the orientation browsers apply must be checked in a real browser") as browser:
        page = browser.new_page()
        page.set_content("<!doctype html><title>decode</title>")
        shown = {}
        for case in CASES:
            width, height, rgba, img_size = page.evaluate(
                _DECODE, [base64.b64encode(case.data).decode(), case.media_type])
            pixels = np.frombuffer(base64.b64decode(rgba), np.uint8).reshape(height, width, 4)[..., :3]
            shown[case.name] = (pixels, tuple(img_size))
        yield shown


@pytest.fixture(scope="module")
def client(rule_url: str) -> Iterator[SegmentClient]:
    with SegmentClient(rule_url, api_key=KEY) as c:
        yield c


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_chromium_shows_the_orientation_the_decode_tests_expect(
        case: Case, chromium_shows: dict[str, tuple[np.ndarray, tuple[int, int]]]) -> None:
    """What tests/service_io/test_decode_orientation_sources.py holds the decoder to is what Chromium does."""
    shown, img_size = chromium_shows[case.name]
    assert img_size == (shown.shape[1], shown.shape[0])  # an <img> turns it as createImageBitmap does
    differences = {o: mean_difference(shown, np.ascontiguousarray(view(picture()))) for o, view in SHOWN.items()}
    assert min(differences, key=differences.get) == case.shown, differences
    assert mean_difference(shown, expected(case)) < 4


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_service_decodes_an_upload_as_chromium_shows_it(
        case: Case, chromium_shows: dict[str, tuple[np.ndarray, tuple[int, int]]], client: SegmentClient) -> None:
    shown, _ = chromium_shows[case.name]
    stats = client.stats(case.data)
    assert (stats["width"], stats["height"]) == (shown.shape[1], shown.shape[0])  # the mask the page lays over it
    assert client.labels(case.data).shape == shown.shape[:2]
    # The page's own view of the service's decode: the overlay at opacity 0, as PNG, is the decoded picture.
    overlay = client.segment(case.data, "overlay", alpha=0, format="png").content
    decoded = np.asarray(Image.open(io.BytesIO(overlay)).convert("RGB"))
    if case.lossless:
        np.testing.assert_array_equal(decoded, shown)
    else:  # lossy: the two decoders may round an IDCT differently
        assert mean_difference(decoded, shown) < 2
