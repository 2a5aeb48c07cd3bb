"""`output=polygons` bounds the polygons the answer holds (its features), not only its regions: a region whose parts
touch only at corners is one feature per part, so a checkerboard, one 8-connected region, answered one polygon per
square beside up to 10,000 other regions (18,003 features, 4 MB, for a 512 upload with 9,026 regions)."""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
import pytest

from service.core.outputs.polygons import MAX_POLYGONS
from tests.service.svc_helpers import LiveServer, png_bytes, rule_model_server

SIDE = 512  # the model's input size: one model pixel per upload pixel
RED, GREEN = (220, 30, 30), (30, 200, 40)  # the rule model's classes 1 and 2
BOARD = 134  # a BOARD x BOARD checkerboard of red squares: one region, 8,978 one-pixel parts


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with rule_model_server(tmp_path_factory.mktemp("features"), input_size=SIDE) as live:
        yield live


def board_and_dots(dots: int) -> np.ndarray:
    """A red checkerboard in the top-left corner and `dots` green pixels, each its own region, two apart
    below it."""
    img = np.zeros((SIDE, SIDE, 3), np.uint8)
    yy, xx = np.mgrid[:BOARD, :BOARD]
    img[:BOARD, :BOARD][(yy + xx) % 2 == 0] = RED
    rows, cols = np.divmod(np.arange(dots), SIDE // 2)
    img[BOARD + 2 + 2 * rows, 2 * cols] = GREEN
    return img


def parts_and_regions(img: np.ndarray) -> tuple[int, int]:
    """Edge-connected parts (one polygon each) and 8-connected regions of the red and the green pixels: the rule
    model's classes 1 and 2, pixel for pixel."""
    parts = regions = 0
    for channel in (0, 1):
        mask = (img[..., channel] > 128).astype(np.uint8)
        parts += cv2.connectedComponents(mask, connectivity=4)[0] - 1
        regions += cv2.connectedComponents(mask, connectivity=8)[0] - 1
    return parts, regions


def segment(server: LiveServer, img: np.ndarray) -> object:
    with server.client(timeout=120) as client:
        return client.post("/segment", params={"output": "polygons", "tolerance": 0, "min_area": 0},
                           content=png_bytes(img), headers={"Content-Type": "image/png"})


def test_the_bound_counts_polygons_not_regions(server: LiveServer) -> None:
    board_parts = parts_and_regions(board_and_dots(0))[0]
    at_bound = board_and_dots(MAX_POLYGONS - board_parts)
    over = board_and_dots(MAX_POLYGONS - board_parts + 1)
    parts, regions = parts_and_regions(over)
    assert parts == MAX_POLYGONS + 1 and regions < MAX_POLYGONS // 2  # within the region count by far

    r = segment(server, at_bound)
    assert r.status_code == 200, r.text
    features = r.json()["features"]
    assert len(features) == MAX_POLYGONS
    assert sum(f["properties"]["class_id"] == 1 for f in features) == board_parts
    assert {f["properties"]["area"] for f in features} == {1}

    r = segment(server, over)
    assert r.status_code == 422, (r.status_code, len(r.content))
    error = r.json()["error"]
    assert error["code"] == "output_too_complex"
    assert f"{MAX_POLYGONS + 1:,} polygons" in error["message"] and "min_area" in error["message"]
