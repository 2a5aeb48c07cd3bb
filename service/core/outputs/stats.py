"""Per-class statistics of a label map: which classes are present, how much of the image, and where."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from service.core.outputs.labelmap import LabelMap, as_label_map


def class_name(classes: Sequence[str], class_id: int) -> str:
    """The name of `class_id`, or `class_<id>` for an id the model's class list does not cover."""
    return classes[class_id] if 0 <= class_id < len(classes) else f"class_{class_id}"


# calcHist counts in float32, exact below 2**24; np.bincount is exact at any size but first widens every
# pixel to int64 (~6 ms against ~1 ms at 1024x768).
_CALCHIST_EXACT_LIMIT = 1 << 24


def class_counts(labels: np.ndarray) -> np.ndarray:
    """Pixel count (int64) of every id 0..255, in one pass over the map."""
    if labels.dtype != np.uint8:
        raise ValueError(f"labels must be uint8, got {labels.dtype}")
    if labels.size < _CALCHIST_EXACT_LIMIT and labels.ndim == 2:
        hist = cv2.calcHist([np.ascontiguousarray(labels)], [0], None, [256], [0, 256])
        return hist.ravel().astype(np.int64)
    return np.bincount(labels.ravel(), minlength=256)


def classes_present(labels: np.ndarray | LabelMap, classes: Sequence[str]) -> list[str]:
    """Names of the classes with at least one pixel, in class-id order (background included)."""
    counts = labels.counts if isinstance(labels, LabelMap) else class_counts(labels)
    return [class_name(classes, int(i)) for i in np.flatnonzero(counts)]


def class_stats(labels: np.ndarray | LabelMap, classes: Sequence[str]) -> dict[str, Any]:
    """Pixel count, fraction and bounding box of every class present.

    `bbox` is `[x0, y0, x1, y1]` in pixel-edge coordinates: x1/y1 are exclusive, so width = x1 − x0.
    Fractions over all entries sum to 1. A `LabelMap` gives the same numbers as its full-size map, computed
    on the model-size map (~0.2 ms instead of ~3.5 ms at 1024x768).
    """
    if not isinstance(labels, LabelMap) and labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    label_map = as_label_map(labels)
    counts = label_map.counts
    height, width = label_map.shape
    total = height * width
    entries = []
    for class_id in np.flatnonzero(counts):
        class_id = int(class_id)
        entries.append({
            "class_id": class_id,
            "class_name": class_name(classes, class_id),
            "pixels": int(counts[class_id]),
            "fraction": int(counts[class_id]) / total,
            "bbox": label_map.bbox(class_id),
        })
    return {"width": width, "height": height, "total_pixels": total, "classes": entries}
