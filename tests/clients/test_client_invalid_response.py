"""A success answer whose body is not JSON (a captive portal's or a proxy's HTML page, JSON cut short) raises the
client's own `SegmentResponseError` (code `invalid_response`), not a bare `JSONDecodeError`, from the sync and the
async client alike, and is not sent again. The answers come from a real HTTP server on a loopback port."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from clients.batch import main as batch_main
from service.client import AsyncSegmentClient, SegmentClient, SegmentClientError, SegmentResponseError
from testkit.http_stub import QuietHandler, serving

PORTAL = b"<!doctype html><html><head><title>Sign in to the hotel Wi-Fi</title></head><body>" + b"x" * 400 + b"</html>"
# (what, media type, body): each answered 200 to every request.
NOT_JSON = [
    ("html_page", "text/html; charset=utf-8", PORTAL),
    ("json_cut_short", "application/json", b'{"classes": ["background", "person"'),
    ("not_utf8", "application/json", b'{"classes": ["\xff\xfe"]}'),
    ("empty", "application/json", b""),
]


@dataclass
class Answer:
    """What the fake server answers, and the requests it has seen."""

    media_type: str = "application/json"
    body: bytes = b"{}"
    requests: int = 0
    post: tuple[str, bytes] | None = None  # (media type, body) for POSTs, when they differ from the rest


class Handler(QuietHandler):
    protocol_version = "HTTP/1.1"
    answer: Answer  # set per server

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.answer.requests += 1
        media_type, body = (self.answer.post if self.command == "POST" and self.answer.post
                            else (self.answer.media_type, self.answer.body))
        self.send_response(200)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer


@pytest.fixture
def served() -> Iterator[tuple[str, Answer]]:
    """A real HTTP server on a loopback port answering `Answer`; its URL and the `Answer` to set."""
    answer = Answer()
    with serving(type("Bound", (Handler,), {"answer": answer})) as url:
        yield url, answer


def check(error: SegmentResponseError, media_type: str, body: bytes) -> None:
    assert isinstance(error, SegmentClientError)
    assert error.code == "invalid_response"
    assert error.status == 200
    assert error.media_type == media_type.split(";")[0]
    assert error.body_start == body[:200].decode("utf-8", errors="replace")
    assert len(error.body_start) <= 200


def ask(url: str, call: str, use_async: bool) -> None:
    """`classes()` or `outputs()` of the sync or the async client, with retries that would show."""
    if not use_async:
        with SegmentClient(url, retries=3) as client:
            getattr(client, call)()
        return

    async def asked() -> None:
        async with AsyncSegmentClient(url, retries=3) as client:
            await getattr(client, call)()

    asyncio.run(asked())


@pytest.mark.parametrize("what,media_type,body", NOT_JSON, ids=[n[0] for n in NOT_JSON])
@pytest.mark.parametrize("call", ["classes", "outputs"])
@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_the_clients_raise_invalid_response(served: tuple[str, Answer], call: str, use_async: bool, what: str,
                                            media_type: str, body: bytes) -> None:
    url, answer = served
    answer.media_type, answer.body = media_type, body
    with pytest.raises(SegmentResponseError) as raised:
        ask(url, call, use_async)
    check(raised.value, media_type, body)
    assert answer.requests == 1  # not retried


@pytest.mark.parametrize("what,media_type,body", NOT_JSON, ids=[n[0] for n in NOT_JSON])
def test_segment_result_json_raises_invalid_response(served: tuple[str, Answer], what: str, media_type: str,
                                                     body: bytes) -> None:
    """`stats` is a JSON kind: a body that is not JSON is the answer's fault, whatever its media type."""
    url, answer = served
    answer.media_type, answer.body = media_type, body
    with SegmentClient(url, retries=3) as client:
        result = client.segment(b"\x89PNG\r\n\x1a\n not decoded by this server", "stats")
        with pytest.raises(SegmentResponseError) as raised:
            result.json()
        with pytest.raises(SegmentResponseError):
            client.stats(b"\x89PNG\r\n\x1a\n not decoded by this server")
    check(raised.value, media_type, body)
    assert answer.requests == 2  # one per call, none retried


def test_json_of_an_image_kind_is_still_a_caller_error(served: tuple[str, Answer]) -> None:
    """Asking an image kind for JSON is the caller's mistake, not the answer's: a plain ValueError, as before."""
    url, answer = served
    answer.media_type, answer.body = "image/png", b"\x89PNG\r\n\x1a\n"
    with SegmentClient(url) as client:
        result = client.segment(b"\x89PNG\r\n\x1a\n not decoded by this server", "labels")
    with pytest.raises(ValueError, match="not JSON") as raised:
        result.json()
    assert not isinstance(raised.value, SegmentClientError)


def test_valid_json_still_reads(served: tuple[str, Answer]) -> None:
    url, answer = served
    answer.body = b'{"classes": ["background"], "outputs": []}'
    with SegmentClient(url) as client:
        assert client.classes()["classes"] == ["background"]
        assert client.outputs() == []


@pytest.mark.parametrize("what,media_type,body", [("html_page", "text/html", PORTAL),
                                                  ("png_cut_short", "image/png", b"\x89PNG\r\n\x1a\n\x00\x00")])
def test_an_image_kind_whose_body_is_no_image_raises_invalid_response(served: tuple[str, Answer], what: str,
                                                                       media_type: str, body: bytes) -> None:
    """`labels` is an image kind: a proxy's page or a PNG cut short is the answer's fault too (Pillow's own
    UnidentifiedImageError before), from `image()` and `array()` alike."""
    url, answer = served
    answer.media_type, answer.body = media_type, body
    with SegmentClient(url) as client:
        result = client.segment(b"\x89PNG\r\n\x1a\n not decoded by this server", "labels")
    for read in (result.image, result.array):
        with pytest.raises(SegmentResponseError) as raised:
            read()
        check(raised.value, media_type, body)
        assert "not an image" in str(raised.value)


def test_the_batch_cli_names_the_failure_invalid_response(served: tuple[str, Answer], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The batch CLI reports each client error by its own code, not a generic `client_error`, and stores nothing for
    it: here the server says which model it serves (GET /classes, JSON), and a proxy answers the upload with its
    page, which was stored as `a.png` and counted written."""
    url, answer = served
    answer.body = b'{"classes": ["background", "thing"], "model": "m", "sha256": "0"}'
    answer.post = ("text/html", PORTAL)
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "a.png")
    code = batch_main([str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--server", url, "--output", "labels",
                       "--no-progress", "--wait", "0"])
    assert code == 1
    err = capsys.readouterr().err
    assert "invalid_response" in err and "client_error" not in err, err
    assert not list((tmp_path / "out").glob("a.*")), "a proxy's page stored as the output, to be skipped by reruns"


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_outputs_without_its_list_raises_invalid_response(served: tuple[str, Answer], use_async: bool) -> None:
    """Valid JSON, but not the service's `GET /outputs` (another service at that path): a KeyError before."""
    url, answer = served
    answer.body = b'{"status": "ok"}'
    with pytest.raises(SegmentResponseError, match="not a list of output kinds"):
        ask(url, "outputs", use_async)
