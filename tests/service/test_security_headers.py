"""Hardening headers on a real server: `nosniff` on every kind of answer (JSON, refusals, images), a strict
Content-Security-Policy and a framing ban on the web page, and the framing ban on the API docs."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.security_headers import PAGE_POLICY
from testkit.server import ServerProcess
from tests.service.svc_helpers import png_bytes, running_server, scene

KEY = "headers-test-key"


@pytest.fixture(scope="module")
def base(rule_model: Path) -> Iterator[str]:
    with running_server(rule_model, api_keys=[KEY], max_upload_bytes=1 << 20) as url:
        yield url


@pytest.fixture(scope="module")
def served(rule_model: Path) -> Iterator[ServerProcess]:
    with ServerProcess(rule_model) as server:
        server.wait_ready(60)
        yield server


def directives(policy: str) -> dict[str, str]:
    """A Content-Security-Policy as {directive: its sources}."""
    pairs = (part.strip().partition(" ") for part in policy.split(";") if part.strip())
    return {name: sources.strip() for name, _, sources in pairs}


def test_every_kind_of_answer_is_nosniff(base: str) -> None:
    with httpx.Client(base_url=base, timeout=60) as client:
        made = client.post("/segment", params={"output": "labels"}, content=png_bytes(scene()),
                           headers={"content-type": "image/png", "X-API-Key": KEY})
        answers = {
            "200 JSON": client.get("/classes", headers={"X-API-Key": KEY}),
            "401": client.get("/classes"),
            "404 route": client.get("/no-such-route", headers={"X-API-Key": KEY}),
            "404 result": client.get(f"/results/{'x' * 22}/labels.png", headers={"X-API-Key": KEY}),
            "413": client.post("/segment", content=b"\0" * (2 << 20),
                               headers={"content-type": "image/png", "X-API-Key": KEY}),
            "PNG from /segment": made,
            "PNG from /results": client.get(f"/results/{made.headers['X-Result-ID']}/overlay.png",
                                            headers={"X-API-Key": KEY}),
            "HEAD": client.head("/outputs"),
        }
    statuses = {name: r.status_code for name, r in answers.items()}
    assert statuses == {"200 JSON": 200, "401": 401, "404 route": 404, "404 result": 404, "413": 413,
                        "PNG from /segment": 200, "PNG from /results": 200, "HEAD": 200}
    assert answers["PNG from /results"].headers["content-type"] == "image/png"
    missing = [name for name, r in answers.items() if r.headers.get("x-content-type-options") != "nosniff"]
    assert missing == []
    # The API's answers are not pages: no page policy on them.
    assert "content-security-policy" not in answers["200 JSON"].headers


BIG_HEAD = b"GET /classes HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"  # 431


@pytest.mark.parametrize("request_bytes", [b"GARBAGE\r\n\r\n", BIG_HEAD])  # 400: no request line to parse
def test_the_http_layer_refusals_are_nosniff_too(served: ServerProcess, request_bytes: bytes) -> None:
    """Refused before any app runs (service/http_refusals.py), by a real `segment-serve` (its HTTP protocol), on a
    raw socket: nosniff all the same."""
    url = httpx.URL(served.url)
    with socket.create_connection((url.host, url.port), timeout=10) as sock:
        sock.sendall(request_bytes)
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    head = answer.split(b"\r\n\r\n")[0].decode("latin-1").lower()
    assert head.split(" ")[1] in ("400", "431"), head
    assert "\r\nx-content-type-options: nosniff" in head, head


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/static/style.css"])
def test_the_page_has_a_strict_policy_and_cannot_be_framed(base: str, path: str) -> None:
    r = httpx.get(base + path, timeout=30)
    assert r.status_code == 200
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["content-security-policy"] == PAGE_POLICY
    policy = directives(r.headers["content-security-policy"])
    assert policy["frame-ancestors"] == "'none'"
    assert policy["default-src"] == policy["script-src"] == policy["connect-src"] == "'self'"
    assert "'unsafe-inline'" not in r.headers["content-security-policy"]


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect"])
def test_the_docs_cannot_be_framed(base: str, path: str) -> None:
    r = httpx.get(base + path, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert directives(r.headers["content-security-policy"]) == {"frame-ancestors": "'none'"}
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"
