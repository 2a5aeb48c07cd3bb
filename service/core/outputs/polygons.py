"""Label map → GeoJSON polygons in pixel coordinates: valid OGC geometry whose area is the pixels it covers.

Rings run along pixel *edges* (a pixel (row r, column c) is the square [c, c+1] x [r, r+1]), so
- a region of n pixels is a polygon of area exactly n (a single pixel is the unit square, a one-pixel-wide line a
  thin rectangle: nothing degenerates);
- the geometry is traced on the model-size map of a `LabelMap` and mapped to the upload's size exactly: a model
  pixel's edges land on the edges of the block of output pixels it became, so tracing the small map gives the
  very polygons tracing the full map would, at a tenth of the cost.

How: OpenCV traces borders through pixel centres. On the mask doubled in size (every pixel a 2x2 block) the
border sub-pixel at doubled coordinate p sits next to original pixel edge (p + 1) // 2, so the traced chain
mapped that way visits exactly the pixel-edge corners of the region. Regions are 8-connected (OpenCV's rule);
where two parts of one region touch only at a corner (a ring touches itself, or holes touch the outer ring or
each other there) OGC forbids it: shapely's `make_valid` splits it there into polygons that touch at that
point (each its own feature; `min_area` still judges the region as a whole). Simplification is Douglas-Peucker,
checked: where it would make a ring cross itself or its holes, shapely's topology-preserving variant is used
instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import cv2
import numpy as np
import shapely

from service.core.outputs.labelmap import LabelMap, as_label_map
from service.core.outputs.stats import class_name

# The API's default `min_area` as a fraction of the image: specks below 0.01% of the picture (~79 px at
# 1024x768, under one pixel of a 320 model's map... rounded up to whole pixels) are noise, not objects.
DEFAULT_MIN_AREA_FRACTION = 1e-4

# What one answer may hold, checked on the traced rings before any geometry is built (OpenCV's tracing and a few
# numpy passes: milliseconds), regions too small for `min_area` not counted. A VOC-like model on a 4K photo gives
# a few thousand regions and ~10^5 vertices; per-pixel noise on a 512 model's map gives ~76,000 regions, 17 MB of
# JSON and ~50 s of CPU. Repairing pinched polygons grows faster than their vertices, so the vertices needing it
# have a bound of their own: just under it (38,686 vertices, random specks on a 225 px map) GEOS's default repair
# took 2.9-3.7 CPU-s, its "structure" method, used here, 0.70-0.78 (`python -m bench.polygons_bench`, two runs).
# MAX_POLYGONS bounds the answer's features. Every region gives at least one, so more regions are refused with the
# rest; a region split at its corners gives one per part, known once the repair split it (work MAX_REPAIR_VERTICES
# bounds), so the parts are counted then, before simplification and the JSON. That bound alone let ~10,000 parts
# through beside 10,000 plain regions: a 134x134 checkerboard is one region of 8,978 one-pixel parts.
MAX_POLYGONS = 10_000
MAX_VERTICES = 500_000
MAX_REPAIR_VERTICES = 40_000


class PolygonsTooComplex(ValueError):
    """The polygons of a label map exceed `MAX_POLYGONS`, `MAX_VERTICES` or `MAX_REPAIR_VERTICES`."""


def default_min_area(height: int, width: int) -> float:
    """The `min_area` the API uses when none is given."""
    return float(max(1, math.ceil(DEFAULT_MIN_AREA_FRACTION * height * width)))


def polygons_geojson(
    labels: np.ndarray | LabelMap,
    classes: Sequence[str],
    tolerance: float = 0.0,
    min_area: float = 0.0,
    *,
    include_background: bool = False,
) -> dict[str, Any]:
    """One Feature per connected region of each class, as a FeatureCollection in pixel-edge coordinates.

    - Geometry is a Polygon `[outer, *holes]`; rings are closed and, as RFC 7946 asks, the outer ring is
      counter-clockwise and holes clockwise in the x/y plane of the numbers (x = column, y = row).
    - Every geometry is valid by OGC rules (`shapely.is_valid`); vertices are integers.
    - `tolerance` > 0 simplifies rings (pixels; Douglas-Peucker, topology-preserving where plain DP would make
      a ring invalid). Larger than the image's diagonal means the same as the diagonal.
    - `min_area` fills holes smaller than that and drops regions whose area is then smaller than that: the area
      before simplification, all parts of a region split at corners together (its pixels plus its filled holes).
    - properties: `class_id`, `class_name`, `area` (of the feature's published geometry, holes excluded: its
      pixel count when not simplified; a part of a split region, or a simplified outline, may be below
      `min_area`), `bbox` [x0, y0, x1, y1) of the geometry.
    - class 0 (background) is skipped unless `include_background`.
    """
    if isinstance(labels, np.ndarray) and (labels.ndim != 2 or labels.dtype != np.uint8):
        raise ValueError(f"labels must be a 2-D uint8 array, got {labels.dtype} {labels.shape}")
    if not (tolerance >= 0 and min_area >= 0):  # also refuses NaN
        raise ValueError("tolerance and min_area must be >= 0")
    label_map = as_label_map(labels)
    height, width = label_map.shape
    tolerance = min(float(tolerance), math.hypot(height, width))
    small, edges_x, edges_y = _traceable(label_map)
    class_ids = [c for c in np.flatnonzero(label_map.counts).tolist() if c != 0 or include_background]
    geoms, class_of = _polygons(small, class_ids, edges_x, edges_y, min_area)
    if tolerance > 0 and len(geoms):
        geoms = _simplified(geoms, tolerance)
    names = {class_id: class_name(classes, class_id) for class_id in class_ids}
    return {"type": "FeatureCollection", "features": _features(geoms, class_of.tolist(), names)}


def _traceable(label_map: LabelMap) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The map to trace and, per column/row edge of it, the edge coordinate at the final size."""
    if label_map.identity:
        h, w = label_map.small.shape
        return label_map.small, np.arange(w + 1), np.arange(h + 1)
    small, _, _, row_0, col_0 = label_map.used_lines
    height, width = label_map.shape
    return small, np.append(col_0, width), np.append(row_0, height)


class _Rings(NamedTuple):
    """One class's rings, traced: their corners on the traced map (one array, ring after ring), each ring's
    length, whether it is a hole, and its polygon (0, 1, ... within the class)."""

    corners: np.ndarray
    lengths: list[int]
    holes: list[bool]
    owner: list[int]


def _class_rings(mask: np.ndarray) -> _Rings | None:
    """The rings of one class's mask; None for an empty mask."""
    # Work on the class's bounding box only: small classes then cost little, whatever the image size.
    bx, by, bw, bh = cv2.boundingRect(mask)
    doubled = cv2.resize(mask[by : by + bh, bx : bx + bw], (2 * bw, 2 * bh), interpolation=cv2.INTER_NEAREST)
    # RETR_CCOMP: outer borders on top, their holes as children ([next, previous, first_child, parent]).
    contours, hierarchy = cv2.findContours(doubled, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return None
    links = hierarchy[0].tolist()
    # Rings in polygon order, each shell followed by its holes.
    order: list[int] = []
    owner: list[int] = []
    for i, (_, _, first_child, parent) in enumerate(links):
        if parent != -1:
            continue  # a hole; taken with its parent
        polygon = owner[-1] + 1 if owner else 0
        ring = i
        while ring != -1:
            order.append(ring)
            owner.append(polygon)
            ring = first_child if ring == i else links[ring][0]  # first child, then its siblings
    # Doubled-map chain → corners of the traced map: the border sub-pixel p lies next to pixel edge (p + 1) // 2.
    corners = (np.concatenate([contours[k] for k in order]).reshape(-1, 2) + 1) // 2 + (bx, by)
    return _Rings(corners, [len(contours[k]) for k in order], [links[k][3] != -1 for k in order], owner)


def _polygons(small: np.ndarray, class_ids: list[int], edges_x: np.ndarray, edges_y: np.ndarray,
              min_area: float) -> tuple[np.ndarray, np.ndarray]:
    """The polygons of every class in `class_ids` (an object array, class after class) and the class of each.

    Traced class by class; the rest (corners to final edges, hole areas, shapely's construction) is one
    vectorised pass over the rings of all classes, not one per class: each call has a fixed cost.
    """
    traced = [(class_id, rings) for class_id in class_ids
              if (rings := _class_rings((small == class_id).view(np.uint8))) is not None]
    if not traced:
        return np.empty(0, dtype=object), np.empty(0, dtype=np.int64)
    polygon_class: list[int] = []
    owners: list[int] = []
    for class_id, rings in traced:
        owners.extend(o + len(polygon_class) for o in rings.owner)
        polygon_class.extend([class_id] * (rings.owner[-1] + 1))
    lengths = np.array([n for _, rings in traced for n in rings.lengths])
    is_hole = np.array([h for _, rings in traced for h in rings.holes])
    corners = np.concatenate([rings.corners for _, rings in traced])
    # Consecutive repeats dropped: every ring keeps at least its four extreme corners.
    starts = np.cumsum(lengths) - lengths
    ring_of = np.repeat(np.arange(len(lengths)), lengths)
    prev = np.arange(len(corners)) - 1
    prev[starts] = starts + lengths - 1
    keep = np.any(corners != corners[prev], axis=1)
    corners, ring_of = corners[keep], ring_of[keep]
    coords = np.column_stack((edges_x[corners[:, 0]], edges_y[corners[:, 1]])).astype(np.float64)
    # Shoelace area of every ring; holes smaller than min_area are filled.
    kept = np.bincount(ring_of, minlength=len(lengths))
    first = np.cumsum(kept) - kept
    following = np.arange(len(coords)) + 1
    following[first + kept - 1] = first
    cross = coords[:, 0] * coords[following, 1] - coords[:, 1] * coords[following, 0]
    ring_area = 0.5 * np.abs(np.add.reduceat(cross, first))
    # min_area applies to a region as a whole: the area of its polygon before simplification (outer ring less
    # the holes kept), which is also the sum of the parts a corner-pinched region is split into below. Deciding
    # per part would drop a large region that only touches itself at corners (a diagonal line: parts of one
    # pixel). Regions too small are dropped before they are built and not counted against the bounds.
    owner_arr = np.array(owners)
    kept_hole = is_hole & (ring_area >= min_area)
    region_area = np.bincount(owner_arr, weights=np.where(is_hole, -ring_area * kept_hole, ring_area),
                              minlength=len(polygon_class))
    big = region_area >= min_area
    ring_ok = (~is_hole | kept_hole) & big[owner_arr]
    dense_polygon = np.cumsum(big) - 1
    owner_arr = dense_polygon[owner_arr]
    polygon_class = [c for c, keep in zip(polygon_class, big.tolist(), strict=True) if keep]
    if not polygon_class:
        return np.empty(0, dtype=object), np.empty(0, dtype=np.int64)
    # Pixel-edge rings never cross, but a polygon is pinched where it passes a corner twice: a ring touching
    # itself (a region or a hole joined only at a corner) or two of its rings meeting at a corner (a hole
    # touching the outer ring or another hole, e.g. four pixels around one: the interior is then disconnected).
    # Only those polygons need GEOS's validity repair; the rest skip its (costlier) checks. Filled holes count
    # for nothing.
    on = ring_ok[ring_of]
    polygon_of = owner_arr[ring_of[on]].astype(np.int64)
    key = np.sort(polygon_of << 40 | corners[on, 0].astype(np.int64) << 20 | corners[on, 1])
    pinched = np.zeros(len(polygon_class), dtype=bool)
    pinched[key[1:][key[1:] == key[:-1]] >> 40] = True
    # Every region kept gives at least one feature: more regions than MAX_POLYGONS are refused before any geometry.
    _check_bounds(len(polygon_class), len(polygon_of), int(pinched[polygon_of].sum()), regions=True)
    dense_ring = np.cumsum(ring_ok) - 1
    rings = shapely.linearrings(coords[on], indices=dense_ring[ring_of[on]])
    geoms = shapely.polygons(rings, indices=owner_arr[ring_ok])
    if pinched.any():
        # "structure": shells unioned, holes subtracted, which is what a pixel region is (the default rebuilds
        # every ring's linework). Normalised, the two give the same polygons; normalised, simplifying them does
        # not hang on where a method happened to start each ring.
        geoms[pinched] = shapely.normalize(shapely.make_valid(geoms[pinched], method="structure",
                                                              keep_collapsed=False))
    # A split region gives a MultiPolygon (or a collection): one feature per polygon part, whatever its own area.
    parts, source = shapely.get_parts(geoms, return_index=True)
    chosen = (shapely.get_type_id(parts) == shapely.GeometryType.POLYGON) & (shapely.area(parts) > 0)
    # The answer's features are these parts: counted here, before simplification and the JSON are built.
    _check_bounds(int(np.count_nonzero(chosen)), 0, 0)
    return parts[chosen], np.array(polygon_class)[source[chosen]]


def _check_bounds(polygons: int, vertices: int, repair_vertices: int, *, regions: bool = False) -> None:
    """Raise `PolygonsTooComplex` when an answer would exceed what one may hold: `polygons` is its features, or
    with `regions` its regions (as many features at least)."""
    counted = "regions (a polygon each at least)" if regions else "polygons"
    for count, bound, what, unit in (
        (polygons, MAX_POLYGONS, counted, " polygons"),
        (vertices, MAX_VERTICES, "vertices", ""),
        (repair_vertices, MAX_REPAIR_VERTICES, "vertices in regions that touch themselves", ""),
    ):
        if count > bound:
            raise PolygonsTooComplex(f"the answer would have {count:,} {what} (at most {bound:,}{unit}); a larger "
                                     "min_area drops small regions and fills small holes")


def _simplified(original: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker; a part it makes invalid gets the topology-preserving variant instead (3x slower on a
    whole map, so only where needed), and one that would vanish or stay invalid is kept as it was.

    Both variants only drop vertices, so what they return is on the pixel grid and is published as checked;
    but where DP's ring crosses itself GEOS repairs it with a buffer, which adds vertices off the grid (rounded,
    they can make the ring cross itself again) or splits the polygon. Such a result counts as invalid too."""
    simple = shapely.simplify(original, tolerance, preserve_topology=False)
    coords, index = shapely.get_coordinates(simple, return_index=True)
    bad = np.zeros(len(simple), dtype=bool)
    bad[index[np.any(coords != np.rint(coords), axis=1)]] = True
    bad |= (shapely.get_type_id(simple) != shapely.GeometryType.POLYGON) | _unusable(simple)
    if bad.any():
        # DP collapses a ring to nothing once the tolerance nears its size (a disc of radius 60 at 100); the
        # topology-preserving variant keeps a minimal ring, so a larger tolerance never gives more vertices.
        simple[bad] = shapely.simplify(original[bad], tolerance, preserve_topology=True)
        bad[bad] = _unusable(simple[bad])
    simple[bad] = original[bad]
    return simple


def _unusable(simple: np.ndarray) -> np.ndarray:
    """Simplified parts that cannot stand for their original: invalid, empty, or of no area."""
    return ~shapely.is_valid(simple) | shapely.is_empty(simple) | (shapely.area(simple) <= 0)


def _features(geoms: np.ndarray, class_ids: list[int], names: dict[int, str]) -> list[dict[str, Any]]:
    """GeoJSON Features, numbered in order; `class_ids[i]` is the class of `geoms[i]`."""
    # RFC 7946: outer ring counter-clockwise, holes clockwise, in the x/y plane of the numbers
    polygons = shapely.orient_polygons(geoms, exterior_cw=False)
    areas, bounds = shapely.area(polygons), shapely.bounds(polygons).astype(np.int64).tolist()
    rings, ring_polygon = shapely.get_rings(polygons, return_index=True)  # exterior first, then the holes
    coords, coord_ring = shapely.get_coordinates(rings, return_index=True)
    # One `tolist` for every vertex, then each ring's slice of it.
    points = np.rint(coords).astype(np.int64).tolist()
    ends = np.append(np.flatnonzero(np.diff(coord_ring)) + 1, len(points)).tolist()
    ring_lists = [points[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]
    first_ring = np.searchsorted(ring_polygon, np.arange(len(polygons) + 1)).tolist()
    features = []
    for i, (area, class_id) in enumerate(zip(areas.tolist(), class_ids, strict=True)):
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": ring_lists[first_ring[i] : first_ring[i + 1]]},
            "properties": {
                "class_id": class_id,
                "class_name": names[class_id],
                "area": int(area) if area == int(area) else round(area, 3),
                "bbox": bounds[i],
            },
            "id": i,
        })
    return features
