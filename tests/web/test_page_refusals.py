"""The page when the service refuses a request in a way it cannot mend by itself (real Chromium, a real uvicorn on
the rule model, whose `POST /segment` of a chosen output kind is answered with a refusal as the service words it,
the rest by the service itself):

- a 503 whose Retry-After is longer than the page waits: the status says when to try again. Before: "Error 503
  overloaded: ..." with no hint of when.
- a polygons request refused (422 `output_too_complex`): the polygons box is unticked, as nothing is drawn, and
  ticking it again asks again. Before: the box stayed ticked over no polygons.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from service.settings import Settings
from tests.service.svc_helpers import LiveServer, make_rule_model
from tests.web.page_helpers import page_problems

Refusal = tuple[int, str, str, dict[str, str]]  # status, code, message, headers


class RefusingServer(LiveServer):
    """A live server whose `POST /segment?output=<kind>` is refused with `refusals[kind]` while that is set;
    `asked` counts those requests by kind."""

    def __init__(self, model: Path) -> None:
        super().__init__(Settings(model_path=model, host="127.0.0.1", port=0, intra_op_threads=1, worker_threads=2))
        self.refusals: dict[str, Refusal] = {}
        self.asked: dict[str, int] = {}
        self.server.config.app = self._refusing(self.app)  # loaded when the server runs

    def _refusing(self, app: ASGIApp) -> ASGIApp:
        async def refusing(scope: Scope, receive: Receive, send: Send) -> None:
            kind = parse_qs(scope.get("query_string", b"").decode()).get("output", [""])[0]
            if scope["type"] == "http" and scope["path"] == "/segment":
                self.asked[kind] = self.asked.get(kind, 0) + 1
                if kind in self.refusals:
                    status, code, message, headers = self.refusals[kind]
                    body = {"error": {"code": code, "message": message, "request_id": "test"}}
                    await JSONResponse(body, status, headers)(scope, receive, send)
                    return
            await app(scope, receive, send)
        return refusing


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RefusingServer]:
    live = RefusingServer(make_rule_model(tmp_path_factory.mktemp("rule") / "rule.onnx")).start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture
def refusing(server: RefusingServer) -> RefusingServer:
    server.refusals.clear()
    server.asked.clear()
    return server


def _open(page: object, url: str) -> list[str]:
    problems = page_problems(page)
    page.goto(url + "/")  # type: ignore[attr-defined]
    page.wait_for_selector("#downloads[data-state=ready] a")  # type: ignore[attr-defined]
    return problems


def test_a_long_retry_after_is_shown(browser_page: object, refusing: RefusingServer, picture: Path) -> None:
    """Retry-After 30 s, past the page's 5 s wait: not sent again, and the status names the wait."""
    page = browser_page
    refusing.refusals["stats"] = (503, "overloaded", "the inference queue is full (64); retry shortly",
                                  {"Retry-After": "30"})
    problems = _open(page, refusing.url)
    page.set_input_files("#file", str(picture))
    page.wait_for_selector("#status.error")
    assert page.text_content("#status") == ("Error 503 overloaded: the inference queue is full (64); retry shortly. "
                                            "The service asks to try again in about 30 s.")
    assert refusing.asked["stats"] == 1  # not sent again sooner than asked
    assert [p for p in problems if "503" not in p] == []


def test_a_retry_after_of_minutes_is_shown_in_minutes(browser_page: object, refusing: RefusingServer,
                                                      picture: Path) -> None:
    page = browser_page
    refusing.refusals["stats"] = (503, "not_ready", "the model is loading", {"Retry-After": "150"})
    _open(page, refusing.url)
    page.set_input_files("#file", str(picture))
    page.wait_for_selector("#status.error")
    assert page.text_content("#status") == ("Error 503 not_ready: the model is loading. The service asks to try "
                                            "again in about 3 min.")


def test_a_503_the_page_waits_for_shows_no_hint_when_it_ends(browser_page: object, refusing: RefusingServer,
                                                            picture: Path) -> None:
    """The control: a 503 without Retry-After is not retried, and the page cannot tell when to try again."""
    page = browser_page
    refusing.refusals["stats"] = (503, "overloaded", "too many uploads at once; retry shortly", {})
    _open(page, refusing.url)
    page.set_input_files("#file", str(picture))
    page.wait_for_selector("#status.error")
    assert page.text_content("#status") == "Error 503 overloaded: too many uploads at once; retry shortly"


def test_refused_polygons_untick_the_box_and_ticking_again_asks_again(browser_page: object,
                                                                      refusing: RefusingServer,
                                                                      picture: Path) -> None:
    page = browser_page
    refusing.refusals["polygons"] = (422, "output_too_complex", "the answer would have 12000 polygons, more than "
                                     "10000: raise min_area or tolerance", {})
    problems = _open(page, refusing.url)
    page.set_input_files("#file", str(picture))
    page.wait_for_selector("#stage[data-state=ready]")
    page.click("#polygons")
    page.wait_for_selector("#status.error")
    assert page.text_content("#status") == ("Error 422 output_too_complex: the answer would have 12000 polygons, "
                                            "more than 10000: raise min_area or tolerance")
    page.wait_for_function("!document.getElementById('polygons').checked")  # before: stayed ticked
    assert page.is_disabled("#fill-polygons") and not page.is_checked("#fill-polygons")
    assert page.get_attribute("#stage", "data-polygons") == ""
    assert page.eval_on_selector("#polygon-layer", "svg => [svg.hidden, svg.childElementCount]") == [True, 0]
    # The refusal lifted: ticking the box again asks again, and draws them.
    del refusing.refusals["polygons"]
    page.click("#polygons")
    page.wait_for_selector("#stage[data-polygons]:not([data-polygons=''])")
    assert page.is_checked("#polygons") and page.is_enabled("#fill-polygons")
    assert page.eval_on_selector("#polygon-layer", "svg => !svg.hidden && svg.childElementCount > 0")
    assert refusing.asked["polygons"] == 2
    assert [p for p in problems if "422" not in p] == []
