"""One output dispatch, through the output-kind table (`service.core.output_kinds`), for `POST /segment`,
`GET /results/...` and every in-process caller."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.core.contract import ModelMetadata
from service.core.output_kinds import OUTPUT_KINDS, OUTPUTS, Body, RenderInput, RenderOptions
from service.core.outputs.labelmap import LabelMap, as_label_map
from service.core.outputs.stats import classes_present

__all__ = ["OUTPUTS", "render"]


def render(kind: str, image: np.ndarray | None, labels: np.ndarray | LabelMap, meta: ModelMetadata,
           options: RenderOptions, header: dict[str, Any] | None = None) -> tuple[Body, str]:
    """Body and media type of output `kind` for a label map at the image's size.

    `image` (the upload at full size) is needed only for kinds that show it (overlay). JSON outputs get `width`,
    `height`, `classes_present` plus the caller's `header` fields (id, model). `labels` is the map at the image's
    size, or a `LabelMap` (the model's map and its way back to that size), which the labels PNG, the statistics
    and the polygons use without materialising the full map. The media type returned says which encoding was
    written (an overlay asked for as JPEG comes as PNG when a side exceeds what JPEG can hold).
    """
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {kind!r}")
    output = OUTPUT_KINDS[kind]
    label_map = as_label_map(labels)
    body, encoding = output.render(RenderInput(label_map, image, meta, options))
    if isinstance(body, dict):
        height, width = label_map.shape
        body = {**body, **(header or {}), "width": width, "height": height,
                "classes_present": classes_present(label_map, meta.classes)}
    return body, encoding.media_type

