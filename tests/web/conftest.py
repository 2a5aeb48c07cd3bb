"""Fixtures of the web page tests: a live server with an API key, a scene to upload, a headless Chromium."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from model_export.synthetic import SceneConfig, render_scene
from testkit import REPO
from tests.service.svc_helpers import make_rule_model, running_server
from tests.service.svc_helpers import scene as scene_image
from tests.web.page_helpers import DEMO_MODEL, KEY, chromium


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
    with chromium("the web page must be tested in a real browser") as browser:
        yield browser.new_context(viewport={"width": 1280, "height": 760}, accept_downloads=True)


@pytest.fixture
def browser_page(browser_context: object) -> object:
    return browser_context.new_page()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def rule_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live server on the rule model, whose regions are known, with the API key."""
    model = make_rule_model(tmp_path_factory.mktemp("rule") / "rule.onnx")
    with running_server(model, api_keys=[KEY]) as base:
        yield base


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 160x120 scene for the rule model, as PNG (lossless: pixels can be compared exactly)."""
    path = tmp_path_factory.mktemp("picture") / "picture.png"
    Image.fromarray(scene_image(160, 120)).save(path)
    return path
