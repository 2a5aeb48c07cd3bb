"""`output=polygons` has a bound on the work one answer may take: per-pixel noise is refused fast with 422
`output_too_complex` (it took ~54 s and answered 17 MB before), and an ordinary image still gets its GeoJSON,
serialised off the event loop, byte for byte as before."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.responses import JSONResponse
from PIL import Image

from service.core.outputs.polygons import polygons_geojson
from tests.service.svc_helpers import RULE_CLASSES, LiveServer, png_bytes, rule_model_server, scene

SIDE = 512  # the model's input size: one model pixel per upload pixel


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with rule_model_server(tmp_path_factory.mktemp("bounds"), input_size=SIDE) as live:
        yield live


def _noise() -> bytes:
    """Black or full-on channels at random: the rule model answers per pixel, 4 classes scattered at random."""
    levels = np.array([0, 255], np.uint8)
    return png_bytes(levels[np.random.default_rng(2).integers(0, 2, (SIDE, SIDE, 3))])


def test_noise_is_refused_fast_with_a_stable_code(server: LiveServer) -> None:
    with server.client(timeout=300) as client:
        start = time.perf_counter()
        r = client.post("/segment", params={"output": "polygons", "tolerance": 0, "min_area": 0},
                        content=_noise(), headers={"Content-Type": "image/png"})
        elapsed = time.perf_counter() - start
    assert r.status_code == 422, (r.status_code, len(r.content))
    error = r.json()["error"]
    assert error["code"] == "output_too_complex"
    assert "min_area" in error["message"]
    # Before the bound this answer took ~50 s of CPU; refused, it is the decode, the model run and the tracing.
    assert elapsed < 10, elapsed


def test_ordinary_image_gets_the_same_geojson(server: LiveServer) -> None:
    data = png_bytes(scene(SIDE, SIDE))
    params = {"output": "polygons", "tolerance": 1, "min_area": 4}
    with server.client() as client:
        labels_png = client.post("/segment", params={"output": "labels"}, content=data,
                                 headers={"Content-Type": "image/png"})
        r = client.post("/segment", params=params, content=data, headers={"Content-Type": "image/png"})
    assert labels_png.status_code == 200 and r.status_code == 200, (labels_png.text, r.text)
    labels = np.asarray(Image.open(io.BytesIO(labels_png.content)))
    assert r.headers["content-type"] == "application/geo+json"
    assert int(r.headers["content-length"]) == len(r.content)
    body = r.json()
    want = json.loads(json.dumps(polygons_geojson(labels, RULE_CLASSES, 1, 4)))
    assert 3 <= len(body["features"]) < 50 and body["features"] == want["features"]
    assert list(body) == ["type", "features", "id", "model", "model_sha256", "width", "height", "classes_present",
                          "timing_ms"]
    assert set(body["timing_ms"]) == {"decode", "queue", "inference", "encode"}
    # The bytes are Starlette's JSONResponse's, as before the body was serialised in the codec thread.
    assert r.content == JSONResponse(body).body


def test_noise_in_blocks_with_the_default_min_area_is_answered(server: LiveServer) -> None:
    """The default min_area (0.01% of the image) drops the specks: what is left is answered, not refused."""
    small = Image.open(io.BytesIO(_noise())).resize((64, 64), Image.NEAREST).resize((SIDE, SIDE), Image.NEAREST)
    with server.client() as client:
        r = client.post("/segment", params={"output": "polygons", "tolerance": 0}, content=png_bytes(np.asarray(small)),
                        headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    assert len(r.json()["features"]) > 100
