"""POST /segment?output=polygons on a real server keeps a thin diagonal object that a 320 model sees as a 1-px line:
answered for a 1280x1280 upload, each model pixel is a 4x4 block touching the next at a corner. Before, the default
min_area (164 px) dropped every block on its own and the answer had no feature for a 3,840 px region."""

from __future__ import annotations

import io
from collections.abc import Iterator

import cv2
import numpy as np
import pytest
from PIL import Image

from service.core.outputs.polygons import default_min_area
from tests.service.svc_helpers import LiveServer, png_bytes, rule_model_server
from tests.service_io.region_helpers import check_published, expected_cover, rasterise

SIDE = 1280
MODEL_SIDE = 320
RED = 1  # the rule model's class for red pixels


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with rule_model_server(tmp_path_factory.mktemp("pole"), input_size=MODEL_SIDE) as live:
        yield live


@pytest.fixture(scope="module")
def upload() -> bytes:
    """A dark picture with a red diagonal pole of 4x4 blocks, one per model pixel."""
    image = np.full((SIDE, SIDE, 3), 20, np.uint8)
    for k in range(40, 280):
        image[4 * k : 4 * k + 4, 4 * k : 4 * k + 4] = (230, 30, 30)
    return png_bytes(image)


def segment(server: LiveServer, data: bytes, **params: object) -> object:
    with server.client(timeout=60) as client:
        r = client.post("/segment", params=params, content=data, headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    return r


@pytest.fixture(scope="module")
def pole(server: LiveServer, upload: bytes) -> np.ndarray:
    """The server's own label map of the upload, red pixels: one 8-connected region whose 4-connected parts are
    each smaller than the default min_area (what makes the case)."""
    labels = np.asarray(Image.open(io.BytesIO(segment(server, upload, output="labels").content)))
    mask = labels == RED
    assert labels.shape == (SIDE, SIDE) and mask.sum() == 240 * 16
    assert cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] == 2
    n4, _, sizes, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    assert n4 - 1 == 240 and sizes[1:, cv2.CC_STAT_AREA].max() < default_min_area(SIDE, SIDE)
    return mask


def test_the_pole_is_answered_with_the_api_defaults(server: LiveServer, upload: bytes, pole: np.ndarray) -> None:
    body = segment(server, upload, output="polygons").json()  # tolerance 1, min_area 0.01% of the image
    red = [f for f in body["features"] if f["properties"]["class_id"] == RED]
    check_published(red)
    np.testing.assert_array_equal(rasterise(red, pole.shape), expected_cover(pole, default_min_area(SIDE, SIDE)))
    np.testing.assert_array_equal(rasterise(red, pole.shape), pole)
    stats = segment(server, upload, output="stats").json()
    (red_stats,) = [entry for entry in stats["classes"] if entry["class_id"] == RED]
    assert sum(f["properties"]["area"] for f in red) == red_stats["pixels"] == pole.sum()


@pytest.mark.parametrize("min_area, kept", [(3840, True), (3841, False)])
def test_min_area_keeps_or_drops_the_whole_pole(server: LiveServer, upload: bytes, pole: np.ndarray,
                                                min_area: int, kept: bool) -> None:
    body = segment(server, upload, output="polygons", tolerance=0, min_area=min_area).json()
    red = [f for f in body["features"] if f["properties"]["class_id"] == RED]
    assert len(red) == (240 if kept else 0)
    np.testing.assert_array_equal(rasterise(red, pole.shape), pole if kept else np.zeros_like(pole))
