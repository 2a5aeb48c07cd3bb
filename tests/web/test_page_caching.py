"""The page's files after a deploy (real Chromium, real uvicorn): a second visit revalidates every file, so a
release that changes two modules at once is loaded whole, never a new module with an old one from the cache."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.routes import web
from tests.service.svc_helpers import make_rule_model, running_server
from tests.web.page_helpers import page_problems

# Deployed files carry the time they were built (a wheel, an image layer), long before they are served: a browser
# would take such files as fresh for days by heuristic (a tenth of their age) without a Cache-Control.
BUILT = 1_600_000_000  # September 2020
REBUILT = BUILT + 86_400


@pytest.fixture
def deployed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A live server (rule model, no key) serving a copy of the page's files, built long ago; its URL and the copy,
    which the test changes as a deploy would."""
    static = tmp_path / "static"
    shutil.copytree(web.STATIC_DIR, static)
    for path in static.iterdir():
        os.utime(path, (BUILT, BUILT))
    monkeypatch.setattr(web, "STATIC_DIR", static)
    with running_server(make_rule_model(tmp_path / "rule.onnx")) as url:
        yield url, static


def _release(static: Path) -> None:
    """A release that touches two modules: api.js gains an export that app.js imports and shows."""
    api, app = static / "api.js", static / "app.js"
    api.write_text(api.read_text() + "\nexport const RELEASE = 2;\n")
    head = 'import { $, state } from "./page_state.js";'
    assert head in app.read_text()
    app.write_text(app.read_text().replace(head, head + '\nimport { RELEASE } from "./api.js";\n'
                                           "document.documentElement.dataset.release = String(RELEASE);", 1))
    for path in (api, app):
        os.utime(path, (REBUILT, REBUILT))


def test_a_second_visit_after_a_deploy_loads_the_new_release_whole(browser_context: object,
                                                                    deployed: tuple[str, Path]) -> None:
    """Before: /static/* had no Cache-Control, Chromium served the old modules from its cache without asking
    (`requestServedFromCache`), and a page mixing releases failed ("does not provide an export named")."""
    url, static = deployed
    page = browser_context.new_page()  # type: ignore[attr-defined]
    cdp = browser_context.new_cdp_session(page)  # type: ignore[attr-defined]
    cdp.send("Network.enable")
    urls: dict[str, str] = {}
    from_cache: list[str] = []
    cdp.on("Network.requestWillBeSent", lambda e: urls.__setitem__(e["requestId"], e["request"]["url"]))
    cdp.on("Network.requestServedFromCache", lambda e: from_cache.append(urls.get(e["requestId"], "?")))
    page.goto(url + "/")
    page.wait_for_selector("#downloads[data-state=ready] a")
    page.goto(url + "/classes")  # away, and back later as a user comes back to a bookmark
    _release(static)
    from_cache.clear()
    problems = page_problems(page)
    page.goto(url + "/")
    page.wait_for_selector("#downloads[data-state=ready] a")
    assert page.get_attribute("html", "data-release") == "2"
    assert page.text_content("#model").startswith("model rule")
    assert [p for p in problems if p.startswith("page error")] == []  # (a 404: /favicon.ico of /classes)
    assert [u for u in from_cache if "/static/" in u] == []


def test_every_file_of_the_page_is_revalidated(deployed: tuple[str, Path]) -> None:
    """200 and 304 alike say `no-cache`: a browser may keep a file but must ask (by its ETag) before using it.
    The page itself (`/`) says so too."""
    url, static = deployed
    with httpx.Client(base_url=url) as client:
        assert client.get("/").headers["cache-control"] == "no-cache"
        for path in sorted(static.iterdir()):
            route = f"/static/{path.name}"
            first = client.get(route)
            assert first.status_code == 200 and first.headers["cache-control"] == "no-cache", route
            again = client.get(route, headers={"If-None-Match": first.headers["etag"]})
            assert again.status_code == 304 and again.headers["cache-control"] == "no-cache", route
