"""The web page at `/`, driven in a real headless Chromium (Debian's /usr/bin/chromium through Playwright).

No skip: without Chromium this test fails, because the page would otherwise ship untested. `.ci/run` installs
the `chromium` apt package and the `playwright` Python package (never `playwright install`).

Screenshots go to a temporary folder; `SEGMENT_UPDATE_SCREENSHOTS=1` writes them to docs/ instead, so a test run
never rewrites tracked files unless asked.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from service.client import SegmentClient
from service.routes.web import STATIC_DIR
from tests.web.page_helpers import (
    DEMO_MODEL,
    KEY,
    canvas_pixel,
    download_names,
    download_output,
    drop_file,
    page_problems,
    set_alpha,
    suffix,
)


def test_web_page_end_to_end(browser_page: object, url: str, scene: Path, model: Path, shots: Path) -> None:
    page = browser_page
    problems = page_problems(page)

    with SegmentClient(url, api_key=KEY) as client:
        stats = client.stats(scene)
        labels = client.labels(scene)
        polygons = client.polygons(scene, tolerance=1.0)
        color_png = client.segment(scene, "color").array()
        palette = {c["id"]: c["color"] for c in client.classes()["classes"]}
        palette_names = [c["name"] for c in client.classes()["classes"]]
        table = client.outputs()
    original = np.asarray(Image.open(scene).convert("RGB"))

    # 1. The service requires a key: without one, the page says so instead of failing silently.
    outputs_reads: list[str] = []
    page.on("request", lambda r: outputs_reads.append(r.url) if r.url.endswith("/outputs") else None)
    page.goto(url + "/")
    assert page.title() == "Segmentation service"
    page.set_input_files("#file", str(scene))
    page.wait_for_selector("#status.error")
    assert "401 unauthorized" in page.text_content("#status")

    # 2. Entering the key retries the upload; the key is kept in localStorage.
    page.fill("#api-key", KEY)
    with page.expect_response(lambda r: "output=stats" in r.url and r.status == 200) as answer:
        page.press("#api-key", "Tab")
    page.wait_for_selector("#stage[data-state=ready]")
    outputs_reads.clear()
    with page.expect_request(lambda r: r.url.endswith("/outputs")) as outputs_request:
        page.reload()
    assert page.input_value("#api-key") == KEY
    # The page reads the output table once at start-up, with the key its other requests carry.
    assert outputs_request.value.all_headers().get("x-api-key") == KEY
    page.wait_for_selector("#downloads[data-state=ready] a")
    assert page.eval_on_selector_all("#downloads a", "links => links.map(a => a.textContent)") == \
        download_names(table)
    assert page.eval_on_selector_all("#downloads a", "links => links.map(a => a.className)") == \
        ["disabled"] * len(download_names(table)), "downloads are off until an image is segmented"

    # 2b. Before any upload: the legend lists every class, and a synthetic-shapes model says it is a demo.
    page.wait_for_selector("#legend[data-kind=classes] li")
    names = page.eval_on_selector_all("#legend li", "items => items.map(li => li.dataset.className)")
    assert names == [c for c in palette_names]
    note_visible = page.is_visible("#model-note")
    assert note_visible == (model == DEMO_MODEL), "the demo note shows exactly for the synthetic-shapes model"
    if note_visible:
        assert "synthetic shapes" in page.text_content("#model-note")
    # "fill polygons" is off and disabled while polygons are off.
    assert not page.is_checked("#fill-polygons") and page.is_disabled("#fill-polygons")

    # 3. Drag and drop the image; the legend lists exactly the classes present, with their percentages.
    with page.expect_response(lambda r: "output=stats" in r.url and r.status == 200) as answer:
        drop_file(page, scene)
    page.wait_for_selector("#stage[data-state=ready]")
    page_stats = answer.value.json()
    legend = page.eval_on_selector_all(
        "#legend li", "items => items.map(li => [li.dataset.className, li.querySelector('.pct').textContent])")
    expected = [[c["class_name"], f"{c['fraction'] * 100:.1f}%"] for c in stats["classes"]]
    assert legend == expected
    assert [c["class_name"] for c in page_stats["classes"]] == stats["classes_present"]
    assert [name for name, _ in legend] == stats["classes_present"]

    # 4. The overlay is blended on the canvas: opacity 0 shows the photo, 100 the class colour.
    fg = np.argwhere(labels != 0)
    assert len(fg), "the model predicts no foreground on the scene"
    y, x = (int(v) for v in fg[len(fg) // 2])
    set_alpha(page, 100)
    assert canvas_pixel(page, x, y) == palette[int(labels[y, x])]
    set_alpha(page, 0)
    assert canvas_pixel(page, x, y) == original[y, x].tolist()
    set_alpha(page, 50)
    half = np.asarray(canvas_pixel(page, x, y))
    mix = (original[y, x].astype(float) + np.asarray(palette[int(labels[y, x])])) / 2
    assert np.abs(half - mix).max() <= 2
    bg = np.argwhere(labels == 0)
    if len(bg):  # background stays the photo at any opacity, as in the server's overlay
        by, bx = (int(v) for v in bg[0])
        assert canvas_pixel(page, bx, by) == original[by, bx].tolist()

    # 5. Polygons: one SVG path per feature of the server's answer.
    page.check("#polygons")
    page.wait_for_selector("#stage[data-polygons]:not([data-polygons=''])")
    assert page.locator("#polygon-layer path").count() == len(polygons["features"])
    assert page.is_visible("#polygon-layer") == bool(polygons["features"])
    assert page.is_checked("#fill-polygons") and page.is_enabled("#fill-polygons")
    page.uncheck("#polygons")
    page.wait_for_selector("#stage[data-polygons='']")
    assert not page.is_checked("#fill-polygons") and page.is_disabled("#fill-polygons")
    page.check("#polygons")
    page.wait_for_selector("#stage[data-polygons]:not([data-polygons=''])")

    # 6. Download the colour PNG: the same pixels the API returns, named with the table's PNG suffix.
    name, data = download_output(page, "color")
    assert name == "scene-color" + suffix(table, "color", "image/png")
    saved = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(saved, color_png)

    # 7. The JSON downloads: the page's answers, named with the table's suffixes (.json, .geojson).
    name, data = download_output(page, "stats")
    assert name == "scene-stats" + suffix(table, "stats")
    assert json.loads(data) == page_stats
    name, data = download_output(page, "polygons")
    assert name == "scene-polygons" + suffix(table, "polygons")
    assert json.loads(data)["features"] == polygons["features"]
    assert outputs_reads == [url + "/outputs"], "the output table is read once per page load"

    set_alpha(page, 60)
    screenshot = shots / "web-screenshot.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    assert problems == []


def test_download_list_and_names_follow_the_output_table(browser_page: object, url: str, scene: Path) -> None:
    """Serve the page a changed table (other suffixes, one kind fewer): its links and file names follow it, so
    none of them is written into the page by hand."""
    page = browser_page
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    served: list[dict] = []

    def changed_table(route: object) -> None:
        response = route.fetch()  # type: ignore[attr-defined]
        if response.status != 200:  # before the key is entered: the service's 401, as it is
            route.fulfill(response=response)  # type: ignore[attr-defined]
            return
        table = [k for k in response.json()["outputs"] if k["name"] != "overlay"]
        for kind in table:
            for encoding in kind["encodings"]:
                encoding["suffix"] = ".x-" + encoding["suffix"].lstrip(".")
        served[:] = table
        route.fulfill(json={"outputs": table})  # type: ignore[attr-defined]

    page.route(url + "/outputs", changed_table)  # type: ignore[attr-defined]
    page.goto(url + "/")
    page.fill("#api-key", KEY)
    page.press("#api-key", "Tab")
    page.wait_for_selector("#downloads[data-state=ready] a")
    links = page.eval_on_selector_all("#downloads a", "links => links.map(a => a.textContent)")
    assert links == download_names(served) and "labels.x-png" in links and "polygons.x-geojson" in links
    assert not any(link.startswith("overlay") for link in links)

    page.set_input_files("#file", str(scene))
    page.wait_for_selector("#stage[data-state=ready]")
    for output in ("labels", "stats", "polygons"):
        name, data = download_output(page, output)
        assert name == f"scene-{output}" + suffix(served, output, None if output != "labels" else "image/png")
        assert name.split(".")[-1].startswith("x-") and len(data) > 0
    assert problems == []


def test_docs_pages_work_offline(browser_context: object, url: str, tmp_path: Path) -> None:
    """/docs and /redoc render with every request outside the service blocked: no CDN is needed."""
    context = browser_context
    blocked: list[tuple[str, str]] = []

    def only_the_service(route: object) -> None:
        request_url = route.request.url  # type: ignore[attr-defined]
        if request_url.startswith(url + "/") or request_url.startswith("data:"):
            route.continue_()  # type: ignore[attr-defined]
        else:
            blocked.append((route.request.resource_type, request_url))  # type: ignore[attr-defined]
            route.abort("internetdisconnected")  # type: ignore[attr-defined]

    context.route("**/*", only_the_service)  # type: ignore[attr-defined]
    page = context.new_page()  # type: ignore[attr-defined]
    page.goto(url + "/docs")
    # Swagger UI has loaded its bundle, fetched /openapi.json and rendered the operations.
    page.wait_for_selector(".swagger-ui .info .title", timeout=15_000)
    assert "Segmentation service" in page.text_content(".swagger-ui .info .title")
    page.wait_for_selector(".opblock-summary-path[data-path='/segment']", timeout=15_000)
    page.screenshot(path=str(tmp_path / "docs-offline.png"))  # a check, not a picture for the docs
    assert (tmp_path / "docs-offline.png").stat().st_size > 10_000
    assert blocked == [], f"/docs asked for files outside the service: {blocked}"

    page.goto(url + "/redoc")
    page.wait_for_selector(".api-info h1", timeout=15_000)
    assert "Segmentation service" in page.text_content(".api-info h1")
    # ReDoc's "powered by" footer logo is the one outside file it asks for; it renders without it.
    assert all(kind == "image" for kind, _ in blocked), f"/redoc needs files outside the service: {blocked}"


def test_static_files_are_public(url: str) -> None:
    import httpx

    # The page's scripts are ES modules: a browser runs a module only when it is served as JavaScript.
    modules = [(f"/static/{p.name}", "javascript") for p in sorted(STATIC_DIR.glob("*.js"))]
    assert len(modules) >= 5, modules
    for path, kind in (("/", "text/html"), *modules, ("/static/style.css", "text/css"),
                       ("/docs", "text/html"), ("/static/docs/swagger-ui-bundle.js", "javascript"),
                       ("/static/docs/swagger-ui.css", "text/css")):
        response = httpx.get(url + path)  # no key: the page must load so it can ask for one
        assert response.status_code == 200, path
        assert kind in response.headers["content-type"]
    assert httpx.get(url + "/classes").status_code == 401


# --- Uploads that overtake each other, and uploads the browser cannot decode -----------------------------------
