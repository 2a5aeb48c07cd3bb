"""A file dropped anywhere on the page, not only on the small drop zone, is uploaded; the browser never opens it
itself (which navigated away from the page). Real Chromium drags (CDP `Input.dispatchDragEvent`, as a mouse drag
from the desktop), a real uvicorn on the rule model."""

from __future__ import annotations

from pathlib import Path

from tests.web.page_helpers import KEY, page_problems


def _drag_file_onto(page: object, selector: str, path: Path) -> None:
    """Drag `path` from outside the browser and drop it on the middle of `selector`."""
    box = page.locator(selector).bounding_box()  # type: ignore[attr-defined]
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    cdp = page.context.new_cdp_session(page)  # type: ignore[attr-defined]
    data = {"items": [], "files": [str(path)], "dragOperationsMask": 1 | 2 | 16}  # copy | link | move
    for kind in ("dragEnter", "dragOver", "drop"):
        cdp.send("Input.dispatchDragEvent", {"type": kind, "x": x, "y": y, "data": data})
    cdp.detach()


def test_a_file_dropped_on_the_picture_area_is_segmented(browser_page: object, rule_url: str,
                                                         picture: Path) -> None:
    page = browser_page
    problems = page_problems(page)
    page.goto(rule_url + "/")
    page.fill("#api-key", KEY)
    page.press("#api-key", "Tab")
    page.wait_for_selector("#downloads[data-state=ready] a")
    _drag_file_onto(page, ".viewer", picture)
    page.wait_for_function(
        "() => document.getElementById('stage')?.dataset.state === 'ready'"
        " && document.getElementById('status').textContent.startsWith('picture.png:')", timeout=20_000)
    assert page.url == rule_url + "/", "the page stays: the browser did not open the dropped file"
    assert page.eval_on_selector_all("#legend[data-kind=result] li", "ls => ls.length") > 1

    # Dropped on the header, far from the drop zone, it is an upload too, and the page still does not navigate.
    with page.expect_request(lambda r: "output=stats" in r.url):
        _drag_file_onto(page, "header h1", picture)
    page.wait_for_function("() => document.getElementById('stage')?.dataset.state === 'ready'")
    assert page.url == rule_url + "/"
    assert problems == []
