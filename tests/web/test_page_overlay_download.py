"""The page's overlay download is drawn at the opacity its slider shows, as the canvas is (real Chromium, a real
uvicorn on the rule model, whose foreground and background are known)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from service.client import SegmentClient
from tests.web.page_helpers import KEY, canvas_pixel, download_output, page_problems, set_alpha


def _download_overlay(page: object) -> tuple[str, np.ndarray]:
    """Download the overlay as the page does; the URL it fetched and the saved pixels."""
    with page.expect_request(lambda r: "/overlay.png" in r.url) as request:  # type: ignore[attr-defined]
        name, data = download_output(page, "overlay")
    assert name == "picture-overlay.png"
    return request.value.url, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_the_overlay_download_follows_the_opacity_slider(browser_page: object, rule_url: str,
                                                         picture: Path) -> None:
    page = browser_page
    problems = page_problems(page)
    with SegmentClient(rule_url, api_key=KEY) as client:
        labels = client.labels(picture)
        palette = {c["id"]: c["color"] for c in client.classes()["classes"]}
    original = np.asarray(Image.open(picture).convert("RGB"))
    foreground = labels != 0
    assert foreground.any() and (~foreground).any()
    colours = np.zeros_like(original)
    for class_id, colour in palette.items():
        colours[labels == class_id] = colour

    page.goto(rule_url + "/")
    page.fill("#api-key", KEY)
    page.press("#api-key", "Tab")
    page.wait_for_selector("#downloads[data-state=ready] a")
    page.set_input_files("#file", str(picture))
    page.wait_for_selector("#stage[data-state=ready]")

    # Opacity 0: the downloaded overlay is the picture itself; 100: the class colours over the foreground.
    set_alpha(page, 0)
    url_clear, clear = _download_overlay(page)
    np.testing.assert_array_equal(clear, original)
    set_alpha(page, 100)
    url_opaque, opaque = _download_overlay(page)
    np.testing.assert_array_equal(opaque, np.where(foreground[..., None], colours, original))
    assert url_clear != url_opaque, "moving the slider changes what the download asks for"

    # In between, the file shows what the canvas shows (both blend the same colours at the slider's opacity).
    set_alpha(page, 60)
    _, partial = _download_overlay(page)
    y, x = (int(v) for v in np.argwhere(foreground)[len(np.argwhere(foreground)) // 2])
    assert np.abs(partial[y, x].astype(int) - np.asarray(canvas_pixel(page, x, y))).max() <= 2
    assert not np.array_equal(partial, clear) and not np.array_equal(partial, opaque)
    assert problems == []
