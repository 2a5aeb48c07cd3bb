"""What assistive technology and the file chooser get from the page (real Chromium's accessibility tree, a real
uvicorn on the rule model): the controls' roles and names, the result picture's text alternative, the formats
offered, and the footer's /classes link where the service asks for a key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.client import SegmentClient
from service.core.decode import ACCEPTED_FORMATS
from tests.service.svc_helpers import make_rule_model, running_server
from tests.web.page_helpers import KEY, page_problems, upload_and_wait

DROP_NAME = "Drop an image here or click to choose one"


@pytest.fixture(scope="module")
def keyless_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live server on the rule model that asks for no API key."""
    with running_server(make_rule_model(tmp_path_factory.mktemp("keyless") / "rule.onnx")) as base:
        yield base


def _open(page: object, url: str, key: str | None = KEY) -> list[str]:
    problems = page_problems(page)
    page.goto(url + "/")  # type: ignore[attr-defined]
    if key:
        page.fill("#api-key", key)  # type: ignore[attr-defined]
        page.press("#api-key", "Tab")  # type: ignore[attr-defined]
    page.wait_for_selector("#downloads[data-state=ready] a")  # type: ignore[attr-defined]
    return problems


def test_the_controls_have_roles_and_names(browser_page: object, rule_url: str, picture: Path) -> None:
    """The slider is named "Opacity" alone (not with the value beside it); the drop zone is a button that Enter
    opens the file chooser from."""
    page = browser_page
    choosers: list[object] = []
    # Listening before the page loads: the first chooser is intercepted too.
    page.on("filechooser", lambda chooser: choosers.append(chooser))
    problems = _open(page, rule_url)
    assert page.get_by_role("slider", name="Opacity", exact=True).count() == 1
    button = page.get_by_role("button", name=DROP_NAME, exact=True)
    assert button.count() == 1
    button.focus()
    page.keyboard.press("Enter")
    for _ in range(100):
        if choosers:
            break
        page.wait_for_timeout(50)
    assert len(choosers) == 1, "Enter on the button opens the file chooser"
    choosers[0].set_files(str(picture))
    page.wait_for_selector("#stage[data-state=ready]")
    assert problems == []


def test_the_result_picture_has_a_text_alternative(browser_page: object, rule_url: str, picture: Path) -> None:
    """The canvas is an image named by the file and each class found with its share, as the legend shows it."""
    page = browser_page
    with SegmentClient(rule_url, api_key=KEY) as client:
        stats = client.stats(picture)
    problems = _open(page, rule_url)
    upload_and_wait(page, picture)
    found = ", ".join(f"{c['class_name']} {c['fraction'] * 100:.1f}%" for c in stats["classes"])
    assert len(stats["classes"]) > 1
    image = page.get_by_role("img", name=f"picture.png, segmented: {found}", exact=True)
    assert image.count() == 1
    assert image.evaluate("el => el.id") == "canvas"
    assert problems == []


def test_the_chooser_offers_only_the_formats_the_service_decodes(browser_page: object, rule_url: str) -> None:
    """Every format the service decodes is offered by media type and by its extensions; nothing else is (no
    wildcard, no extension of a format it refuses)."""
    page = browser_page
    _open(page, rule_url)
    accept = {a.strip() for a in page.get_attribute("#file", "accept").split(",")}
    Image.init()
    extensions = {ext for ext, fmt in Image.registered_extensions().items() if fmt in ACCEPTED_FORMATS}
    types = {t for t in accept if "/" in t}
    assert not any(t.endswith("/*") for t in types)
    assert types == {Image.MIME[fmt] for fmt in ACCEPTED_FORMATS} | {"image/bmp"}
    offered = accept - types
    assert offered <= extensions, f"extensions of refused formats: {offered - extensions}"
    for fmt in ACCEPTED_FORMATS:
        own = {ext for ext, f in Image.registered_extensions().items() if f == fmt}
        assert own & offered, f"no extension for {fmt}"
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"} <= offered
    assert not {"image/avif", "image/svg+xml", "image/heic"} & types


def test_the_classes_link_is_hidden_where_a_key_is_needed(browser_page: object, rule_url: str,
                                                          keyless_url: str) -> None:
    """A plain link cannot send the API key: where the service asks for one, the footer does not offer /classes
    (it would show a raw 401), before the key is entered, after, and on the next visit; where it asks for none,
    the link is there and works."""
    page = browser_page
    link = page.locator("footer a[href='/classes']")
    page.goto(rule_url + "/")
    page.wait_for_selector("#status.error")  # the 401 of /classes, without a key
    assert not link.is_visible()
    page.fill("#api-key", KEY)
    page.press("#api-key", "Tab")
    page.wait_for_selector("#legend[data-kind=classes] li")
    assert not link.is_visible()
    page.reload()  # the key is remembered: the page reads /classes with it
    page.wait_for_selector("#legend[data-kind=classes] li")
    assert not link.is_visible()

    page.evaluate("localStorage.clear()")
    page.goto(keyless_url + "/")
    page.wait_for_selector("#legend[data-kind=classes] li")
    assert link.is_visible()
    link.click()
    page.wait_for_url(keyless_url + "/classes")
    assert "classes" in page.text_content("body")


def test_a_class_present_but_tiny_is_not_shown_as_zero(browser_page: object, rule_url: str,
                                                       tmp_path: Path) -> None:
    """A class under 0.05 % of the picture reads "<0.1%" in the legend (and the picture's text), not "0.0%"."""
    image = np.full((600, 800, 3), 20, np.uint8)
    image[100:500, 100:700] = (30, 200, 40)  # green: half the picture
    image[300:306, 50:56] = (220, 30, 30)  # red: 36 pixels of 480 000
    path = tmp_path / "speck.png"
    Image.fromarray(image).save(path)
    with SegmentClient(rule_url, api_key=KEY) as client:
        (red,) = [c for c in client.stats(path)["classes"] if c["class_id"] == 1]
    assert 0 < red["fraction"] < 0.0005, red
    page = browser_page
    problems = _open(page, rule_url)
    upload_and_wait(page, path)
    pct = page.text_content("#legend li[data-class-id='1'] .pct")
    assert pct == "<0.1%"
    assert f"{red['class_name']} <0.1%" in page.get_attribute("#canvas", "aria-label")
    assert problems == []
