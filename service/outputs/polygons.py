"""Label map → GeoJSON-like polygons in pixel coordinates, holes included (OpenCV contours)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from service.outputs.stats import class_counts, class_name


def polygons_geojson(
    labels: np.ndarray,
    classes: Sequence[str],
    tolerance: float = 0.0,
    min_area: float = 0.0,
    *,
    include_background: bool = False,
) -> dict[str, Any]:
    """One Feature per 8-connected region of each class, as a FeatureCollection in pixel coordinates.

    - Geometry is a Polygon `[outer, *holes]`; rings are closed (first point repeated) and, as RFC 7946 asks,
      the outer ring is counter-clockwise and holes clockwise in the x/y plane of the numbers.
    - Vertices are pixel centres (x = column, y = row) on the region's boundary pixels, so filling the rings
      with `cv2.fillPoly` redraws the region.
    - `tolerance` > 0 simplifies rings with Douglas-Peucker (`cv2.approxPolyDP`, in pixels).
    - `min_area` drops regions with fewer pixels than that, and holes whose polygon area is below it.
    - properties: `class_id`, `class_name`, `area` (pixels of the region, holes excluded), `bbox` [x0,y0,x1,y1)
    - class 0 (background) is skipped unless `include_background`.
    """
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"labels must be a 2-D uint8 array, got {labels.dtype} {labels.shape}")
    if tolerance < 0 or min_area < 0:
        raise ValueError("tolerance and min_area must be >= 0")
    features: list[dict[str, Any]] = []
    for class_id in np.flatnonzero(class_counts(labels)):
        class_id = int(class_id)
        if class_id == 0 and not include_background:
            continue
        mask = (labels == class_id).view(np.uint8)
        features.extend(_class_features(mask, class_id, class_name(classes, class_id), tolerance, min_area))
    for i, feature in enumerate(features):
        feature["id"] = i
    return {"type": "FeatureCollection", "features": features}


def _class_features(
    mask: np.ndarray, class_id: int, name: str, tolerance: float, min_area: float
) -> list[dict[str, Any]]:
    # Work on the class's bounding box only: small classes then cost little, whatever the image size.
    bx, by, bw, bh = cv2.boundingRect(mask)
    crop = np.ascontiguousarray(mask[by : by + bh, bx : bx + bw])
    # RETR_CCOMP: a two-level hierarchy, outer boundaries on top, their holes as children; an island inside a
    # hole is again a top-level outer. hierarchy rows are [next, previous, first_child, parent].
    contours, hierarchy = cv2.findContours(crop, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE, offset=(bx, by))
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]
    # Pixel counts per region. Every 8-connected region has exactly one outer contour, so the outer count
    # bounds the component labels; 16-bit labels run ~3x faster than 32-bit when they fit.
    n_outer = int(np.count_nonzero(hierarchy[:, 3] == -1))
    ltype = cv2.CV_16U if n_outer < 65535 else cv2.CV_32S
    _, components, comp_stats, _ = cv2.connectedComponentsWithStats(crop, connectivity=8, ltype=ltype)
    features = []
    for i, contour in enumerate(contours):
        if hierarchy[i][3] != -1:
            continue  # a hole; handled with its parent
        x, y = contour[0, 0]
        comp = components[y - by, x - bx]  # an outer contour's points are pixels of its region
        area = int(comp_stats[comp, cv2.CC_STAT_AREA])
        if area < min_area:
            continue
        outer = _ring(contour, tolerance, ccw=True)
        if outer is None:
            # a single pixel or a one-pixel-wide line: keep it as a degenerate but valid box around the pixels
            outer = _bbox_ring(comp_stats[comp], bx, by)
        rings = [outer]
        child = hierarchy[i][2]
        while child != -1:
            hole = contours[child]
            if cv2.contourArea(hole) >= min_area:
                ring = _ring(hole, tolerance, ccw=False)
                if ring is not None:
                    rings.append(ring)
            child = hierarchy[child][0]
        left, top, width, height = (int(comp_stats[comp, k]) for k in range(4))
        left, top = left + bx, top + by
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": rings},
            "properties": {
                "class_id": class_id,
                "class_name": name,
                "area": area,
                "bbox": [left, top, left + width, top + height],
            },
        })
    return features


def _ring(contour: np.ndarray, tolerance: float, *, ccw: bool) -> list[list[int]] | None:
    """A closed GeoJSON ring from a contour, or None when it has fewer than 3 distinct vertices."""
    if tolerance > 0:
        contour = cv2.approxPolyDP(contour, tolerance, closed=True)
    points = contour.reshape(-1, 2)
    if len(points) < 3:
        return None
    # Shoelace sign in the numeric x/y plane: positive means counter-clockwise.
    if (cv2.contourArea(points, oriented=True) > 0) != ccw:
        points = points[::-1]
    ring = points.tolist()
    ring.append(ring[0])
    return ring


def _bbox_ring(stats_row: np.ndarray, dx: int, dy: int) -> list[list[int]]:
    """The rectangle through the outermost pixel centres of a region too thin to have a polygon area."""
    x0, y0 = int(stats_row[cv2.CC_STAT_LEFT]) + dx, int(stats_row[cv2.CC_STAT_TOP]) + dy
    x1 = x0 + int(stats_row[cv2.CC_STAT_WIDTH]) - 1
    y1 = y0 + int(stats_row[cv2.CC_STAT_HEIGHT]) - 1
    # counter-clockwise in the numeric plane: (x0,y0) → (x1,y0) → (x1,y1) → (x0,y1)
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
