"""One output dispatch for `POST /segment`, `GET /results/...` and the batch CLI's local mode."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.contract import ModelMetadata
from service.outputs.labelmap import LabelMap, as_label_map
from service.outputs.masks import encode_color_png, encode_labels_png, encode_overlay
from service.outputs.polygons import default_min_area, polygons_geojson
from service.outputs.stats import class_stats, classes_present

OUTPUTS: tuple[str, ...] = ("labels", "color", "overlay", "polygons", "stats")
_IMAGE_MEDIA = {"png": "image/png", "jpeg": "image/jpeg"}
JPEG_MAX_SIDE = 65500  # libjpeg's JPEG_MAX_DIMENSION


def render_output(kind: str, image: np.ndarray | None, labels: np.ndarray | LabelMap, meta: ModelMetadata,
                  header: dict[str, Any] | None = None, *, alpha: float = 0.5, fmt: str = "jpeg",
                  tolerance: float = 1.0, min_area: float | None = None) -> tuple[bytes | dict[str, Any], str]:
    """Body and media type of output `kind` for a label map at the image's size.

    `image` (the upload at full size) is needed only for `overlay`. JSON outputs get `width`, `height`,
    `classes_present` plus the caller's `header` fields (id, model). `labels` is the map at the image's size,
    or a `LabelMap` (the model's map and its way back to that size), which the labels PNG, the statistics and
    the polygons use without materialising the full map. An overlay asked for as JPEG comes as PNG when a side
    exceeds what JPEG can hold (the media type returned says which). `min_area` None: 0.01% of the image.
    """
    label_map = as_label_map(labels)
    if kind == "labels":
        return encode_labels_png(label_map, meta.palette), "image/png"
    if kind == "color":
        return encode_color_png(label_map.full, meta.palette), "image/png"
    if kind == "overlay":
        if image is None:
            raise ValueError("an overlay needs the image")
        if fmt == "jpeg" and max(image.shape[:2]) > JPEG_MAX_SIDE:
            fmt = "png"  # JPEG cannot store a side beyond 65,500 px; PNG can, and says so in Content-Type
        return encode_overlay(image, label_map.full, meta.palette, alpha, fmt), _IMAGE_MEDIA[fmt]
    if kind not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {kind!r}")
    height, width = label_map.shape
    fields: dict[str, Any] = {
        **(header or {}), "width": width, "height": height,
        "classes_present": classes_present(label_map, meta.classes),
    }
    if kind == "polygons":
        # A GeoJSON FeatureCollection at the top level (foreign members are allowed), so GIS tools read it.
        if min_area is None:  # specks below 0.01% of the image are noise
            min_area = default_min_area(height, width)
        geojson = polygons_geojson(label_map, meta.classes, tolerance, min_area)
        return {**geojson, **fields}, "application/geo+json"
    return {**class_stats(label_map, meta.classes), **fields}, "application/json"
