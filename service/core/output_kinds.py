"""The output kinds `POST /segment` answers with, as one table: name, encodings (media type, file suffix),
the Accept types that choose each, and the function that renders it.

Everything else derives from this table: the route's `output` parameter and its OpenAPI, Accept negotiation,
`GET /outputs` (which the web page reads), the Python client's `OUTPUTS` and the batch CLI's file suffixes.
Adding an output kind is one row here plus its renderer.

The module imports only the standard library, so the client (installed without the server's codecs) can read
the table; each renderer imports its encoder when it first runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - types only
    import numpy as np

    from .contract import ModelMetadata
    from .outputs.labelmap import LabelMap

Body = bytes | dict[str, Any]


@dataclass(frozen=True)
class RenderOptions:
    """How one request wants its answer drawn (the query parameters of `POST /segment`)."""

    alpha: float = 0.5  # overlay opacity of the class colours
    format: str | None = None  # overlay encoding: 'jpeg' (default) or 'png'
    tolerance: float = 1.0  # polygon simplification, pixels
    min_area: float | None = None  # polygons smaller than this (pixels²) are dropped; None: 0.01% of the image
    # Not a query parameter: the RGB ICC profile whose numbers the decoded upload kept (`Pipeline.preprocess`,
    # `decode_image_keeping_profile`); an overlay is then drawn in it and carries it. None: the image is sRGB.
    icc_profile: bytes | None = None


@dataclass(frozen=True)
class RenderInput:
    """What a renderer gets: the label map at the upload's size, the upload itself (overlays only), the model's
    metadata and the request's options."""

    label_map: LabelMap
    image: np.ndarray | None
    meta: ModelMetadata
    options: RenderOptions


@dataclass(frozen=True)
class Encoding:
    """One way an output kind is written: its `format` name, HTTP media type and file suffix."""

    format: str
    media_type: str
    suffix: str


@dataclass(frozen=True)
class OutputKind:
    """One row of the table. `encodings[0]` is the default; JSON kinds get the common fields (width, height,
    classes_present, id, model) around what `render` returns."""

    name: str
    description: str
    encodings: tuple[Encoding, ...]
    accept: tuple[str, ...]  # Accept media types that choose this kind when `output` is not given
    render: Callable[[RenderInput], tuple[Body, Encoding]]
    shows_image: bool = False  # needs the upload's pixels at full resolution

    @property
    def is_json(self) -> bool:
        return self.encodings[0].media_type.endswith("json")

    def encoding(self, fmt: str | None = None) -> Encoding:
        """The encoding named `fmt` (None: the default); ValueError for a format this kind is not written in."""
        if fmt is None:
            return self.encodings[0]
        for encoding in self.encodings:
            if encoding.format == fmt:
                return encoding
        raise ValueError(f"output {self.name!r} has no format {fmt!r} (formats: "
                         f"{', '.join(e.format for e in self.encodings)})")


PNG = Encoding("png", "image/png", ".png")
JPEG = Encoding("jpeg", "image/jpeg", ".jpg")
GEOJSON = Encoding("geojson", "application/geo+json", ".geojson")
JSON = Encoding("json", "application/json", ".json")
JPEG_MAX_SIDE = 65500  # libjpeg's JPEG_MAX_DIMENSION


# Starlette's `JSONResponse` encoding, byte for byte, without the circular-reference check: an answer is a tree
# built for this request, never circular, and the check costs a dict insert and delete per list and object (a
# 1024x768 photo's polygons: 565 -> ~400 µs per answer).
_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"),
                                 check_circular=False)


def json_bytes(body: dict[str, Any]) -> bytes:
    """A JSON kind's body as the bytes the API answers with."""
    return _JSON_ENCODER.encode(body).encode("utf-8")


def _labels(job: RenderInput) -> tuple[Body, Encoding]:
    from .outputs.masks import encode_labels_png

    return encode_labels_png(job.label_map, job.meta.palette), PNG


def _color(job: RenderInput) -> tuple[Body, Encoding]:
    from .outputs.masks import encode_color_png

    return encode_color_png(job.label_map, job.meta.palette), PNG


def _overlay(job: RenderInput) -> tuple[Body, Encoding]:
    from .outputs.masks import encode_overlay

    if job.image is None:
        raise ValueError("an overlay needs the image")
    encoding = OUTPUT_KINDS["overlay"].encoding(job.options.format)
    if encoding is JPEG and max(job.image.shape[:2]) > JPEG_MAX_SIDE:
        encoding = PNG  # JPEG cannot store a side beyond 65,500 px; PNG can, and says so in Content-Type
    body = encode_overlay(job.image, job.label_map, job.meta.palette, job.options.alpha, encoding.format,
                          icc_profile=job.options.icc_profile)
    return body, encoding


def _polygons(job: RenderInput) -> tuple[Body, Encoding]:
    from .outputs.polygons import default_min_area, polygons_geojson

    min_area = job.options.min_area
    if min_area is None:  # specks below 0.01% of the image are noise
        min_area = default_min_area(*job.label_map.shape)
    # A GeoJSON FeatureCollection at the top level (foreign members are allowed), so GIS tools read it.
    return polygons_geojson(job.label_map, job.meta.classes, job.options.tolerance, min_area), GEOJSON


def _stats(job: RenderInput) -> tuple[Body, Encoding]:
    from .outputs.stats import class_stats

    return class_stats(job.label_map, job.meta.classes), JSON


OUTPUT_KINDS: dict[str, OutputKind] = {kind.name: kind for kind in (
    OutputKind("labels", "palette PNG whose pixel values are class ids", (PNG,), ("image/png",), _labels),
    OutputKind("color", "PNG with each class in its palette colour", (PNG,), (), _color),
    OutputKind("overlay", "the upload with the class colours blended over it (format jpeg or png)", (JPEG, PNG),
               ("image/jpeg",), _overlay, shows_image=True),
    OutputKind("polygons", "GeoJSON FeatureCollection of class regions, in pixel coordinates", (GEOJSON,),
               ("application/geo+json",), _polygons),
    OutputKind("stats", "pixel count, fraction and bounding box per class present", (JSON,),
               ("application/json",), _stats),
)}
OUTPUTS: tuple[str, ...] = tuple(OUTPUT_KINDS)
DEFAULT_OUTPUT = "labels"  # when neither `output` nor the Accept header chooses
# Accept media type -> the kind it chooses, built once: `negotiate` runs for every request without `output`.
_KIND_BY_ACCEPT = {media: kind.name for kind in OUTPUT_KINDS.values() for media in kind.accept}


def negotiate(accept: str | None) -> str:
    """The output kind an Accept header asks for: the highest quality listed type that a kind answers with
    (the earlier on a tie); `DEFAULT_OUTPUT` when none is."""
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate((accept or "").split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        if media.lower() in _KIND_BY_ACCEPT and q > 0:
            ranked.append((-q, index, _KIND_BY_ACCEPT[media.lower()]))
    return min(ranked)[2] if ranked else DEFAULT_OUTPUT


def describe() -> list[dict[str, Any]]:
    """The table as JSON (for `GET /outputs` and the web page)."""
    return [{"name": kind.name, "description": kind.description, "json": kind.is_json,
             "accept": list(kind.accept),
             "encodings": [{"format": e.format, "media_type": e.media_type, "suffix": e.suffix}
                           for e in kind.encodings]}
            for kind in OUTPUT_KINDS.values()]
