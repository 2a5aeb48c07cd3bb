"""The web page at `/`, driven in a real headless Chromium (Debian's /usr/bin/chromium through Playwright).

No skip: without Chromium this test fails, because the page would otherwise ship untested. `.ci/run` installs
the `chromium` apt package and the `playwright` Python package (never `playwright install`).

Screenshots go to a temporary folder; `SEGMENT_UPDATE_SCREENSHOTS=1` writes them to docs/ instead, so a test run
never rewrites tracked files unless asked.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_export.synthetic import SceneConfig, render_scene
from service.client import SegmentClient
from service.routes.web import STATIC_DIR
from testkit import REPO
from tests.service.svc_helpers import running_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
KEY = "web-test-key"
DEMO_MODEL = REPO / "service" / "models" / "default.onnx"


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: docs/ only when asked (SEGMENT_UPDATE_SCREENSHOTS=1), else a temporary folder."""
    if os.environ.get("SEGMENT_UPDATE_SCREENSHOTS") == "1":
        return REPO / "docs"
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def model(tiny_onnx_model: Path) -> Path:
    """The trained demo model when it is there (it finds real classes: a better legend and screenshot)."""
    return DEMO_MODEL if DEMO_MODEL.is_file() else tiny_onnx_model


@pytest.fixture(scope="module")
def url(model: Path) -> Iterator[str]:
    with running_server(model, api_keys=[KEY]) as base:
        yield base


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic scene with several objects, as PNG (lossless, so canvas pixels can be compared exactly)."""
    config = SceneConfig(min_side=240, max_side=320, min_objects=3, max_objects=4)
    image, _ = render_scene(7, 3, config)
    path = tmp_path_factory.mktemp("web") / "scene.png"
    Image.fromarray(image).save(path)
    return path


@pytest.fixture
def browser_context() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's `chromium` package (apt-get install -y chromium); "
                    "the web page must be tested in a real browser")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser.new_context(viewport={"width": 1280, "height": 760}, accept_downloads=True)
        finally:
            browser.close()


@pytest.fixture
def browser_page(browser_context: object) -> object:
    return browser_context.new_page()  # type: ignore[attr-defined]


def _canvas_pixel(page: object, x: int, y: int) -> list[int]:
    return page.evaluate(  # type: ignore[attr-defined]
        "([x, y]) => Array.from(document.getElementById('canvas').getContext('2d')"
        ".getImageData(x, y, 1, 1).data.slice(0, 3))", [x, y])


def _set_alpha(page: object, percent: int) -> None:
    page.evaluate(  # type: ignore[attr-defined]
        "(v) => { const el = document.getElementById('alpha'); el.value = v;"
        " el.dispatchEvent(new Event('input')); }", percent)


def _drop_file(page: object, path: Path) -> None:
    """A real drag-and-drop: a DataTransfer holding the file, dropped on the drop zone."""
    data = base64.b64encode(path.read_bytes()).decode()
    transfer = page.evaluate_handle(  # type: ignore[attr-defined]
        """([b64, name]) => { const dt = new DataTransfer();
             const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
             dt.items.add(new File([bytes], name, { type: 'image/png' })); return dt; }""", [data, path.name])
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})  # type: ignore[attr-defined]


def _download_names(table: list[dict]) -> list[str]:
    """The download links the page should build from an output table: JSON kinds in their default encoding,
    image kinds as the PNG that /results renders again."""
    names = []
    for kind in table:
        encodings = kind["encodings"] if kind["json"] else [e for e in kind["encodings"]
                                                             if e["media_type"] == "image/png"]
        if encodings:
            names.append(kind["name"] + encodings[0]["suffix"])
    return names


def _suffix(table: list[dict], name: str, media_type: str | None = None) -> str:
    (kind,) = [k for k in table if k["name"] == name]
    return next(e["suffix"] for e in kind["encodings"] if media_type in (None, e["media_type"]))


def _download(page: object, output: str) -> tuple[str, bytes]:
    """Click the download link of `output`; the suggested file name and the bytes saved."""
    with page.expect_download() as download:  # type: ignore[attr-defined]
        page.click(f"#downloads a[data-output={output}]")  # type: ignore[attr-defined]
    return download.value.suggested_filename, Path(download.value.path()).read_bytes()


def test_web_page_end_to_end(browser_page: object, url: str, scene: Path, model: Path, shots: Path) -> None:
    page = browser_page
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" and "401" not in msg.text
            else None)

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
        _download_names(table)
    assert page.eval_on_selector_all("#downloads a", "links => links.map(a => a.className)") == \
        ["disabled"] * len(_download_names(table)), "downloads are off until an image is segmented"

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
        _drop_file(page, scene)
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
    _set_alpha(page, 100)
    assert _canvas_pixel(page, x, y) == palette[int(labels[y, x])]
    _set_alpha(page, 0)
    assert _canvas_pixel(page, x, y) == original[y, x].tolist()
    _set_alpha(page, 50)
    half = np.asarray(_canvas_pixel(page, x, y))
    mix = (original[y, x].astype(float) + np.asarray(palette[int(labels[y, x])])) / 2
    assert np.abs(half - mix).max() <= 2
    bg = np.argwhere(labels == 0)
    if len(bg):  # background stays the photo at any opacity, as in the server's overlay
        by, bx = (int(v) for v in bg[0])
        assert _canvas_pixel(page, bx, by) == original[by, bx].tolist()

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
    name, data = _download(page, "color")
    assert name == "scene-color" + _suffix(table, "color", "image/png")
    saved = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(saved, color_png)

    # 7. The JSON downloads: the page's answers, named with the table's suffixes (.json, .geojson).
    name, data = _download(page, "stats")
    assert name == "scene-stats" + _suffix(table, "stats")
    assert json.loads(data) == page_stats
    name, data = _download(page, "polygons")
    assert name == "scene-polygons" + _suffix(table, "polygons")
    assert json.loads(data)["features"] == polygons["features"]
    assert outputs_reads == [url + "/outputs"], "the output table is read once per page load"

    _set_alpha(page, 60)
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
    assert links == _download_names(served) and "labels.x-png" in links and "polygons.x-geojson" in links
    assert not any(link.startswith("overlay") for link in links)

    page.set_input_files("#file", str(scene))
    page.wait_for_selector("#stage[data-state=ready]")
    for output in ("labels", "stats", "polygons"):
        name, data = _download(page, output)
        assert name == f"scene-{output}" + _suffix(served, output, None if output != "labels" else "image/png")
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
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))  # type: ignore[attr-defined]
    page.on("console", lambda msg: problems.append(msg.text)  # type: ignore[attr-defined]
            if msg.type == "error" and "401" not in msg.text else None)
    page.goto(url + "/")  # type: ignore[attr-defined]
    page.fill("#api-key", KEY)  # type: ignore[attr-defined]
    page.press("#api-key", "Tab")  # type: ignore[attr-defined]
    page.wait_for_selector("#legend[data-kind=classes] li")  # type: ignore[attr-defined]
    page.wait_for_selector("#downloads[data-state=ready] a")  # type: ignore[attr-defined]
    return problems


def _upload_and_wait(page: object, path: Path) -> None:
    """Choose `path` in the file input and wait until the page shows its result."""
    page.set_input_files("#file", str(path))  # type: ignore[attr-defined]
    page.wait_for_function(  # type: ignore[attr-defined]
        "(name) => document.getElementById('stage').dataset.state === 'ready'"
        " && document.getElementById('status').textContent.startsWith(name + ':')", arg=path.name, timeout=20_000)


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
    _upload_and_wait(page, second)
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
    _set_alpha(page, 0)  # the picture is second.png's own pixels
    pixels = np.asarray(Image.open(second).convert("RGB"))
    for x, y in ((10, 10), (150, 40), (100, 250), (190, 290)):
        assert _canvas_pixel(page, x, y) == pixels[y, x].tolist(), (x, y)
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

    _upload_and_wait(page, first)
    page.evaluate("() => { window.holdPolygons = true; }")
    page.click("#downloads a[data-output=polygons]")
    page.wait_for_function("() => window.polygonsHeld === true")
    page.evaluate("() => { window.holdPolygons = false; }")
    _upload_and_wait(page, second)

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

    _upload_and_wait(page, tiff)
    assert "cannot show" in page.text_content("#status")
    legend = page.eval_on_selector_all(
        "#legend li", "items => items.map(li => [li.dataset.className, li.querySelector('.pct').textContent])")
    assert legend == [[c["class_name"], f"{c['fraction'] * 100:.1f}%"] for c in stats["classes"]]
    assert _canvas_size(page) == [original.shape[1], original.shape[0]]
    fg = np.argwhere(labels != 0)
    assert len(fg), "the model predicts no foreground on the scene"
    y, x = (int(v) for v in fg[len(fg) // 2])
    _set_alpha(page, 0)
    assert _canvas_pixel(page, x, y) == original[y, x].tolist()
    assert _canvas_pixel(page, 5, 5) == original[5, 5].tolist()
    _set_alpha(page, 100)
    assert _canvas_pixel(page, x, y) == palette[int(labels[y, x])]
    name, data = _download(page, "labels")
    assert name.startswith("scene-labels")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), labels)
    assert problems == []
