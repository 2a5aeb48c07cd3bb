"""The page against a real server in the states a busy deployment has (real Chromium, real uvicorn on the rule
model): still warming up, no result cache, and an upload replaced while the service is still working on it."""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.client import SegmentClient
from service.core.engine import load_engine
from service.settings import Settings
from tests.clients.conftest import warming_server
from tests.service.svc_helpers import LiveServer, make_rule_model, running_server, scene
from tests.web.page_helpers import canvas_pixel, download_output, page_problems, set_alpha


@pytest.fixture(scope="module")
def rule_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_rule_model(tmp_path_factory.mktemp("rule") / "rule.onnx")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """first.png (160×120) and second.png (120×160), PNG so that pixels compare exactly."""
    folder = tmp_path_factory.mktemp("pictures")
    first, second = folder / "first.png", folder / "second.png"
    Image.fromarray(scene(160, 120)).save(first)
    Image.fromarray(scene(120, 160)).save(second)
    return first, second


def _expected(url: str, picture: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    """The service's stats, colour mask and class colours (per pixel) for `picture`."""
    with SegmentClient(url) as client:
        stats = client.stats(picture)
        color = client.segment(picture, "color").array()
        labels = client.labels(picture)
    return stats, color, labels


def _legend(page: object) -> list[list[str]]:
    return page.eval_on_selector_all(  # type: ignore[attr-defined]
        "#legend li", "items => items.map(li => [li.dataset.className, li.querySelector('.pct').textContent])")


def test_an_upload_while_the_server_warms_up_waits_for_it(browser_page: object, rule_model: Path,
                                                          pictures: tuple[Path, Path]) -> None:
    """`/segment` answers 503 `not_ready` with Retry-After until the model is warm; the page asks again after
    that wait (before: "Error 503 not_ready", and choosing the file again did nothing)."""
    page = browser_page
    first, _ = pictures
    stats_answers: list[int] = []
    page.on("response", lambda r: stats_answers.append(r.status) if "output=stats" in r.url else None)
    with warming_server(rule_model) as (url, release):
        problems = page_problems(page)
        page.goto(url + "/")
        page.wait_for_selector("#downloads[data-state=ready] a")
        with page.expect_response(lambda r: "output=stats" in r.url and r.status == 503):
            page.set_input_files("#file", str(first))
        threading.Timer(1.5, release.set).start()  # the model is warm 1.5 s after the first refusal
        page.wait_for_selector("#stage[data-state=ready]", timeout=20_000)
        stats, _, _ = _expected(url, first)
        assert _legend(page) == [[c["class_name"], f"{c['fraction'] * 100:.1f}%"] for c in stats["classes"]]
        assert page.text_content("#status").startswith("first.png:")
    assert stats_answers[0] == 503 and stats_answers[-1] == 200, stats_answers
    assert [p for p in problems if "503" not in p] == []


def test_the_page_works_on_a_server_without_a_result_cache(browser_page: object, rule_model: Path,
                                                           pictures: tuple[Path, Path]) -> None:
    """`SEGMENT_RESULT_CACHE_BYTES=0`: no result is kept, so answers carry no result id (a null `id`, no
    `X-Result-ID`); the page segments the upload again for its mask and its image downloads, without asking
    `/results` for what it cannot have (before: no mask, "Error 404 result_not_found", and no image download;
    then a 404 per image until the id was left out)."""
    page = browser_page
    first, _ = pictures
    results_asked: list[str] = []
    page.on("request", lambda r: results_asked.append(r.url) if "/results/" in r.url else None)
    with running_server(rule_model, result_cache_bytes=0) as url:
        stats, color, labels = _expected(url, first)
        assert stats["id"] is None
        with SegmentClient(url) as client:
            assert client.segment(first, "labels").result_id is None
            palette = {c["id"]: c["color"] for c in client.classes()["classes"]}
        problems = page_problems(page)
        page.goto(url + "/")
        page.wait_for_selector("#downloads[data-state=ready] a")
        page.set_input_files("#file", str(first))
        page.wait_for_selector("#stage[data-state=ready]", timeout=20_000)
        original = np.asarray(Image.open(first).convert("RGB"))
        fg = np.argwhere(labels != 0)
        y, x = (int(v) for v in fg[len(fg) // 2])
        set_alpha(page, 100)
        assert canvas_pixel(page, x, y) == palette[int(labels[y, x])]
        name, data = download_output(page, "color")
        assert name == "first-color.png"
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), color)
        set_alpha(page, 0)
        name, data = download_output(page, "overlay")
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), original)
        name, data = download_output(page, "labels")
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), labels)
    assert problems == [] and results_asked == []


@contextlib.contextmanager
def gated_server(model: Path) -> Iterator[tuple[str, threading.Event, threading.Event]]:
    """A real server whose model runs wait while `gate` is clear; `entered` is set when one starts waiting."""
    options = Settings(model_path=model, host="127.0.0.1", port=0, intra_op_threads=1, worker_threads=2)
    engine = load_engine(options.engine_options())
    gate, entered = threading.Event(), threading.Event()
    gate.set()
    run_images = engine.run_images  # what the batcher runs

    def gated(images: list[np.ndarray]) -> np.ndarray:
        if not gate.is_set():
            entered.set()
            gate.wait(30)
        return run_images(images)

    engine.run_images = gated  # type: ignore[method-assign]
    server = LiveServer(options, engine=engine).start()
    try:
        yield server.url, gate, entered
    finally:
        gate.set()
        server.stop()


def test_a_newer_upload_aborts_the_older_ones_requests(browser_page: object, rule_model: Path,
                                                       pictures: tuple[Path, Path]) -> None:
    """first.png is still being segmented when second.png is chosen: the page drops first.png's request (the
    service stops working for a client that left) instead of letting it run on unseen."""
    page = browser_page
    first, second = pictures
    aborted: list[str] = []
    page.on("requestfailed", lambda r: aborted.append(f"{r.url} {r.failure}"))
    with gated_server(rule_model) as (url, gate, entered):
        problems = page_problems(page)
        page.goto(url + "/")
        page.wait_for_selector("#downloads[data-state=ready] a")
        gate.clear()
        page.set_input_files("#file", str(first))
        assert entered.wait(20), "first.png's model run never started"
        page.set_input_files("#file", str(second))
        for _ in range(100):
            if aborted:
                break
            page.wait_for_timeout(50)
        gate.set()
        page.wait_for_function("() => document.getElementById('stage').dataset.state === 'ready'"
                               " && document.getElementById('status').textContent.startsWith('second.png:')")
        stats, _, _ = _expected(url, second)
        assert _legend(page) == [[c["class_name"], f"{c['fraction'] * 100:.1f}%"] for c in stats["classes"]]
    assert len(aborted) == 1 and "output=stats" in aborted[0] and "ABORTED" in aborted[0], aborted
    assert problems == []
