"""The page's own handling of what the user does (real Chromium, a real uvicorn on the rule model, whose regions
are known): polygons over their pixels, the same file chosen again, the keyboard."""

from __future__ import annotations

from pathlib import Path

from service.client import SegmentClient
from tests.web.page_helpers import KEY, page_problems


def _open(page: object, url: str, height: int = 760) -> list[str]:
    problems = page_problems(page)
    page.set_viewport_size({"width": 1280, "height": height})  # type: ignore[attr-defined]
    page.goto(url + "/")  # type: ignore[attr-defined]
    page.fill("#api-key", KEY)  # type: ignore[attr-defined]
    page.press("#api-key", "Tab")  # type: ignore[attr-defined]
    page.wait_for_selector("#downloads[data-state=ready] a")  # type: ignore[attr-defined]
    return problems


def test_polygons_lie_on_the_edges_of_their_pixels(browser_page: object, rule_url: str, picture: Path) -> None:
    """Each SVG path covers exactly its feature's bbox in image pixels (before: every path half a pixel right and
    down of its region, as if vertices were pixel centres)."""
    page = browser_page
    with SegmentClient(rule_url, api_key=KEY) as client:
        features = client.polygons(picture, tolerance=1.0)["features"]
    assert features
    problems = _open(page, rule_url)
    page.set_input_files("#file", str(picture))
    page.wait_for_selector("#stage[data-state=ready]")
    page.check("#polygons")
    page.wait_for_selector("#stage[data-polygons]:not([data-polygons=''])")
    boxes = page.eval_on_selector_all("#polygon-layer path", """paths => paths.map((p) => {
        const b = p.getBBox(); return [b.x, b.y, b.x + b.width, b.y + b.height]; })""")
    assert boxes == [f["properties"]["bbox"] for f in features]
    assert problems == []


def test_the_same_file_chosen_again_after_an_error_is_segmented(browser_page: object, rule_url: str,
                                                                picture: Path) -> None:
    """The first answer is an error (here the service's 504 `timeout`); choosing the same file again sends it
    again (before: the file input did not change, so nothing happened and the error stayed)."""
    page = browser_page
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    stats_requests: list[str] = []
    page.on("request", lambda r: stats_requests.append(r.url) if "output=stats" in r.url else None)
    failed = {"done": False}

    def time_out_once(route: object) -> None:
        if failed["done"]:
            route.continue_()  # type: ignore[attr-defined]
            return
        failed["done"] = True
        error = {"code": "timeout", "message": "inference timed out after 30s", "request_id": "x"}
        route.fulfill(status=504, json={"error": error})  # type: ignore[attr-defined]

    page.route("**/segment?output=stats*", time_out_once)
    _open(page, rule_url)
    page.set_input_files("#file", str(picture))
    page.wait_for_selector("#status.error")
    assert "504 timeout" in page.text_content("#status")
    page.set_input_files("#file", str(picture))
    page.wait_for_selector("#stage[data-state=ready]")
    assert page.text_content("#status").startswith("picture.png:")
    assert len(stats_requests) == 2
    assert problems == []


def test_space_on_the_drop_zone_opens_the_chooser_without_scrolling(browser_page: object, rule_url: str,
                                                                    picture: Path) -> None:
    page = browser_page
    choosers: list[object] = []
    # Listening before any key is pressed: every chooser is intercepted, the first one too.
    page.on("filechooser", lambda chooser: choosers.append(chooser))
    problems = _open(page, rule_url, height=300)  # short: the page can scroll
    results: list[str] = []
    for key in ("Enter", " "):
        page.focus("#drop")
        page.evaluate("() => window.scrollTo(0, 0)")
        page.keyboard.press(key)
        for _ in range(100):
            if len(choosers) > len(results):
                break
            page.wait_for_timeout(50)
        assert len(choosers) == len(results) + 1, f"{key!r} opened {len(choosers) - len(results)} file choosers"
        assert page.evaluate("() => window.scrollY") == 0, f"{key!r} scrolled the page"
        choosers[-1].set_files(str(picture))  # type: ignore[attr-defined]
        page.wait_for_function("(seen) => { const stage = document.getElementById('stage');"
                               " return stage.dataset.state === 'ready' && !seen.includes(stage.dataset.resultId); }",
                               arg=results)
        results.append(page.get_attribute("#stage", "data-result-id"))
    assert problems == []


def _tab_stops(page: object) -> list[str]:
    """The elements Tab reaches from the top of the page, in order (ids, or a link's text)."""
    page.evaluate("() => document.activeElement.blur()")  # type: ignore[attr-defined]
    stops: list[str] = []
    for _ in range(30):
        page.keyboard.press("Tab")  # type: ignore[attr-defined]
        stop = page.evaluate(  # type: ignore[attr-defined]
            "() => { const el = document.activeElement;"
            " return el === document.body ? null : el.id || el.textContent.trim(); }")
        if stop is None or stop in stops:  # past the last stop
            break
        stops.append(stop)
    return stops


def test_downloads_join_the_tab_order_once_there_is_something_to_download(browser_page: object, rule_url: str,
                                                                         picture: Path) -> None:
    """Before an upload the download links do nothing: Tab skips them and they are announced as disabled
    (before: three Tab stops on links that did nothing)."""
    page = browser_page
    problems = _open(page, rule_url)
    links = page.eval_on_selector_all("#downloads a", "links => links.map(a => a.textContent)")
    assert not set(links) & set(_tab_stops(page))
    assert page.eval_on_selector_all("#downloads a", "ls => ls.map(a => a.getAttribute('aria-disabled'))") == \
        ["true"] * len(links)
    page.set_input_files("#file", str(picture))
    page.wait_for_selector("#stage[data-state=ready]")
    stops = _tab_stops(page)
    assert [stop for stop in stops if stop in links] == links
    assert page.eval_on_selector_all("#downloads a", "ls => ls.map(a => a.getAttribute('aria-disabled'))") == \
        ["false"] * len(links)
    page.focus("#downloads a[data-output=stats]")
    with page.expect_download() as download:
        page.keyboard.press("Enter")
    assert download.value.suggested_filename == "picture-stats.json"
    assert problems == []
