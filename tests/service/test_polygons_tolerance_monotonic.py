"""`&tolerance=` simplifies: a larger tolerance never gives back an outline less simplified than a small one did.
Douglas-Peucker collapses a ring to nothing once the tolerance nears its size, and such a ring used to be given back
unsimplified (a disc of radius 60: 5 vertices at tolerance 60, all 277 at 100). The answer's vertices fall as the
tolerance grows; one polygon's may rise by a few where the topology-preserving variant stands in for a collapsed
ring. Real label maps through `polygons_geojson`."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from service.core.outputs.polygons import polygons_geojson

TOLERANCES = [0, 1, 5, 20, 40, 60, 100, 1000]


def disc() -> np.ndarray:
    yy, xx = np.mgrid[:200, :200]
    return ((yy - 100) ** 2 + (xx - 100) ** 2 < 60 ** 2).astype(np.uint8)


def blobs() -> np.ndarray:
    """Three classes of blobs of many sizes, some with holes, on a 240x180 map."""
    rng = np.random.default_rng(3)
    labels = np.zeros((180, 240), np.uint8)
    yy, xx = np.mgrid[:180, :240]
    for _ in range(25):
        cy, cx, r = rng.integers(0, 180), rng.integers(0, 240), rng.integers(3, 50)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = rng.integers(0, 4)
    return labels


def vertices(collection: dict) -> list[int]:
    return [sum(len(ring) for ring in f["geometry"]["coordinates"]) for f in collection["features"]]


@pytest.mark.parametrize("labels", [disc(), blobs()], ids=["disc", "blobs"])
def test_a_larger_tolerance_never_gives_back_the_outline(labels: np.ndarray) -> None:
    names = ["background", "a", "b", "c"]
    answers = [polygons_geojson(labels, names, tolerance=t, min_area=0) for t in TOLERANCES]
    counts = [vertices(answer) for answer in answers]
    assert all(len(c) == len(counts[0]) for c in counts)  # the same features, each simplified
    totals = [sum(c) for c in counts]
    assert totals == sorted(totals, reverse=True) and totals[-1] < totals[1] < totals[0], totals
    slight = counts[1]  # tolerance 1: every polygon already simplified
    for tolerance, larger in zip(TOLERANCES[2:], counts[2:], strict=True):
        assert all(b <= a for a, b in zip(slight, larger, strict=True)), (tolerance, slight, larger)
    for answer in answers:
        for feature in answer["features"]:
            polygon = shapely.geometry.shape(feature["geometry"])
            assert polygon.is_valid and polygon.area > 0
