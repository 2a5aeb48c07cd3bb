"""The query parameters of `POST /segment`, as one model (validated in one call: service/routes/query_model.py), with
their documentation, which the OpenAPI document and the API page show."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Query
from pydantic import BaseModel, Field

from ..core.output_kinds import OUTPUT_KINDS, OUTPUTS
from ..core.priorities import Priority
from ..core.resolution import MAX_RESOLUTION

# The `output` parameter's type, from the output-kind table.
OutputName = Literal[OUTPUTS]  # type: ignore[valid-type]
# `format` names an encoding of the output kind, as `GET /outputs` lists them; each kind takes only its own.
_FORMATS = tuple(dict.fromkeys(e.format for kind in OUTPUT_KINDS.values() for e in kind.encodings))
FormatName = Literal[_FORMATS]  # type: ignore[valid-type]
_OUTPUT_HELP = "; ".join(f"{kind.name}: {kind.description}" for kind in OUTPUT_KINDS.values())
_FORMAT_HELP = "; ".join(f"{kind.name}: {', '.join(e.format for e in kind.encodings)}"
                         for kind in OUTPUT_KINDS.values())


class SegmentQuery(BaseModel):
    """The query parameters of `POST /segment` (validated in one call: service/routes/query_model.py)."""

    output: OutputName | None = Query(None, description=f"{_OUTPUT_HELP}. Default: from the Accept header, "
                                                        "else labels")
    alpha: float = Query(0.5, ge=0.0, le=1.0, description="overlay opacity of the class colours")
    format: FormatName | None = Query(None, description="the answer's encoding, one of its output kind's formats "
                                                        f"in GET /outputs, the first by default ({_FORMAT_HELP})")
    tolerance: float = Query(1.0, ge=0.0, description="polygon simplification tolerance, pixels")
    min_area: float | None = Query(None, ge=0.0, description="drop polygons smaller than this, pixels²; "
                                                             "default 0.01% of the image")
    crf: bool = Query(False, description="refine the mask's boundaries with DeepLab-v2's dense CRF (about "
                                         "+0.3 s for a 640x480 photo on the demo model; needs the server's "
                                         "crf extra, else 501)")
    timeout_s: float | None = Query(None, gt=0.0, le=3600.0, description=(
        "this request's own deadline, in seconds from the end of its upload, for its decode, queueing and model "
        "run; at most the server's request timeout (longer is cut to it). Passed: 504 `deadline_exceeded`, and its "
        "image leaves the queue unrun, so a client with a latency budget gets its answer or its refusal in time, "
        "and the model never runs images nobody waits for. Default: the server's request timeout"))
    resolution: Annotated[int, Field(ge=1, le=MAX_RESOLUTION)] | Literal["native"] | None = Query(None, description=(
        "the long side, in pixels, to segment the image at; `native`: the upload's own long side. Default: the "
        "model's input size (`GET /readyz`: `input_size`), one model run on the image scaled to it. Above it the "
        "image, scaled to this size, runs in overlapping tiles of the input size, batched like any images, and "
        "their labels are stitched (each pixel from the tile it lies deepest in): thin and small things a "
        "downscale would lose keep their pixels, for as many model runs as tiles. Beyond SEGMENT_MAX_TILES tiles, "
        "422 `too_many_tiles` (naming the highest resolution that fits); with crf=true, 422 `invalid_request`"))
    priority: Priority = Query("interactive", description=(
        "`interactive`: someone waits for the answer; `bulk`: offline work (a folder being labelled), run after "
        "every interactive request waiting, and admitted only within its share of the queue "
        "(SEGMENT_BULK_QUEUE_SHARE): beyond it 503 `bulk_overloaded` with Retry-After while interactive requests "
        "are still taken. A request with one of the server's offline-job keys (SEGMENT_BULK_API_KEYS) is bulk "
        "whatever it asks"))
