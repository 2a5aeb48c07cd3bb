"""The client's checks of what it is given, against a real server: an OpenCV-encoded frame is sent as the file it
holds (it was sent as a 27538 x 1 grey picture and segmented silently), other non-image arrays are refused before
anything is sent, a result id cannot reach another route, and a bad API key or a server URL without a scheme is
refused when the client is made (a bare UnicodeEncodeError; a 30 s readiness wait)."""

from __future__ import annotations

import asyncio
import time

import cv2
import httpx
import numpy as np
import pytest

from service.client import AsyncSegmentClient, SegmentApiError, SegmentClient, SegmentClientError


def test_an_opencv_encoded_frame_is_sent_as_its_file(server_url: str, astronaut: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    assert ok and encoded.dtype == np.uint8
    with SegmentClient(server_url) as client:
        expected = client.labels(encoded.tobytes())
        assert expected.shape == astronaut.shape[:2]
        # 1-D, as OpenCV 4.x returns it, and N x 1, as older versions do: the same file, the same answer.
        for buffer in (encoded.reshape(-1), encoded.reshape(-1, 1)):
            np.testing.assert_array_equal(client.labels(buffer), expected)
        # An N x 1 array that does not start as an image file does is still a picture one pixel wide.
        stats = client.stats(np.full((30, 1), 7, np.uint8))
        assert (stats["width"], stats["height"]) == (1, 30)


@pytest.mark.parametrize("array", [
    np.zeros((2, 40, 50, 3), np.uint8),  # a batch of images
    np.zeros((40, 50, 5), np.uint8),  # five channels
    np.zeros(100, np.float32),  # 1-D but not bytes
    np.zeros((0, 50, 3), np.uint8),  # empty
    np.zeros((40, 50, 3), np.float32),  # no PNG holds float pixels
], ids=["batch", "5-channels", "1d-float", "empty", "float"])
def test_an_array_that_is_no_image_is_refused_before_sending(array: np.ndarray) -> None:
    sent: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: sent.append(request) or httpx.Response(200))
    with SegmentClient("http://segment.test", transport=transport) as client, \
            pytest.raises(ValueError, match=r"image|empty") as info:
        client.segment(array, "labels")
    assert str(array.shape) in str(info.value) and sent == []


def test_a_result_id_reaches_only_the_results_route(server_url: str) -> None:
    with SegmentClient(server_url) as client:
        with pytest.raises(SegmentApiError) as info:  # it answered /classes' JSON as if it were the PNG
            client.result("../../classes?x=", "labels")
        assert info.value.status == 404
        with pytest.raises(SegmentApiError) as info:  # ".." removed "/results" from the path: 404 `not_found`
            client.result("..", "labels")
        assert (info.value.status, info.value.code) == (404, "result_not_found")
        with pytest.raises(ValueError, match="empty"):
            client.result("", "labels")


def test_the_async_client_escapes_result_ids_too(server_url: str) -> None:
    async def run() -> SegmentApiError:
        async with AsyncSegmentClient(server_url) as client:
            with pytest.raises(SegmentApiError) as info:
                await client.result("../../classes?x=", "labels")
            return info.value

    assert asyncio.run(run()).status == 404


@pytest.mark.parametrize("client_class", [SegmentClient, AsyncSegmentClient])
@pytest.mark.parametrize("key", ["clé-s3cr3t", "s3cr3t\r\nX-Other: 1", " s3cr3t"])
def test_an_api_key_no_header_can_carry_is_refused_at_once(client_class: type, key: str) -> None:
    with pytest.raises(SegmentClientError, match="API key must be printable ASCII") as info:
        client_class("http://127.0.0.1:1", api_key=key)
    assert key not in str(info.value)  # a secret is not printed


@pytest.mark.parametrize("client_class", [SegmentClient, AsyncSegmentClient])
@pytest.mark.parametrize("url", ["127.0.0.1:8937", "localhost:8000", "ftp://example.com", "http://", "http:/x"])
def test_a_server_url_without_http_is_refused_at_once(client_class: type, url: str) -> None:
    started = time.monotonic()
    with pytest.raises(SegmentClientError, match=r"must start with http:// or https://"):
        client_class(url)
    assert time.monotonic() - started < 1.0


def test_a_bare_host_and_port_is_told_its_fix(server_url: str) -> None:
    bare = server_url.removeprefix("http://")
    with pytest.raises(SegmentClientError) as info:
        SegmentClient(bare)
    assert f"(http://{bare}?)" in str(info.value)
    with SegmentClient(f"HTTP://{bare}/") as client:  # a scheme in capitals and a trailing slash are fine
        assert client.ready(timeout=10)
