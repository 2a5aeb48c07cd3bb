"""LabelMap: statistics and the labels PNG from the model-size map equal those of the materialised full map."""

from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pytest
import shapely
import shapely.geometry
from PIL import Image

from service.core.letterbox import compute_letterbox, unletterbox
from service.core.outputs import class_stats, encode_labels_png
from service.core.outputs.labelmap import LabelMap, nearest_index
from service.core.outputs.masks import colorize, colour_map, encode_color_png, encode_overlay
from service.core.outputs.png import bit_depth, pack_rows
from service.core.outputs.polygons import polygons_geojson
from tests.service_io.labelmap_helpers import model_output

VOC = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128), (0, 128, 128)]
CLASSES = [f"c{i}" for i in range(len(VOC))]

# (original h, w, letterbox size): enlarging, shrinking (small uploads), exact, odd ratios, one-pixel sides.
GEOMETRIES = [(768, 1024, 320), (1024, 768, 320), (480, 640, 320), (37, 100, 320), (320, 320, 320),
              (333, 517, 96), (5, 700, 64), (700, 1, 64), (1, 1, 32), (2000, 3, 257)]


@pytest.mark.parametrize(("h", "w", "size"), GEOMETRIES)
@pytest.mark.parametrize("seed", [0, 1])
def test_label_map_matches_the_full_map(h: int, w: int, size: int, seed: int) -> None:
    info = compute_letterbox(h, w, size)
    raw = model_output(size, seed)
    full = unletterbox(raw, info)
    lmap = LabelMap.from_model(raw, info)
    assert lmap.shape == (h, w)
    np.testing.assert_array_equal(lmap.full, full)
    np.testing.assert_array_equal(lmap.counts, np.bincount(full.ravel(), minlength=256))
    assert lmap.max_id == full.max()
    # statistics: the same JSON, byte for byte
    assert json.dumps(class_stats(lmap, CLASSES)) == json.dumps(class_stats(full, CLASSES))
    # the PNG decodes to the same class ids
    png = Image.open(io.BytesIO(encode_labels_png(lmap, VOC)))
    assert png.mode == "P"
    np.testing.assert_array_equal(np.asarray(png), full)
    # colours come from the smaller map and are resized: the same bytes as colouring the full map
    np.testing.assert_array_equal(colour_map(lmap, VOC), colorize(full, VOC))
    colour_png = encode_color_png(lmap, VOC)
    assert colour_png == encode_color_png(full, VOC)
    decoded = Image.open(io.BytesIO(colour_png))
    assert decoded.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(decoded), colorize(full, VOC))
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    assert encode_overlay(image, lmap, VOC, 0.4, "png") == encode_overlay(image, full, VOC, 0.4, "png")


def test_nearest_index_is_what_cv2_does() -> None:
    rng = np.random.default_rng(3)
    for src, dst in [(240, 768), (320, 1024), (320, 100), (7, 3), (3, 7), (1, 9), (9, 1), (257, 65500)]:
        row = rng.integers(0, 255, (1, src), dtype=np.uint8)
        expected = cv2.resize(row, (dst, 1), interpolation=cv2.INTER_NEAREST_EXACT)[0]
        np.testing.assert_array_equal(row[0, nearest_index(src, dst)], expected)


def test_plain_arrays_still_work_and_the_palette_png_follows_pillow_bit_depths() -> None:
    labels = model_output(50, 4, n_classes=7)[:, :37]
    for n in (1, 2, 3, 5, 7):
        png = encode_labels_png(np.minimum(labels, n - 1), VOC[:n])
        img = Image.open(io.BytesIO(png))
        assert png[24] == bit_depth(n)
        np.testing.assert_array_equal(np.asarray(img), np.minimum(labels, n - 1))
        assert img.getpalette()[: 3 * n] == [c for rgb in VOC[:n] for c in rgb]


def test_ids_beyond_the_palette_widen_the_plte() -> None:
    labels = np.array([[0, 1], [200, 3]], np.uint8)
    img = Image.open(io.BytesIO(encode_labels_png(labels, VOC[:4])))
    np.testing.assert_array_equal(np.asarray(img), labels)
    assert len(img.getpalette()) == 3 * 201


def test_pack_rows_layout() -> None:
    values = np.array([[1, 0, 1, 1, 0, 0, 0, 1, 1]], np.uint8)
    np.testing.assert_array_equal(pack_rows(values, 1), [[0b10110001, 0b10000000]])
    np.testing.assert_array_equal(pack_rows(np.array([[3, 1, 2]], np.uint8), 2), [[0b11011000]])
    np.testing.assert_array_equal(pack_rows(np.array([[15, 1, 7]], np.uint8), 4), [[0xF1, 0x70]])


def test_from_model_does_not_keep_the_batch_output_alive() -> None:
    raw = model_output(64, 5)
    lmap = LabelMap.from_model(raw, compute_letterbox(100, 50, 64))
    assert lmap.small.base is None and lmap.nbytes < raw.nbytes


@pytest.mark.parametrize(("h", "w", "size"), GEOMETRIES)
@pytest.mark.parametrize("tolerance", [0.0, 1.5])
def test_polygons_from_the_model_map_equal_those_of_the_full_map(h: int, w: int, size: int,
                                                                 tolerance: float) -> None:
    info = compute_letterbox(h, w, size)
    raw = model_output(size, 11, n_classes=7)
    full = unletterbox(raw, info)
    small_fc = polygons_geojson(LabelMap.from_model(raw, info), CLASSES, tolerance)
    assert json.dumps(small_fc) == json.dumps(polygons_geojson(full, CLASSES, tolerance))
    for feature in small_fc["features"]:
        geom = shapely.geometry.shape(feature["geometry"])
        assert geom.is_valid, shapely.is_valid_reason(geom)
        assert feature["properties"]["area"] == pytest.approx(geom.area, abs=1e-3)
    if tolerance == 0:  # pixel-edge rings: the areas are the pixel counts
        for class_id in range(1, 7):
            area = sum(f["properties"]["area"] for f in small_fc["features"]
                       if f["properties"]["class_id"] == class_id)
            assert area == int((full == class_id).sum())


def test_regions_touching_at_a_corner_become_valid_polygons() -> None:
    labels = np.zeros((6, 6), np.uint8)
    labels[1:3, 1:3] = 1  # two squares joined only at the corner (3, 3): a self-touching ring
    labels[3:5, 3:5] = 1
    labels[0, 5] = 2  # one pixel: the unit square, area 1
    ring = np.zeros((7, 7), np.uint8)
    ring[1:6, 1:6] = 3  # a ring whose hole touches the outside only diagonally
    ring[2:5, 2:5] = 0
    ring[5, 5] = 0
    ring[4, 4] = 3
    for case in (labels, ring):
        fc = polygons_geojson(case, CLASSES)
        for feature in fc["features"]:
            geom = shapely.geometry.shape(feature["geometry"])
            assert geom.is_valid, shapely.is_valid_reason(geom)
            assert feature["properties"]["area"] == geom.area
        for class_id in np.unique(case)[1:]:
            feats = [f for f in fc["features"] if f["properties"]["class_id"] == class_id]
            assert sum(f["properties"]["area"] for f in feats) == (case == class_id).sum()
    pieces = [f for f in polygons_geojson(labels, CLASSES)["features"] if f["properties"]["class_id"] == 1]
    assert sorted(f["properties"]["area"] for f in pieces) == [4, 4]


@pytest.mark.parametrize(("h", "w"), [(150, 200), (768, 1024)])
def test_the_results_cache_keeps_the_smaller_form(h: int, w: int) -> None:
    """A small upload seen by a large model is kept at its own size, a large one at the model's."""
    from service.results_cache import ResultsCache

    info = compute_letterbox(h, w, 513)
    model_map = np.random.default_rng(0).integers(0, 5, (513, 513), dtype=np.uint8)
    label_map = LabelMap.from_model(model_map, info)
    cache = ResultsCache(60, 10 * 2**20)
    assert cache.put("r", label_map, b"upload")
    stored = cache.get("r").labels
    np.testing.assert_array_equal(stored.full, unletterbox(model_map, info))
    assert stored.nbytes <= label_map.nbytes and stored.small.size == min(h * w, info.new_h * info.new_w)
    assert cache.nbytes == stored.nbytes + len(b"upload")
