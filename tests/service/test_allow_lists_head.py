"""The `Allow` of a 405 lists every method the resource supports (RFC 9110 §10.2.1): HEAD beside GET on every GET
route, since every GET route answers HEAD, and nothing added where GET is not allowed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.head_routing import allow_with_head
from tests.service.svc_helpers import png_bytes, running_server, scene

GET_ROUTES = ("/classes", "/outputs", "/healthz", "/readyz", "/metrics", "/", "/docs", "/redoc", "/openapi.json",
              "/static/app.js")
OTHER_METHODS = ("PUT", "DELETE", "PATCH", "OPTIONS")


@pytest.fixture(scope="module")
def client(rule_model: Path) -> Iterator[httpx.Client]:
    with running_server(rule_model) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def result_path(client: httpx.Client) -> str:
    """The path of a result the server holds, for `/results/{id}/{name}`."""
    answer = client.post("/segment", content=png_bytes(scene()), headers={"Content-Type": "image/png"})
    assert answer.status_code == 200, answer.text
    return f"/results/{answer.headers['x-result-id']}/labels.png"


@pytest.mark.parametrize("method", OTHER_METHODS)
def test_405_on_a_get_route_allows_head(client: httpx.Client, result_path: str, method: str) -> None:
    for path in (*GET_ROUTES, result_path):
        answer = client.request(method, path)
        assert answer.status_code == 405, (method, path, answer.text)
        assert answer.headers.get_list("allow") == ["GET, HEAD"], (method, path)
        assert answer.json()["error"]["code"] == "method_not_allowed", (method, path)
        assert client.head(path).status_code == 200, path  # what the Allow promises holds


def test_a_post_route_allows_post_alone(client: httpx.Client) -> None:
    for method in ("GET", "HEAD", *OTHER_METHODS):
        answer = client.request(method, "/segment")
        assert answer.status_code == 405, method
        assert answer.headers.get_list("allow") == ["POST"], method


def test_the_answers_after_a_widened_405_stay_in_step(client: httpx.Client) -> None:
    """The 405's body and length are untouched: the next answer on the same connection reads whole."""
    assert client.put("/classes").status_code == 405
    assert client.get("/classes").json()["classes"]


@pytest.mark.parametrize("allow,expected", [
    ("GET", "GET, HEAD"),
    ("GET, POST", "GET, HEAD, POST"),
    ("POST, GET", "POST, GET, HEAD"),
    ("get,post", "get, HEAD, post"),
    ("GET, HEAD", "GET, HEAD"),
    ("HEAD, GET", "GET, HEAD"),  # Starlette's order varies by process: one order always
    ("HEAD, POST, GET", "POST, GET, HEAD"),
    ("POST", "POST"),
    ("", ""),
])
def test_allow_with_head(allow: str, expected: str) -> None:
    assert allow_with_head(allow) == expected
