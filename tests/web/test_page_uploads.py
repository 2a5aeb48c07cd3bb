"""The page with several uploads in a row, and with one the browser cannot decode: each result shows over its own
upload only."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_export.synthetic import SceneConfig, render_scene
from service.client import SegmentClient
from tests.web.page_helpers import (
    KEY,
    canvas_pixel,
    download_output,
    page_problems,
    set_alpha,
    upload_and_wait,
)


@pytest.fixture(scope="module")
def two_scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """first.png (300×200) and second.png (200×300): two different scenes of different shapes, as PNG."""
    config = SceneConfig(min_side=300, max_side=300, min_objects=3, max_objects=4)
    folder = tmp_path_factory.mktemp("pair")
    first, second = folder / "first.png", folder / "second.png"
    Image.fromarray(np.ascontiguousarray(render_scene(7, 1, config)[0][:200, :300])).save(first)
    Image.fromarray(np.ascontiguousarray(render_scene(7, 2, config)[0][:300, :200])).save(second)
    return first, second


def _open_with_key(page: object, url: str) -> list[str]:
    """Load the page, enter the key, wait for the class list and the download list; the page's errors."""
    problems = page_problems(page)
    page.goto(url + "/")  # type: ignore[attr-defined]
    page.fill("#api-key", KEY)  # type: ignore[attr-defined]
    page.press("#api-key", "Tab")  # type: ignore[attr-defined]
    page.wait_for_selector("#legend[data-kind=classes] li")  # type: ignore[attr-defined]
    page.wait_for_selector("#downloads[data-state=ready] a")  # type: ignore[attr-defined]
    return problems


def _canvas_size(page: object) -> list[int]:
    return page.evaluate(  # type: ignore[attr-defined]
        "() => { const c = document.getElementById('canvas'); return [c.width, c.height]; }")


def test_a_slow_decode_of_an_older_upload_never_shows_over_a_newer_one(
        browser_page: object, url: str, two_scenes: tuple[Path, Path]) -> None:
    """first.png's decode in the browser is held (a big photo decodes slowly) while second.png is chosen and
    segmented; when first.png's decode finally ends, the page keeps showing second.png, its mask and its result,
    and asks the service nothing more (before: first.png's pixels under second.png's mask, and a stray
    stats request that sent second.png)."""
    page = browser_page
    first, second = two_scenes
    page.add_init_script("""
      const decode = window.createImageBitmap.bind(window);
      let release;
      const held = new Promise((resolve) => { release = resolve; });
      window.releaseFirstDecode = () => release();
      window.createImageBitmap = async (source, ...rest) => {
        if (!source || source.name !== 'first.png') return decode(source, ...rest);
        window.firstDecodeStarted = true;
        await held;
        const bitmap = await decode(source, ...rest);
        window.firstDecoded = true;
        return bitmap;
      };""")
    problems = _open_with_key(page, url)
    stats_requests: list[str] = []
    page.on("request", lambda r: stats_requests.append(r.url) if "output=stats" in r.url else None)

    page.set_input_files("#file", str(first))
    page.wait_for_function("() => window.firstDecodeStarted === true")
    upload_and_wait(page, second)
    result_id = page.get_attribute("#stage", "data-result-id")
    assert len(stats_requests) == 1

    page.evaluate("() => window.releaseFirstDecode()")
    page.wait_for_function("() => window.firstDecoded === true")
    page.wait_for_timeout(500)  # room for anything the older upload would still do

    assert _canvas_size(page) == [200, 300], "the canvas shows first.png's image"
    assert page.get_attribute("#stage", "data-state") == "ready"
    assert page.get_attribute("#stage", "data-result-id") == result_id
    assert page.text_content("#status").startswith("second.png:")
    assert page.text_content("#timing").startswith("200×300")
    assert len(stats_requests) == 1, "the older upload asked for stats after a newer one was chosen"
    set_alpha(page, 0)  # the picture is second.png's own pixels
    pixels = np.asarray(Image.open(second).convert("RGB"))
    for x, y in ((10, 10), (150, 40), (100, 250), (190, 290)):
        assert canvas_pixel(page, x, y) == pixels[y, x].tolist(), (x, y)
    assert problems == []


def test_a_late_polygons_download_never_lands_on_a_newer_upload(
        browser_page: object, url: str, two_scenes: tuple[Path, Path]) -> None:
    """The polygons download of first.png is answered late, after second.png was chosen and segmented: it still
    saves first.png's polygons, and the polygon layer switched on afterwards shows second.png's (before, the
    late answer was kept as the polygons of second.png)."""
    page = browser_page
    first, second = two_scenes
    with SegmentClient(url, api_key=KEY) as client:
        expected = {path.name: client.polygons(path, tolerance=1.0)["features"] for path in two_scenes}
    titles = {name: [f"{f['properties']['class_name']}: {f['properties']['area']} px" for f in features]
              for name, features in expected.items()}
    assert titles["first.png"] != titles["second.png"], "the two scenes must have different polygons"
    # Polygons answers are held back (once received) while window.holdPolygons is set, until released.
    page.add_init_script("""
      const send = window.fetch.bind(window);
      let release;
      const gate = new Promise((resolve) => { release = resolve; });
      window.releasePolygons = () => release();
      window.fetch = async (input, init) => {
        const hold = window.holdPolygons && String(input).includes('output=polygons');
        const response = await send(input, init);
        if (hold) { window.polygonsHeld = true; await gate; }
        return response;
      };""")
    problems = _open_with_key(page, url)

    upload_and_wait(page, first)
    page.evaluate("() => { window.holdPolygons = true; }")
    page.click("#downloads a[data-output=polygons]")
    page.wait_for_function("() => window.polygonsHeld === true")
    page.evaluate("() => { window.holdPolygons = false; }")
    upload_and_wait(page, second)

    with page.expect_download() as download:
        page.evaluate("() => window.releasePolygons()")
    assert download.value.suggested_filename.startswith("first-polygons.")
    assert json.loads(Path(download.value.path()).read_bytes())["features"] == expected["first.png"]

    page.check("#polygons")
    page.wait_for_selector("#stage[data-polygons]:not([data-polygons=''])")
    shown = page.eval_on_selector_all("#polygon-layer path", "paths => paths.map(p => p.textContent)")
    assert shown == titles["second.png"]
    assert problems == []


def test_a_tiff_upload_is_segmented_and_shown(browser_page: object, url: str, scene: Path,
                                             tmp_path: Path) -> None:
    """The service accepts TIFF, which Chromium cannot decode: the page still segments it and, under the mask,
    shows the service's decode of it (the same pixels), with a note saying so."""
    page = browser_page
    tiff = tmp_path / "scene.tiff"
    Image.open(scene).convert("RGB").save(tiff, format="TIFF")
    with SegmentClient(url, api_key=KEY) as client:
        stats = client.stats(scene)
        labels = client.labels(scene)
        palette = {c["id"]: c["color"] for c in client.classes()["classes"]}
    original = np.asarray(Image.open(scene).convert("RGB"))
    problems = _open_with_key(page, url)
    assert page.evaluate("""async (b64) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        try { await createImageBitmap(new Blob([bytes], { type: 'image/tiff' })); return true; }
        catch (_) { return false; } }""", base64.b64encode(tiff.read_bytes()).decode()) is False, \
        "this browser decodes TIFF: the test no longer covers the fallback"

    upload_and_wait(page, tiff)
    assert "cannot show" in page.text_content("#status")
    legend = page.eval_on_selector_all(
        "#legend li", "items => items.map(li => [li.dataset.className, li.querySelector('.pct').textContent])")
    assert legend == [[c["class_name"], f"{c['fraction'] * 100:.1f}%"] for c in stats["classes"]]
    assert _canvas_size(page) == [original.shape[1], original.shape[0]]
    fg = np.argwhere(labels != 0)
    assert len(fg), "the model predicts no foreground on the scene"
    y, x = (int(v) for v in fg[len(fg) // 2])
    set_alpha(page, 0)
    assert canvas_pixel(page, x, y) == original[y, x].tolist()
    assert canvas_pixel(page, 5, 5) == original[5, 5].tolist()
    set_alpha(page, 100)
    assert canvas_pixel(page, x, y) == palette[int(labels[y, x])]
    name, data = download_output(page, "labels")
    assert name.startswith("scene-labels")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), labels)
    assert problems == []
