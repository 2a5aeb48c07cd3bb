"""One output dispatch for `POST /segment`, `GET /results/...` and the batch CLI's local mode."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.contract import ModelMetadata
from service.outputs.masks import encode_color_png, encode_labels_png, encode_overlay
from service.outputs.polygons import polygons_geojson
from service.outputs.stats import class_stats, classes_present

OUTPUTS: tuple[str, ...] = ("labels", "color", "overlay", "polygons", "stats")
_IMAGE_MEDIA = {"png": "image/png", "jpeg": "image/jpeg"}


def render_output(kind: str, image: np.ndarray | None, labels: np.ndarray, meta: ModelMetadata,
                  header: dict[str, Any] | None = None, *, alpha: float = 0.5, fmt: str = "jpeg",
                  tolerance: float = 1.0, min_area: float = 0.0) -> tuple[bytes | dict[str, Any], str]:
    """Body and media type of output `kind` for a label map at the image's size.

    `image` (the upload at full size) is needed only for `overlay`. JSON outputs get `width`, `height`,
    `classes_present` plus the caller's `header` fields (id, model).
    """
    if kind == "labels":
        return encode_labels_png(labels, meta.palette), "image/png"
    if kind == "color":
        return encode_color_png(labels, meta.palette), "image/png"
    if kind == "overlay":
        if image is None:
            raise ValueError("an overlay needs the image")
        return encode_overlay(image, labels, meta.palette, alpha, fmt), _IMAGE_MEDIA[fmt]
    if kind not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {kind!r}")
    fields: dict[str, Any] = {
        **(header or {}), "width": int(labels.shape[1]), "height": int(labels.shape[0]),
        "classes_present": classes_present(labels, meta.classes),
    }
    if kind == "polygons":
        # A GeoJSON FeatureCollection at the top level (foreign members are allowed), so GIS tools read it.
        return {**polygons_geojson(labels, meta.classes, tolerance, min_area), **fields}, "application/geo+json"
    return {**class_stats(labels, meta.classes), **fields}, "application/json"
