"""The page asks the service for an upload's polygons once: the polygons toggle and the polygons download share
one request, and a double click on a download link downloads once (real Chromium, a real uvicorn on the rule
model; the polygons answer is held back in the browser so that the clicks land while it loads)."""

from __future__ import annotations

from pathlib import Path

from tests.web.page_helpers import KEY, page_problems


class HeldPolygons:
    """Holds every `POST /segment?output=polygons` of `page` until `release`, counting them."""

    def __init__(self, page: object) -> None:
        self.page = page
        self.held: list[object] = []
        self.sent = 0
        page.on("request", self._count)  # type: ignore[attr-defined]
        page.route("**/segment?output=polygons*", self._hold)  # type: ignore[attr-defined]

    def _count(self, request: object) -> None:
        if "output=polygons" in request.url:  # type: ignore[attr-defined]
            self.sent += 1

    def _hold(self, route: object) -> None:
        self.held.append(route)

    def settle(self, at_least: int = 1) -> None:
        """Wait for `at_least` requests, then a while longer, for any further one to show."""
        for _ in range(200):
            if self.sent >= at_least:
                break
            self.page.wait_for_timeout(25)  # type: ignore[attr-defined]
        self.page.wait_for_timeout(500)  # type: ignore[attr-defined]

    def release(self) -> None:
        while self.held:
            self.held.pop().continue_()  # type: ignore[attr-defined]


def _open_and_upload(page: object, url: str, picture: Path) -> list[str]:
    problems = page_problems(page)
    page.goto(url + "/")  # type: ignore[attr-defined]
    page.fill("#api-key", KEY)  # type: ignore[attr-defined]
    page.press("#api-key", "Tab")  # type: ignore[attr-defined]
    page.wait_for_selector("#downloads[data-state=ready] a")  # type: ignore[attr-defined]
    page.set_input_files("#file", str(picture))  # type: ignore[attr-defined]
    page.wait_for_selector("#stage[data-state=ready]")  # type: ignore[attr-defined]
    return problems


def test_toggling_polygons_while_they_load_asks_once(browser_page: object, rule_url: str, picture: Path) -> None:
    """On, off and on again while the first request is out, then a download of them: one request, and the layer
    shows its polygons."""
    page = browser_page
    problems = _open_and_upload(page, rule_url, picture)
    polygons = HeldPolygons(page)
    page.click("#polygons")
    page.click("#polygons")
    page.click("#polygons")
    with page.expect_download() as download:
        page.click("#downloads a[data-output=polygons]")
        polygons.settle()
        assert polygons.sent == 1
        polygons.release()
    assert download.value.suggested_filename == "picture-polygons.geojson"
    page.wait_for_selector("#stage[data-polygons]:not([data-polygons=''])")
    assert page.is_checked("#polygons")
    assert polygons.sent == 1
    assert problems == []


def test_a_double_click_on_a_download_downloads_once(browser_page: object, rule_url: str, picture: Path) -> None:
    page = browser_page
    problems = _open_and_upload(page, rule_url, picture)
    polygons = HeldPolygons(page)
    names: list[str] = []
    page.on("download", lambda d: names.append(d.suggested_filename))
    page.dblclick("#downloads a[data-output=polygons]")
    polygons.settle()
    polygons.release()
    for _ in range(200):
        if names:
            break
        page.wait_for_timeout(25)
    page.wait_for_timeout(500)  # a second download, if any, would come now
    assert names == ["picture-polygons.geojson"]
    assert polygons.sent == 1

    # Once that download is done, the link downloads again (from the polygons the page now holds).
    with page.expect_download():
        page.click("#downloads a[data-output=polygons]")
    assert polygons.sent == 1
    assert problems == []
