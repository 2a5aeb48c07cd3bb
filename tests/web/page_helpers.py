"""What the web page tests share: the browser, the test key, and small page helpers (canvas pixels, the opacity
slider, drag and drop, downloads)."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit import REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
KEY = "web-test-key"
DEMO_MODEL = REPO / "service" / "models" / "default.onnx"


@contextlib.contextmanager
def chromium(why: str) -> Iterator[object]:
    """The installed Chromium, headless, closed on leaving; a failure (not a skip) naming `why` when it is missing."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's `chromium` package (apt-get install -y chromium); {why}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()



def page_problems(page: object) -> list[str]:
    """A list that collects the page's uncaught errors and console errors from now on (the service's 401s before
    the key is entered are expected, and left out)."""
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))  # type: ignore[attr-defined]
    page.on("console", lambda msg: problems.append(msg.text)  # type: ignore[attr-defined]
            if msg.type == "error" and "401" not in msg.text else None)
    return problems


def canvas_pixel(page: object, x: int, y: int) -> list[int]:
    return page.evaluate(  # type: ignore[attr-defined]
        "([x, y]) => Array.from(document.getElementById('canvas').getContext('2d')"
        ".getImageData(x, y, 1, 1).data.slice(0, 3))", [x, y])


def set_alpha(page: object, percent: int) -> None:
    page.evaluate(  # type: ignore[attr-defined]
        "(v) => { const el = document.getElementById('alpha'); el.value = v;"
        " el.dispatchEvent(new Event('input')); }", percent)


def drop_file(page: object, path: Path) -> None:
    """A real drag-and-drop: a DataTransfer holding the file, dropped on the drop zone."""
    data = base64.b64encode(path.read_bytes()).decode()
    transfer = page.evaluate_handle(  # type: ignore[attr-defined]
        """([b64, name]) => { const dt = new DataTransfer();
             const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
             dt.items.add(new File([bytes], name, { type: 'image/png' })); return dt; }""", [data, path.name])
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})  # type: ignore[attr-defined]


def download_names(table: list[dict]) -> list[str]:
    """The download links the page should build from an output table: JSON kinds in their default encoding,
    image kinds as the PNG that /results renders again."""
    names = []
    for kind in table:
        encodings = kind["encodings"] if kind["json"] else [e for e in kind["encodings"]
                                                             if e["media_type"] == "image/png"]
        if encodings:
            names.append(kind["name"] + encodings[0]["suffix"])
    return names


def suffix(table: list[dict], name: str, media_type: str | None = None) -> str:
    (kind,) = [k for k in table if k["name"] == name]
    return next(e["suffix"] for e in kind["encodings"] if media_type in (None, e["media_type"]))


def download_output(page: object, output: str) -> tuple[str, bytes]:
    """Click the download link of `output`; the suggested file name and the bytes saved."""
    with page.expect_download() as download:  # type: ignore[attr-defined]
        page.click(f"#downloads a[data-output={output}]")  # type: ignore[attr-defined]
    return download.value.suggested_filename, Path(download.value.path()).read_bytes()


def upload_and_wait(page: object, path: Path) -> None:
    """Choose `path` in the file input and wait until the page shows its result."""
    page.set_input_files("#file", str(path))  # type: ignore[attr-defined]
    page.wait_for_function(  # type: ignore[attr-defined]
        "(name) => document.getElementById('stage').dataset.state === 'ready'"
        " && document.getElementById('status').textContent.startsWith(name + ':')", arg=path.name, timeout=20_000)
