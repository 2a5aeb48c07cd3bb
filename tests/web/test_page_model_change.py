"""A tab left open while the service changes model (real Chromium; a real `segment-serve` process restarted on the
same port with another model): the next upload shows the new model's header, demo note, class names and colours."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import onnx
import pytest
from onnx import helper

from service.core.contract import ModelMetadata
from testkit.server import ServerProcess
from tests.service.svc_helpers import make_rule_model

# Two models of one graph (the rule model: classes 0-3 by dominant colour) with metadata of their own: other
# names, other colours (class 0 included: the mask's transparent background), one a demo of synthetic shapes.
SHAPES = ModelMetadata(classes=["background", "disc", "square", "triangle", "ring"],
                       palette=[[0, 0, 0], [200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]],
                       input_size=96, arch="rule", source="synthetic shapes (a test model)")
STREETS = ModelMetadata(classes=["void", "road", "car", "person", "tree", "sky"],
                        palette=[[10, 10, 10], [128, 64, 128], [0, 0, 142], [220, 20, 60], [107, 142, 35],
                                 [70, 130, 180]],
                        input_size=96, arch="rule-streets", source="tests: hand-written graph")


def _model(path: Path, meta: ModelMetadata) -> Path:
    """The rule graph at `path` (its file name is the model's name), carrying `meta`."""
    model = onnx.load(str(make_rule_model(path)))
    del model.metadata_props[:]
    helper.set_model_props(model, meta.to_props())
    onnx.save(model, str(path))
    return path


@pytest.fixture(params=["streets", "shapes"])
def models(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, Path]:
    """The first model, and the second: named otherwise, or a file of the same name with other classes (a
    re-export deployed under the path the server is configured with)."""
    (tmp_path / "next").mkdir()
    return _model(tmp_path / "shapes.onnx", SHAPES), _model(tmp_path / "next" / f"{request.param}.onnx", STREETS)


@pytest.fixture
def first_server(models: tuple[Path, Path]) -> Iterator[ServerProcess]:
    with ServerProcess(models[0]) as server:
        yield server.wait_ready()


def _legend(page: object) -> list[list[str]]:
    """Each legend entry's class name and swatch colour, as the page shows them."""
    return page.eval_on_selector_all(  # type: ignore[attr-defined]
        "#legend li", "items => items.map(li => [li.dataset.className,"
        " getComputedStyle(li.querySelector('.swatch')).backgroundColor])")


def _expected(url: str, picture: Path, meta: ModelMetadata) -> list[list[str]]:
    """The legend of `picture`'s stats from the server at `url`, in the colours of `meta`."""
    stats = httpx.post(f"{url}/segment?output=stats", content=picture.read_bytes(),
                       headers={"Content-Type": "image/png"}, timeout=30).json()
    return [[c["class_name"], "rgb({}, {}, {})".format(*meta.palette[c["class_id"]])] for c in stats["classes"]]


def _upload(page: object, picture: Path) -> None:
    page.set_input_files("#file", str(picture))  # type: ignore[attr-defined]
    page.wait_for_selector("#stage[data-state=ready]")  # type: ignore[attr-defined]


def test_an_upload_after_a_model_change_shows_the_new_model(browser_page: object, first_server: ServerProcess,
                                                            models: tuple[Path, Path], picture: Path) -> None:
    """Before: /classes was read once per page, so the header, the demo note and the legend's colours stayed the
    old model's (class ids the old model did not have drawn grey) until the page was reloaded."""
    page, url = browser_page, first_server.url
    page.goto(url + "/")
    page.wait_for_selector("#downloads[data-state=ready] a")
    _upload(page, picture)
    assert page.text_content("#model").startswith("model shapes · rule ·")
    assert page.is_visible("#model-note")
    assert _legend(page) == _expected(url, picture, SHAPES)
    first_server.terminate()
    with ServerProcess(models[1], SEGMENT_PORT=url.rsplit(":", 1)[1]) as second:
        second.url = url  # the same address: the tab does not know the server changed
        second.wait_ready()
        _upload(page, picture)
        expected = _expected(url, picture, STREETS)
        assert expected[0][0] == "void" and len(expected) > 2
        assert _legend(page) == expected
        assert page.text_content("#model") == f"model {models[1].stem} · rule-streets · fp32 · 6 classes"
        assert not page.is_visible("#model-note")
        assert page.text_content("#status").startswith("picture.png: void,")
