"""`min_area` of `output=polygons` keeps or drops an 8-connected region as a whole. A region whose parts touch only at
corners is published as one polygon per part (OGC forbids the pinch); before, each part was then dropped on its own
area, so a large diagonal object vanished part by part (a 1-px pole of a 320 model at 1280x1280: 3,840 px, no
feature under the API's defaults)."""

from __future__ import annotations

import numpy as np
import pytest

from service.core.letterbox import compute_letterbox
from service.core.outputs.labelmap import LabelMap
from service.core.outputs.polygons import default_min_area, polygons_geojson
from service.core.outputs.stats import class_stats
from tests.service_io.region_helpers import check_published, corner_staircase, expected_cover, rasterise

CLASSES = [f"class{i}" for i in range(8)]


@pytest.mark.parametrize("min_area", [0, 9, 10, 200, 360])
def test_a_region_split_at_corners_is_kept_whole(min_area: float) -> None:
    labels = corner_staircase(blocks=40, side=3)  # 360 px in one region, parts of 9 px
    features = polygons_geojson(labels, CLASSES, tolerance=0, min_area=min_area)["features"]
    check_published(features)
    assert len(features) == 40
    np.testing.assert_array_equal(rasterise(features, labels.shape), labels)  # each pixel once, nothing else
    # `area` is the feature's own polygon: a part may be smaller than min_area, the region they make is not
    assert sum(f["properties"]["area"] for f in features) == int(labels.sum()) == 360


def test_a_region_split_at_corners_is_dropped_whole() -> None:
    labels = corner_staircase(blocks=40, side=3)
    labels[60:80, 0:20] = 2  # another class, large enough, stays
    features = polygons_geojson(labels, CLASSES, tolerance=0, min_area=361)["features"]
    assert [f["properties"]["class_id"] for f in features] == [2]


@pytest.mark.parametrize("tolerance", [0.0, 1.0])
def test_a_thin_diagonal_pole_survives_the_api_defaults(tolerance: float) -> None:
    """The service's path: a 320 model's map answered for a 1280x1280 upload, each model pixel a 4x4 block."""
    model_map = np.zeros((320, 320), np.uint8)
    idx = np.arange(40, 280)
    model_map[idx, idx] = 1
    label_map = LabelMap.from_model(model_map, compute_letterbox(1280, 1280, 320))
    min_area = default_min_area(1280, 1280)
    assert min_area > 16  # one block alone is a speck
    features = polygons_geojson(label_map, ["bg", "pole"], tolerance=tolerance, min_area=min_area)["features"]
    check_published(features)
    (pixels,) = [e["pixels"] for e in class_stats(label_map, ["bg", "pole"])["classes"] if e["class_id"] == 1]
    assert pixels == 3840 and len(features) == 240
    np.testing.assert_array_equal(rasterise(features, label_map.shape), label_map.full == 1)
    assert sum(f["properties"]["area"] for f in features) == pixels


def holed_shapes() -> np.ndarray:
    """Regions whose holes decide: two 3x3 rings touching at a corner (16 px, 18 with their holes filled); a 1-px
    ring around a 5x5 hole (24 px, 49 filled); a 7x7 square with a 3x3 hole and a 2x2 block at its corner (44 px,
    53 filled)."""
    labels = np.zeros((24, 40), np.uint8)
    labels[1:4, 1:4] = labels[4:7, 4:7] = 1
    labels[2, 2] = labels[5, 5] = 0
    labels[10:17, 1:8] = 1
    labels[11:16, 2:7] = 0
    labels[2:9, 12:19] = 1
    labels[4:7, 14:17] = 0
    labels[9:11, 19:21] = 1
    return labels


def test_min_area_counts_the_holes_it_fills() -> None:
    """A region's area is that of its polygon before simplification: holes smaller than min_area (filled) count,
    larger ones (kept) do not; a region split at corners is the sum of its parts."""
    labels = holed_shapes()
    for min_area in range(60):
        features = polygons_geojson(labels, CLASSES, tolerance=0, min_area=min_area)["features"]
        check_published(features)
        count = rasterise(features, labels.shape)
        np.testing.assert_array_equal(count, expected_cover(labels == 1, min_area), err_msg=f"min_area {min_area}")
        assert sum(f["properties"]["area"] for f in features) == count.sum()


def speckled(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Classes 1-3 scattered over a third of the pixels: many regions that touch themselves, and their holes, at
    corners."""
    rng = np.random.default_rng(seed)
    return np.where(rng.random(shape) < 0.35, rng.integers(1, 4, shape), 0).astype(np.uint8)


def as_published(seed: int, upscaled: bool) -> LabelMap | np.ndarray:
    if not upscaled:
        return speckled((48, 56), seed)
    # A model's map taken to an upload's size: blocks of 2 or 3 pixels a side, as the service answers
    return LabelMap.from_model(speckled((40, 40), seed), compute_letterbox(110, 97, 40))


@pytest.mark.parametrize("upscaled", [False, True], ids=["identity", "model-map"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("min_area", [0, 3, 8, 25])
def test_polygons_cover_exactly_the_regions_min_area_keeps(seed: int, upscaled: bool, min_area: float) -> None:
    """Against connected components: each class's polygons cover exactly its 8-connected regions of at least
    min_area (holes smaller than it filled), every pixel at most once."""
    labels = as_published(seed, upscaled)
    full = labels.full if isinstance(labels, LabelMap) else labels
    features = polygons_geojson(labels, CLASSES, tolerance=0, min_area=min_area)["features"]
    check_published(features)
    covered = np.zeros(full.shape, np.int32)
    for class_id in (1, 2, 3):
        mine = [f for f in features if f["properties"]["class_id"] == class_id]
        count = rasterise(mine, full.shape)
        np.testing.assert_array_equal(count, expected_cover(full == class_id, min_area), err_msg=f"class {class_id}")
        assert sum(f["properties"]["area"] for f in mine) == count.sum()
        covered += count
    assert covered.max() <= 1


@pytest.mark.parametrize("seed", [0, 1])
def test_min_area_is_decided_before_simplification(seed: int) -> None:
    """Simplifying changes outlines, not which regions are kept: the same features, each with the area of its
    published polygon."""
    labels = speckled((48, 56), seed)
    exact = polygons_geojson(labels, CLASSES, tolerance=0, min_area=8)["features"]
    simple = polygons_geojson(labels, CLASSES, tolerance=1.5, min_area=8)["features"]
    check_published(simple)
    assert [f["properties"]["class_id"] for f in simple] == [f["properties"]["class_id"] for f in exact]
