"""An upload the service refuses, after one it segmented: the page shows nothing of the earlier result (real
Chromium, real uvicorn on the rule model with a small pixel limit)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.client import SegmentClient
from tests.service.svc_helpers import make_rule_model, running_server, scene
from tests.web.page_helpers import canvas_pixel, page_problems, set_alpha

MAX_PIXELS = 30_000


@pytest.fixture(scope="module")
def small_limit_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live server on the rule model that refuses images over MAX_PIXELS pixels (413 `image_too_large`)."""
    model = make_rule_model(tmp_path_factory.mktemp("rule") / "rule.onnx")
    with running_server(model, max_pixels=MAX_PIXELS) as base:
        yield base


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two pictures the service segments (160×120, 120×160), one over its pixel limit (400×300) and a text file."""
    folder = tmp_path_factory.mktemp("uploads")
    paths = {name: folder / name for name in ("first.png", "second.png", "too_big.png", "notes.png")}
    Image.fromarray(scene(160, 120)).save(paths["first.png"])
    Image.fromarray(scene(120, 160)).save(paths["second.png"])
    Image.fromarray(scene(400, 300)).save(paths["too_big.png"])
    assert 400 * 300 > MAX_PIXELS >= 160 * 120
    paths["notes.png"].write_text("hello, not an image")  # named .png: the browser sends it as image/png
    return paths


def _legend(page: object) -> list[list[str]]:
    return page.eval_on_selector_all(  # type: ignore[attr-defined]
        "#legend li", "items => items.map(li => [li.dataset.className, li.querySelector('.pct').textContent])")


def _polygon_titles(page: object) -> list[str]:
    return page.eval_on_selector_all(  # type: ignore[attr-defined]
        "#polygon-layer path", "paths => paths.map(p => p.textContent)")


def _canvas_size(page: object) -> list[int]:
    return page.evaluate(  # type: ignore[attr-defined]
        "() => { const c = document.getElementById('canvas'); return [c.width, c.height]; }")


def _canvas_blank(page: object) -> bool:
    """Every pixel of the page's canvas is fully transparent (nothing drawn)."""
    return page.evaluate("""() => { const c = document.getElementById('canvas');
        return c.getContext('2d').getImageData(0, 0, c.width, c.height).data.every((v) => v === 0); }""")


def _segmented(page: object, url: str, path: Path) -> None:
    """Upload `path` (polygons on) and check that the page shows its own result: legend, timing, polygons, mask."""
    with SegmentClient(url) as client:
        stats = client.stats(path)
        labels = client.labels(path)
        features = client.polygons(path, tolerance=1.0)["features"]
        palette = {c["id"]: c["color"] for c in client.classes()["classes"]}
    page.set_input_files("#file", str(path))  # type: ignore[attr-defined]
    page.wait_for_function(  # type: ignore[attr-defined]
        "(count) => document.getElementById('stage').dataset.state === 'ready'"
        " && document.getElementById('stage').dataset.polygons === String(count)", arg=len(features))
    assert page.text_content("#status") == f"{len(features)} polygons."  # type: ignore[attr-defined]
    assert _legend(page) == [[c["class_name"], f"{c['fraction'] * 100:.1f}%"] for c in stats["classes"]]
    timing = page.text_content("#timing")  # type: ignore[attr-defined]
    assert timing.startswith(f"{stats['width']}×{stats['height']} · ")
    assert _polygon_titles(page) == [f"{f['properties']['class_name']}: {f['properties']['area']} px"
                                     for f in features]
    view_box = page.get_attribute("#polygon-layer", "viewBox")  # type: ignore[attr-defined]
    assert view_box == f"0 0 {stats['width']} {stats['height']}"
    fg = np.argwhere(labels != 0)
    y, x = (int(v) for v in fg[len(fg) // 2])
    set_alpha(page, 100)
    assert canvas_pixel(page, x, y) == palette[int(labels[y, x])], "the mask is not drawn"
    set_alpha(page, 50)
    assert page.eval_on_selector_all(  # type: ignore[attr-defined]
        "#downloads a", "links => links.every(a => !a.classList.contains('disabled'))")


def _nothing_of_a_result(page: object, class_names: list[str]) -> None:
    """The legend is the plain class list, and no timing line, polygons, result id or live download is left."""
    assert page.get_attribute("#legend", "data-kind") == "classes"  # type: ignore[attr-defined]
    assert _legend(page) == [[name, ""] for name in class_names], "a percentage of an earlier result is shown"
    assert page.text_content("#timing") == ""  # type: ignore[attr-defined]
    assert _polygon_titles(page) == [], "polygons of an earlier result are drawn"
    assert page.eval_on_selector("#polygon-layer", "svg => svg.hidden")  # type: ignore[attr-defined]
    assert page.get_attribute("#polygon-layer", "viewBox") is None  # type: ignore[attr-defined]
    assert page.get_attribute("#stage", "data-polygons") == ""  # type: ignore[attr-defined]
    assert page.get_attribute("#stage", "data-result-id") == ""  # type: ignore[attr-defined]
    assert page.eval_on_selector_all(  # type: ignore[attr-defined]
        "#downloads a", "links => links.every(a => a.classList.contains('disabled')"
        " && a.getAttribute('aria-disabled') === 'true')"), "a download of an earlier result is offered"


@pytest.mark.parametrize("refused, answer", [("too_big.png", "Error 413 image_too_large"),
                                             ("notes.png", "Error 415 unsupported_media_type")])
def test_a_refused_upload_leaves_nothing_of_the_previous_result(
        browser_page: object, small_limit_url: str, uploads: dict[str, Path], refused: str, answer: str) -> None:
    """first.png is segmented with polygons on; then an upload the service refuses: the error is shown, and the
    legend percentages, timing line, polygons and mask of first.png are gone (before: all of them stayed, drawn
    over the new picture or, for a non-image, over first.png's). A picture the service segments works again."""
    page = browser_page
    url = small_limit_url
    with SegmentClient(url) as client:
        class_names = [c["name"] for c in client.classes()["classes"]]
    problems = page_problems(page)
    page.goto(url + "/")
    page.wait_for_selector("#legend[data-kind=classes] li")
    page.wait_for_selector("#downloads[data-state=ready] a")
    page.check("#polygons")
    _segmented(page, url, uploads["first.png"])

    page.set_input_files("#file", str(uploads[refused]))
    page.wait_for_selector("#status.error")
    assert page.text_content("#status").startswith(answer)
    _nothing_of_a_result(page, class_names)
    set_alpha(page, 100)  # the mask, if any were left, would cover the picture fully
    if refused == "too_big.png":  # the browser decodes it: its own pixels are shown, bare
        assert page.get_attribute("#stage", "data-state") == "error"
        pixels = np.asarray(Image.open(uploads[refused]).convert("RGB"))
        assert _canvas_size(page) == [400, 300]
        for x, y in ((30, 20), (100, 100), (150, 60), (300, 250)):
            assert canvas_pixel(page, x, y) == pixels[y, x].tolist(), (x, y)
    else:  # nothing to show: no picture, no mask
        assert page.get_attribute("#stage", "data-state") == "empty"
        assert _canvas_blank(page), "an earlier picture or mask is still drawn"
        assert page.eval_on_selector("#canvas", "c => getComputedStyle(c).visibility") == "hidden"
    set_alpha(page, 50)

    _segmented(page, url, uploads["second.png"])
    page.set_input_files("#file", str(uploads[refused]))
    page.wait_for_selector("#status.error")
    _nothing_of_a_result(page, class_names)
    _segmented(page, url, uploads["first.png"])
    assert [p for p in problems if "413" not in p and "415" not in p] == []


def test_a_new_upload_clears_the_previous_result_as_soon_as_it_starts(
        browser_page: object, small_limit_url: str, uploads: dict[str, Path]) -> None:
    """While second.png's stats are still on their way, nothing of first.png's result is shown: not its legend
    percentages, timing, polygons, mask or picture, and no download of it."""
    page = browser_page
    url = small_limit_url
    with SegmentClient(url) as client:
        class_names = [c["name"] for c in client.classes()["classes"]]
    # Stats answers are held back (once received) while window.holdStats is set, until released.
    page.add_init_script("""
      const send = window.fetch.bind(window);
      let release;
      const gate = new Promise((resolve) => { release = resolve; });
      window.releaseStats = () => release();
      window.fetch = async (input, init) => {
        const hold = window.holdStats && String(input).includes('output=stats');
        const response = await send(input, init);
        if (hold) { window.statsHeld = true; await gate; }
        return response;
      };""")
    problems = page_problems(page)
    page.goto(url + "/")
    page.wait_for_selector("#legend[data-kind=classes] li")
    page.wait_for_selector("#downloads[data-state=ready] a")
    page.check("#polygons")
    _segmented(page, url, uploads["first.png"])

    page.evaluate("() => { window.holdStats = true; }")
    page.set_input_files("#file", str(uploads["second.png"]))
    page.wait_for_function("() => window.statsHeld === true")
    assert page.get_attribute("#stage", "data-state") == "busy"
    _nothing_of_a_result(page, class_names)
    set_alpha(page, 100)  # second.png's own pixels, bare: no mask of first.png over them
    pixels = np.asarray(Image.open(uploads["second.png"]).convert("RGB"))
    assert _canvas_size(page) == [120, 160]
    for x, y in ((20, 20), (30, 50), (60, 120), (100, 150)):
        assert canvas_pixel(page, x, y) == pixels[y, x].tolist(), (x, y)
    set_alpha(page, 50)

    page.evaluate("() => { window.holdStats = false; window.releaseStats(); }")
    page.wait_for_selector("#stage[data-state=ready]")
    _segmented(page, url, uploads["second.png"])
    assert problems == []
