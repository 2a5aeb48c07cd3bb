"""`json_bytes` (the JSON answers of POST /segment, serialised in the codec thread) writes exactly the bytes
Starlette's `JSONResponse` does."""

from __future__ import annotations

import math

import pytest
from fastapi.responses import JSONResponse

from service.core.output_kinds import json_bytes

BODIES = [
    {},
    {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
        [[0, 0], [10, 0], [10, 5], [0, 0]]]}, "properties": {"class_id": 3,
                                                           "class_name": "chat\u00e9 \u2028 \"q\"\n"}}]},
    {"fraction": 0.1 + 0.2, "tiny": 1e-7, "big": 1e16, "neg": -0.0, "ints": [1, -2, 2**70], "none": None,
     "bools": [True, False], "nested": {"a": [{"b": []}]}, "timing_ms": {"decode": 3.142}},
]


@pytest.mark.parametrize("body", BODIES)
def test_same_bytes_as_starlette(body: dict) -> None:
    assert json_bytes(body) == JSONResponse(body).body


def test_non_finite_floats_are_still_refused() -> None:
    for value in (math.nan, math.inf):
        with pytest.raises(ValueError):
            json_bytes({"x": value})
