"""service.client against a real server: every output kind, results by id, and typed error mapping."""

from __future__ import annotations

import asyncio
import inspect
import io
import socket
import typing
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.client import (
    AsyncSegmentClient,
    OverlayFormat,
    ResultName,
    SegmentApiError,
    SegmentClient,
    SegmentConnectionError,
)
from service.client_wire import raise_for_error, retry_sleep
from service.core.output_kinds import DEFAULT_OUTPUT, OUTPUT_KINDS, describe
from tests.clients.conftest import API_KEY


def _palette(client: SegmentClient) -> np.ndarray:
    lut = np.zeros((256, 3), np.uint8)
    for entry in client.classes()["classes"]:
        lut[entry["id"]] = entry["color"]
    return lut


def test_every_output_kind_is_consistent(server_url: str, astronaut: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(path)
    with SegmentClient(server_url) as client:
        names = [c["name"] for c in client.classes()["classes"]]
        labels = client.segment(path, "labels")
        assert labels.media_type == "image/png" and labels.result_id
        ids = labels.array()
        assert ids.shape == astronaut.shape[:2] and ids.dtype == np.uint8
        assert int(ids.max()) < len(names)

        color = client.segment(path, "color").array()
        np.testing.assert_array_equal(color, _palette(client)[ids])

        overlay = client.segment(path, "overlay", alpha=0.5, format="png")
        assert overlay.media_type == "image/png"
        assert overlay.array().shape == astronaut.shape
        jpeg = client.segment(path, "overlay")
        assert jpeg.media_type == "image/jpeg" and jpeg.content[:3] == b"\xff\xd8\xff"

        stats = client.stats(path)
        assert (stats["width"], stats["height"]) == (96, 80)
        counts = np.bincount(ids.ravel(), minlength=256)
        assert {c["class_id"]: c["pixels"] for c in stats["classes"]} == {
            int(i): int(counts[i]) for i in np.flatnonzero(counts)}
        assert stats["classes_present"] == [names[i] for i in np.flatnonzero(counts)]
        assert sum(c["fraction"] for c in stats["classes"]) == pytest.approx(1.0)
        assert "timing_ms" in stats and stats["id"]

        polygons = client.polygons(path, tolerance=1.0)
        assert polygons["type"] == "FeatureCollection"
        drawn = {f["properties"]["class_id"] for f in polygons["features"]}
        assert drawn == {int(i) for i in np.flatnonzero(counts) if i != 0}


def test_inputs_bytes_array_and_path_agree(server_url: str, astronaut: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(astronaut).save(path)
    with SegmentClient(server_url) as client:
        from_path = client.labels(path)
        np.testing.assert_array_equal(client.labels(path.read_bytes()), from_path)
        np.testing.assert_array_equal(client.labels(astronaut), from_path)  # sent as lossless PNG
        np.testing.assert_array_equal(client.labels(str(path)), from_path)


def test_results_by_id_match_the_answer(server_url: str, astronaut: np.ndarray) -> None:
    with SegmentClient(server_url) as client:
        first = client.segment(astronaut, "labels")
        assert first.result_id is not None
        again = Image.open(io.BytesIO(client.result(first.result_id, "labels")))
        np.testing.assert_array_equal(np.asarray(again), first.array())
        color = Image.open(io.BytesIO(client.result(first.result_id, "color"))).convert("RGB")
        np.testing.assert_array_equal(np.asarray(color), _palette(client)[first.array()])
        overlay = Image.open(io.BytesIO(client.result(first.result_id, "overlay")))
        assert overlay.size == (astronaut.shape[1], astronaut.shape[0])
        # alpha 0 draws no class colour: the picture itself, as the service decoded it (a lossless PNG here)
        plain = Image.open(io.BytesIO(client.result(first.result_id, "overlay", alpha=0.0))).convert("RGB")
        np.testing.assert_array_equal(np.asarray(plain), astronaut)


def test_the_async_client_fetches_a_result_at_an_alpha(server_url: str, astronaut: np.ndarray) -> None:
    async def run() -> tuple[bytes, bytes]:
        async with AsyncSegmentClient(server_url) as client:
            first = await client.segment(astronaut, "labels")
            assert first.result_id is not None
            return (await client.result(first.result_id, "overlay", alpha=0.0),
                    await client.result(first.result_id, "overlay"))

    plain, default = asyncio.run(run())
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(plain)).convert("RGB")), astronaut)
    assert plain != default


@pytest.mark.parametrize(("body", "params", "status", "code"), [
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", {}, 415, "unsupported_media_type"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, {}, 400, "corrupt_image"),
    (b"", {}, 400, "empty_body"),
    (None, {"alpha": 2.0}, 422, "invalid_request"),
])
def test_errors_map_to_typed_exception(server_url: str, astronaut: np.ndarray, body: bytes | None,
                                       params: dict[str, float], status: int, code: str) -> None:
    with SegmentClient(server_url) as client, pytest.raises(SegmentApiError) as info:
        client.segment(astronaut if body is None else body, "stats", **params)
    assert (info.value.status, info.value.code) == (status, code)
    assert info.value.message and info.value.request_id


def test_output_table_and_argument_types_follow_the_service(server_url: str, astronaut: np.ndarray) -> None:
    """`outputs()` is the service's table; the result names and overlay formats the client accepts come from it."""
    with SegmentClient(server_url) as client:
        table = client.outputs()
        answer = client.segment(astronaut, "overlay")
        for name in typing.get_args(ResultName):  # every name the type allows is one /results serves
            assert client.result(answer.result_id, name)[:8] == b"\x89PNG\r\n\x1a\n"
        for fmt in typing.get_args(OverlayFormat):
            assert client.segment(astronaut, "overlay", format=fmt).media_type == f"image/{fmt}"
    assert table == describe() and [k["name"] for k in table] == list(OUTPUT_KINDS)
    for method in (SegmentClient.segment, AsyncSegmentClient.segment):  # the service's own default
        assert inspect.signature(method).parameters["output"].default == DEFAULT_OUTPUT
    assert typing.get_args(ResultName) == tuple(k["name"] for k in table if not k["json"])
    (overlay,) = [k for k in table if k["name"] == "overlay"]
    assert typing.get_args(OverlayFormat) == tuple(e["format"] for e in overlay["encodings"]) == ("jpeg", "png")


def test_unknown_result_is_404(server_url: str) -> None:
    with SegmentClient(server_url) as client, pytest.raises(SegmentApiError) as info:
        client.result("does-not-exist", "color")
    assert (info.value.status, info.value.code) == (404, "result_not_found")


def test_api_key_is_sent(keyed_server_url: str, astronaut: np.ndarray) -> None:
    with SegmentClient(keyed_server_url) as anonymous, pytest.raises(SegmentApiError) as info:
        anonymous.segment(astronaut, "stats")
    assert (info.value.status, info.value.code) == (401, "unauthorized")
    with SegmentClient(keyed_server_url, api_key=API_KEY) as client:
        assert client.stats(astronaut)["width"] == 96


def test_unreachable_server_raises_connection_error() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with SegmentClient(f"http://127.0.0.1:{port}", timeout=5) as client, pytest.raises(SegmentConnectionError):
        client.stats(b"\x89PNG")


def test_threads_share_one_client(server_url: str, astronaut: np.ndarray) -> None:
    with SegmentClient(server_url, max_connections=4) as client:
        expected = client.labels(astronaut)
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: client.labels(astronaut), range(8)))
    for labels in answers:
        np.testing.assert_array_equal(labels, expected)


def test_async_client(server_url: str, astronaut: np.ndarray) -> None:
    async def run() -> tuple[list[np.ndarray], dict[str, object], int]:
        async with AsyncSegmentClient(server_url) as client:
            results = await asyncio.gather(*(client.segment(astronaut, "labels") for _ in range(4)))
            classes = await client.classes()
            assert await client.outputs() == describe()
            with pytest.raises(SegmentApiError) as info:
                await client.segment(b"not an image", "labels")
            return [r.array() for r in results], dict(classes), info.value.status

    arrays, classes, status = asyncio.run(run())
    with SegmentClient(server_url) as client:
        expected = client.labels(astronaut)
    for labels in arrays:
        np.testing.assert_array_equal(labels, expected)
    assert classes["classes"] and status == 415


def _busy(retry_after: str) -> httpx.Response:
    return httpx.Response(503, headers={"Retry-After": retry_after},
                          json={"error": {"code": "overloaded", "message": "queue full"}})


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    """RFC 9110 allows delay-seconds or an HTTP date; a negative or past one means no wait, never a crash."""
    requests: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: requests.append(request) or _busy("-1"))
    with SegmentClient("http://segment.test", retries=2, transport=transport) as client, \
            pytest.raises(SegmentApiError) as info:
        client.stats(b"\x89PNG")
    assert (info.value.status, info.value.retry_after, len(requests)) == (503, 0.0, 3)

    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=3), usegmt=True)
    for header, low, high in ((soon, 1.5, 3.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0, 0.0), ("soon", None, None)):
        with pytest.raises(SegmentApiError) as info:
            raise_for_error(_busy(header))
        wait = info.value.retry_after
        assert wait is None if low is None else low <= wait <= high, (header, wait)
    assert retry_sleep(SegmentApiError(503, "overloaded", "queue full", retry_after=-5.0), 0) == 0.0
    # Longer than the cap: not retried (sooner than asked), the error goes to the caller with its retry_after.
    assert retry_sleep(SegmentApiError(503, "overloaded", "queue full", retry_after=3600.0), 0) is None
    assert retry_sleep(SegmentApiError(503, "overloaded", "queue full", retry_after=None), 10) == 5.0  # the cap
