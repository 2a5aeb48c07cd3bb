"""The page under its Content-Security-Policy, in Chromium: it works end to end (segment, polygons, the overlay
download) with no violation of the policy, and a page on another origin cannot frame it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from tests.web.page_helpers import KEY, download_output, page_problems, upload_and_wait
from tests.weights.http_server import serve

# Every violation the document reports, whether or not the browser also logs it.
RECORD_VIOLATIONS = """window.__violations = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__violations.push(`${e.effectiveDirective} ${e.blockedURI}`));"""


@contextlib.contextmanager
def framing_site(service: str, folder: Path) -> Iterator[str]:
    """A page on another origin (its own local server) that puts the service's page in an iframe; yields its URL."""
    (folder / "index.html").write_text(f'<!doctype html><title>other site</title><iframe id="frame" src="{service}/">'
                                       "</iframe>")
    with serve(folder) as base:
        yield base


def test_the_page_works_under_its_policy(browser_page: object, rule_url: str, picture: Path) -> None:
    page = browser_page
    problems = page_problems(page)
    page.add_init_script(RECORD_VIOLATIONS)  # type: ignore[attr-defined]
    response = page.goto(rule_url + "/")  # type: ignore[attr-defined]
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]  # the policy is on
    page.fill("#api-key", KEY)  # type: ignore[attr-defined]
    page.press("#api-key", "Tab")  # type: ignore[attr-defined]
    page.wait_for_selector("#downloads[data-state=ready] a")  # type: ignore[attr-defined]
    upload_and_wait(page, picture)
    page.check("#polygons")  # type: ignore[attr-defined]
    page.wait_for_selector("#stage[data-polygons]:not([data-polygons=''])")  # type: ignore[attr-defined]
    page.check("#fill-polygons")  # type: ignore[attr-defined]
    name, data = download_output(page, "overlay")  # fetched from /results with the key, saved from a blob: URL
    assert name == "picture-overlay.png" and data.startswith(b"\x89PNG")
    name, data = download_output(page, "polygons")
    assert name.startswith("picture-polygons") and data.lstrip().startswith(b"{")
    assert page.evaluate("window.__violations") == []  # type: ignore[attr-defined]
    assert problems == []


def test_another_site_cannot_frame_the_page(browser_page: object, rule_url: str, tmp_path: Path) -> None:
    page = browser_page
    console: list[str] = []
    page.on("console", lambda msg: console.append(msg.text))  # type: ignore[attr-defined]
    with framing_site(rule_url, tmp_path) as other:
        page.goto(other, wait_until="load")  # type: ignore[attr-defined]
        (frame,) = [f for f in page.frames if f != page.main_frame]  # type: ignore[attr-defined]
        page.wait_for_timeout(300)  # type: ignore[attr-defined]  # the refusal's console message
        assert frame.query_selector("#api-key") is None, "the service's page loaded inside another site's frame"
        assert not frame.url.startswith(rule_url)
    assert any("frame-ancestors" in text for text in console), console
