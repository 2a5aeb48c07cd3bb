"""An independent reading of what `output=polygons` should cover, and checks of the published GeoJSON, for the
`min_area` tests: regions come from OpenCV's connected components, not from the contour tracing the polygons use."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import shapely
import shapely.geometry


def corner_staircase(blocks: int, side: int, margin: int = 2) -> np.ndarray:
    """A diagonal staircase of `blocks` squares of `side` pixels (class 1), each touching the next at one corner
    only: one 8-connected region of blocks * side² pixels whose 4-connected parts are side² pixels each."""
    size = blocks * side + 2 * margin
    labels = np.zeros((size, size), np.uint8)
    for k in range(blocks):
        start = margin + k * side
        labels[start : start + side, start : start + side] = 1
    return labels


def expected_cover(mask: np.ndarray, min_area: float) -> np.ndarray:
    """The pixels the polygons of `mask` should cover: every 8-connected region whose area (its pixels plus its
    holes smaller than `min_area`, which are filled) is at least `min_area`, with those holes filled. A hole is a
    4-connected part of the rest that does not reach the image's border."""
    n, regions = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    cover = np.zeros(mask.shape, bool)
    for k in range(1, n):
        region = regions == k
        n_rest, rest = cv2.connectedComponents((~region).astype(np.uint8), connectivity=4)
        border = set(np.concatenate([rest[0], rest[-1], rest[:, 0], rest[:, -1]]).tolist())
        filled = region.copy()
        for j in range(1, n_rest):
            hole = rest == j
            if j not in border and hole.sum() < min_area:
                filled |= hole
        if filled.sum() >= min_area:
            cover |= filled
    return cover


def rasterise(features: list[dict[str, Any]], shape: tuple[int, int]) -> np.ndarray:
    """How many features cover each pixel's centre (rings run along pixel edges), read through shapely."""
    count = np.zeros(shape, np.int32)
    for feature in features:
        geom = shapely.geometry.shape(feature["geometry"])
        # Only the pixels of the geometry's own bounds are tested (read from the coordinates, not from `bbox`).
        x0, y0, x1, y1 = (int(b) for b in geom.bounds)
        ys, xs = np.mgrid[y0:y1, x0:x1]
        count[y0:y1, x0:x1] += shapely.contains_xy(geom, xs + 0.5, ys + 0.5)
    return count


def check_published(features: list[dict[str, Any]]) -> None:
    """The guarantees every feature keeps: a valid Polygon with integer vertices, closed rings, the outer ring
    counter-clockwise and holes clockwise, and `area`/`bbox` those of the published coordinates."""
    for feature in features:
        assert feature["geometry"]["type"] == "Polygon"
        rings = feature["geometry"]["coordinates"]
        assert rings and all(len(ring) >= 4 and ring[0] == ring[-1] for ring in rings)
        assert all(type(v) is int for ring in rings for point in ring for v in point)
        geom = shapely.geometry.shape(feature["geometry"])
        assert geom.is_valid, shapely.is_valid_reason(geom)
        assert shapely.is_ccw(geom.exterior) and not any(shapely.is_ccw(hole) for hole in geom.interiors)
        assert feature["properties"]["area"] == geom.area > 0
        assert feature["properties"]["bbox"] == [int(b) for b in geom.bounds]
