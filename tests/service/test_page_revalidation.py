"""The web page at `/` is revalidated by its ETag as its files under /static are: an If-None-Match naming the
current ETag gets 304 with no body and the same caching and security headers; a stale one gets the page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.routes.web import STATIC_DIR
from service.security_headers import PAGE_POLICY
from tests.service.svc_helpers import running_server

KEPT = ("etag", "cache-control", "content-security-policy", "x-frame-options", "x-content-type-options")


@pytest.fixture(scope="module")
def client(rule_model: Path) -> Iterator[httpx.Client]:
    with running_server(rule_model) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield http


@pytest.mark.parametrize("path", ["/", "/static/app.js"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_current_etag_gets_304(client: httpx.Client, path: str, method: str) -> None:
    page = client.get(path)
    assert page.status_code == 200 and page.headers["cache-control"] == "no-cache"
    etag = page.headers["etag"]
    again = client.request(method, path, headers={"If-None-Match": etag})
    assert again.status_code == 304, again.text
    assert again.content == b""
    assert {name: again.headers.get(name) for name in KEPT} == {name: page.headers.get(name) for name in KEPT}
    assert again.headers["content-security-policy"] == PAGE_POLICY
    # One of several tags, and the weak form, match too (RFC 9110 §13.1.2: If-None-Match compares weakly).
    listed = client.request(method, path, headers={"If-None-Match": f'"stale", W/{etag}'})
    assert listed.status_code == 304


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_stale_etag_gets_the_page(client: httpx.Client, method: str) -> None:
    page = client.request(method, "/", headers={"If-None-Match": '"not-the-page"'})
    assert page.status_code == 200 and page.headers["cache-control"] == "no-cache"
    assert page.headers["content-length"] == str((STATIC_DIR / "index.html").stat().st_size)
    if method == "GET":
        assert page.content == (STATIC_DIR / "index.html").read_bytes()
    else:
        assert page.content == b""


def test_the_connection_stays_in_step_after_a_304(client: httpx.Client) -> None:
    """A 304 carries no body: the next answer on the same keep-alive connection reads whole."""
    etag = client.get("/").headers["etag"]
    assert client.get("/", headers={"If-None-Match": etag}).status_code == 304
    assert client.get("/classes").json()
    assert client.get("/").content == (STATIC_DIR / "index.html").read_bytes()
