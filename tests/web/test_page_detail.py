"""The page's "Detail" choice, the `resolution` of `POST /segment` (real Chromium, a real uvicorn on the rule model
at input size 96): by default no `resolution` is sent; "2x" sends twice the input size, "full resolution" sends
`native`, and changing it segments the shown image again, with the same resolution for its mask, polygons and
downloads; the status and timing lines name the tiles that ran; a thin line lost at the model's size shows at full
resolution; past the server's tile limit, the page asks for the most detail the service names."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from service.settings import Settings
from tests.service.svc_helpers import LiveServer, make_rule_model
from tests.web.page_helpers import canvas_pixel, download_output, page_problems, upload_and_wait

INPUT_SIZE = 96
LINE_X = 200  # the thin line's column in the 400x300 picture


def _server(folder: Path, **settings: object) -> LiveServer:
    model = make_rule_model(folder / "rule.onnx", input_size=INPUT_SIZE)
    return LiveServer(Settings(model_path=model, host="127.0.0.1", port=0, max_wait_ms=2, intra_op_threads=1,
                               worker_threads=2, **settings)).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """No result cache: the mask and the image downloads segment the upload again, so they show the resolution
    they are asked at. Tiles enough for the 400x300 picture at its native size."""
    live = _server(tmp_path_factory.mktemp("rule"), result_cache_bytes=0, max_tiles=64)
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server that runs at most 2 tiles for one request."""
    live = _server(tmp_path_factory.mktemp("capped"), max_tiles=2)
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def thin_line(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400x300, black but for a 1-pixel red column: at 96 px its red averages below the rule model's threshold
    (background); at the native size it is class 1."""
    image = np.zeros((300, 400, 3), np.uint8)
    image[:, LINE_X, 0] = 150
    path = tmp_path_factory.mktemp("line") / "line.png"
    Image.fromarray(image).save(path)
    return path


class SegmentRequests:
    """The `POST /segment` requests `page` sends (their query, as a dict of single values) and the X-Tiles of
    their answers."""

    def __init__(self, page: object) -> None:
        self.queries: list[dict[str, str]] = []
        self.tiles: list[str | None] = []
        page.on("request", self._request)  # type: ignore[attr-defined]
        page.on("response", self._response)  # type: ignore[attr-defined]

    @staticmethod
    def _query(url: str) -> dict[str, str] | None:
        parts = urlsplit(url)
        return {k: v[0] for k, v in parse_qs(parts.query).items()} if parts.path == "/segment" else None

    def _request(self, request: object) -> None:
        if (query := self._query(request.url)) is not None:  # type: ignore[attr-defined]
            self.queries.append(query)

    def _response(self, response: object) -> None:
        if self._query(response.url) is not None:  # type: ignore[attr-defined]
            self.tiles.append(response.headers.get("x-tiles"))  # type: ignore[attr-defined]

    def clear(self) -> None:
        self.queries.clear()
        self.tiles.clear()


def _open(page: object, url: str) -> list[str]:
    problems = page_problems(page)
    page.goto(url + "/")  # type: ignore[attr-defined]
    page.wait_for_selector("#downloads[data-state=ready] a")  # type: ignore[attr-defined]
    page.wait_for_selector("#detail option[value='2x']:not([disabled])", state="attached")  # type: ignore[attr-defined]
    return problems


def _choose(page: object, value: str, name: str) -> None:
    """Choose a detail and wait until the page shows `name` segmented again."""
    page.select_option("#detail", value)  # type: ignore[attr-defined]
    page.wait_for_function(  # type: ignore[attr-defined]
        "(name) => document.getElementById('stage').dataset.state === 'ready'"
        " && document.getElementById('status').textContent.startsWith(name + ':')", arg=name, timeout=20_000)


def test_detail_is_sent_with_every_request_for_the_image(browser_page: object, server: LiveServer,
                                                         picture: Path) -> None:
    page = browser_page
    problems = _open(page, server.url)
    options = page.eval_on_selector_all("#detail option", "os => os.map(o => [o.value, o.textContent])")
    assert options == [["", "model size (fastest)"], ["2x", "2x"], ["native", "full resolution"]]
    assert page.input_value("#detail") == ""

    sent = SegmentRequests(page)
    upload_and_wait(page, picture)
    assert sent.queries and all("resolution" not in q for q in sent.queries)
    assert set(sent.tiles) == {None}
    assert "tile" not in page.text_content("#status") + page.text_content("#timing")

    sent.clear()
    _choose(page, "2x", picture.name)
    assert {q["output"] for q in sent.queries} == {"stats", "color"}  # the result and its mask, no cache
    assert {q.get("resolution") for q in sent.queries} == {str(2 * INPUT_SIZE)}

    sent.clear()
    _choose(page, "native", picture.name)
    assert {q.get("resolution") for q in sent.queries} == {"native"}
    (tiles,) = set(sent.tiles)
    assert tiles is not None and int(tiles) > 1
    assert page.text_content("#status").endswith(f"found in {tiles} tiles.")
    assert page.text_content("#timing").endswith(f" · {tiles} tiles")

    # Its polygons and its downloads ask at the same resolution.
    sent.clear()
    page.click("#polygons")
    page.wait_for_selector("#stage[data-polygons]:not([data-polygons=''])")
    download_output(page, "labels")
    assert {q["output"] for q in sent.queries} == {"polygons", "labels"}
    assert {q.get("resolution") for q in sent.queries} == {"native"}
    assert problems == []


def test_a_thin_line_shows_at_full_resolution(browser_page: object, server: LiveServer, thin_line: Path) -> None:
    page = browser_page
    problems = _open(page, server.url)
    page.select_option("#view", "color")
    upload_and_wait(page, thin_line)
    # At the model's size the line is background, as the black around it.
    assert {tuple(canvas_pixel(page, LINE_X, y)) for y in (5, 150, 295)} == {tuple(canvas_pixel(page, 10, 150))}

    _choose(page, "native", thin_line.name)
    red = canvas_pixel(page, LINE_X, 150)
    assert red != canvas_pixel(page, LINE_X - 1, 150)
    assert [canvas_pixel(page, LINE_X, y) for y in (5, 150, 295)] == [red] * 3

    # The colour mask download, segmented again (no result cache), has the line too.
    _, data = download_output(page, "color")
    saved = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert saved[150, LINE_X].tolist() == red
    assert saved[150, LINE_X - 1].tolist() != red
    assert problems == []


def test_full_resolution_past_the_tile_limit_is_the_most_the_service_gives(browser_page: object,
                                                                          capped: LiveServer, picture: Path) -> None:
    page = browser_page
    problems = _open(page, capped.url)
    sent = SegmentRequests(page)
    upload_and_wait(page, picture)
    sent.clear()
    _choose(page, "native", picture.name)
    # native is refused (422 too_many_tiles, naming the most this image may ask); the page asks for that instead.
    most = httpx.post(f"{capped.url}/segment", params={"resolution": "native"}, content=picture.read_bytes(),
                      headers={"content-type": "image/png"}).json()["error"]["max_resolution"]
    assert most > INPUT_SIZE
    resolutions = [q.get("resolution") for q in sent.queries]
    assert resolutions[0] == "native" and set(resolutions[1:]) == {str(most)}, resolutions
    status = page.text_content("#status")
    assert f"found in {sent.tiles[-1]} tiles. (At {most} px: the most detail this service gives" in status, status
    assert int(sent.tiles[-1]) <= 2
    assert not page.eval_on_selector("#status", "el => el.classList.contains('error')")

    # Its polygons ask at the resolution that was given, not the one refused.
    sent.clear()
    page.click("#polygons")
    page.wait_for_selector("#stage[data-polygons]:not([data-polygons=''])")
    assert [q.get("resolution") for q in sent.queries] == [str(most)]
    # The browser logs the refused request itself; nothing else went wrong.
    assert [p for p in problems if "status of 422" not in p] == []
