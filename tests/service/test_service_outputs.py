"""Every output format of POST /segment, checked against onnxruntime called directly on the same input."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from service.core import outputs
from service.core.contract import voc_colormap
from service.core.letterbox import letterbox, unletterbox
from testkit.photos import photo
from tests.service.svc_helpers import RULE_CLASSES, LiveServer, png_bytes, scene

PALETTE = voc_colormap(5)
PAD = (124, 116, 104)  # ImageNet mean, rounded: ModelMetadata.pad_rgb


def reference_labels(model: Path, image: np.ndarray, size: int) -> np.ndarray:
    """Labels at the original size from a fresh ORT session on the letterboxed image."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    tensor, info = letterbox(image, size, PAD)
    return unletterbox(session.run(["labels"], {"image": tensor[None]})[0][0], info)


def decode_png(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    return img


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return scene(150, 100)


@pytest.fixture(scope="module")
def expected(rule_server: LiveServer, image: np.ndarray) -> np.ndarray:
    labels = reference_labels(rule_server.settings.model_path, image, 96)
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3}  # a rich map, or the checks below prove little
    return labels


def post(server: LiveServer, data: bytes, **params) -> object:
    with server.client() as client:
        return client.post("/segment", params=params, content=data, headers={"Content-Type": "image/png"})


def test_labels_png_is_the_class_id_map(rule_server: LiveServer, image: np.ndarray, expected: np.ndarray) -> None:
    r = post(rule_server, png_bytes(image), output="labels")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-request-id"] and r.headers["x-result-id"]
    png = decode_png(r.content)
    assert png.mode == "P" and png.size == (150, 100)
    np.testing.assert_array_equal(np.asarray(png), expected)
    lut = np.asarray(png.getpalette()[: 3 * 5]).reshape(5, 3)
    np.testing.assert_array_equal(lut, np.asarray(PALETTE))


def test_color_png_paints_the_palette(rule_server: LiveServer, image: np.ndarray, expected: np.ndarray) -> None:
    r = post(rule_server, png_bytes(image), output="color")
    assert r.status_code == 200
    png = decode_png(r.content)
    assert png.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(png), np.asarray(PALETTE, np.uint8)[expected])


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_overlay_png_blends_with_alpha(rule_server: LiveServer, image: np.ndarray, expected: np.ndarray,
                                       alpha: float) -> None:
    r = post(rule_server, png_bytes(image), output="overlay", format="png", alpha=alpha)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    got = np.asarray(decode_png(r.content).convert("RGB"))
    want = np.asarray(Image.open(io.BytesIO(outputs.encode_overlay(image, expected, PALETTE, alpha, "png")))
                      .convert("RGB"))
    np.testing.assert_array_equal(got, want)
    if alpha == 0.0:
        np.testing.assert_array_equal(got, image)  # nothing painted: the input itself


def test_overlay_jpeg_default(rule_server: LiveServer, image: np.ndarray, expected: np.ndarray) -> None:
    r = post(rule_server, png_bytes(image), output="overlay", alpha=1.0)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    jpeg = Image.open(io.BytesIO(r.content))
    assert jpeg.format == "JPEG" and jpeg.size == (150, 100)
    painted = np.asarray(PALETTE, np.float32)[expected]
    foreground = expected > 0
    # JPEG is lossy: the painted colours come back within a few levels on average.
    diff = np.abs(np.asarray(jpeg.convert("RGB"), np.float32) - painted)[foreground]
    assert diff.mean() < 12


def test_stats_json(rule_server: LiveServer, image: np.ndarray, expected: np.ndarray) -> None:
    r = post(rule_server, png_bytes(image), output="stats")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["id"] == r.headers["x-result-id"]
    assert body["model"] == "rule" and (body["width"], body["height"]) == (150, 100)
    present = np.unique(expected)
    assert body["classes_present"] == [RULE_CLASSES[i] for i in present]
    assert set(body["timing_ms"]) == {"decode", "queue", "inference", "encode"}
    by_id = {c["class_id"]: c for c in body["classes"]}
    assert sorted(by_id) == present.tolist()
    for class_id, entry in by_id.items():
        ys, xs = np.nonzero(expected == class_id)
        assert entry["fraction"] == pytest.approx(len(ys) / expected.size)
        assert entry["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


@pytest.mark.parametrize("tolerance,min_area", [(0.0, 0.0), (1.5, 30.0)])
def test_polygons_geojson(rule_server: LiveServer, image: np.ndarray, expected: np.ndarray, tolerance: float,
                          min_area: float) -> None:
    r = post(rule_server, png_bytes(image), output="polygons", tolerance=tolerance, min_area=min_area)
    assert r.status_code == 200 and r.headers["content-type"] == "application/geo+json"
    body = r.json()
    assert body["type"] == "FeatureCollection" and body["id"] == r.headers["x-result-id"]
    want = json.loads(json.dumps(outputs.polygons_geojson(expected, RULE_CLASSES, tolerance, min_area)))
    assert body["features"] == want["features"]
    assert {f["properties"]["class_name"] for f in body["features"]} == {"red", "green", "blue"}
    if tolerance == 0:
        # The red square has the blue square as a hole: outer ring + one hole ring.
        red = [f for f in body["features"] if f["properties"]["class_name"] == "red"]
        assert any(len(f["geometry"]["coordinates"]) == 2 for f in red)


def test_multipart_upload_and_results_refetch(rule_server: LiveServer, image: np.ndarray,
                                             expected: np.ndarray) -> None:
    with rule_server.client() as client:
        r = client.post("/segment", files={"image": ("scene.png", png_bytes(image), "image/png")},
                        params={"output": "stats"})
        assert r.status_code == 200, r.text
        rid = r.json()["id"]
        labels = client.get(f"/results/{rid}/labels.png")
        assert labels.status_code == 200 and labels.headers["content-type"] == "image/png"
        np.testing.assert_array_equal(np.asarray(decode_png(labels.content)), expected)
        color = client.get(f"/results/{rid}/color.png")
        np.testing.assert_array_equal(np.asarray(decode_png(color.content)), np.asarray(PALETTE, np.uint8)[expected])
        overlay = client.get(f"/results/{rid}/overlay.png")
        assert decode_png(overlay.content).size == (150, 100)
        missing = client.get("/results/not-a-real-id/labels.png")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "result_not_found"
    assert len(rid) >= 20  # 128 random bits, URL-safe


def test_accept_header_negotiation(rule_server: LiveServer, image: np.ndarray) -> None:
    data = png_bytes(image)
    with rule_server.client() as client:
        def kind(accept: str) -> str:
            return client.post("/segment", content=data, headers={"Accept": accept}).headers["content-type"]
        assert kind("application/json") == "application/json"
        assert kind("application/geo+json") == "application/geo+json"
        assert kind("image/jpeg") == "image/jpeg"
        assert kind("image/png") == "image/png"
        assert kind("*/*") == "image/png"
        assert kind("image/png;q=0.5, application/json") == "application/json"


def test_tiny_deeplab_on_a_real_photo_matches_ort(serve, tiny_onnx_model: Path) -> None:
    """The real exported DeepLab, a real photograph, odd size: labels equal a direct ORT run."""
    server = serve(tiny_onnx_model)
    img = photo("chelsea.png", size=(161, 107))
    r = post(server, png_bytes(img), output="labels")
    assert r.status_code == 200
    np.testing.assert_array_equal(np.asarray(decode_png(r.content)), reference_labels(tiny_onnx_model, img, 64))


def test_exact_size_image_is_the_raw_session_output(rule_server: LiveServer) -> None:
    """At the model's own size there is no resize at all: the service must return exactly session.run()."""
    img = scene(96, 96)
    session = ort.InferenceSession(str(rule_server.settings.model_path), providers=["CPUExecutionProvider"])
    r = post(rule_server, png_bytes(img), output="labels")
    np.testing.assert_array_equal(np.asarray(decode_png(r.content)), session.run(None, {"image": img[None]})[0][0])


def test_exif_orientation_and_odd_modes(rule_server: LiveServer, image: np.ndarray) -> None:
    """A JPEG rotated by EXIF comes back at the displayed size; greyscale and RGBA are segmented."""
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    Image.fromarray(image).save(buf, format="JPEG", exif=exif, quality=95)
    r = post(rule_server, buf.getvalue(), output="labels")
    assert r.status_code == 200 and decode_png(r.content).size == (100, 150)
    for mode in ("L", "RGBA", "P", "I;16"):
        src = Image.fromarray(image).convert(mode) if mode != "I;16" else Image.fromarray(
            image[..., 0].astype(np.uint16) * 257)
        buf = io.BytesIO()
        src.save(buf, format="PNG")
        r = post(rule_server, buf.getvalue(), output="labels")
        assert r.status_code == 200, (mode, r.text)
        assert decode_png(r.content).size == (150, 100)


def test_large_jpeg_is_segmented_from_a_reduced_decode_at_full_output_size(rule_server: LiveServer) -> None:
    """A JPEG 4x the model's size decodes reduced (DCT scaling) for labels/stats, yet every mask comes back at
    the upload's size, agrees with the full-decode reference, and the cached overlay is full resolution."""
    from service.core.decode import decode_image

    big = photo("astronaut.png", size=(400, 300))
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, "JPEG", quality=92)
    data = buf.getvalue()
    reference = reference_labels(rule_server.settings.model_path, decode_image(data, 10**8), 96)
    with rule_server.client() as client:
        r = client.post("/segment", params={"output": "labels"}, content=data,
                        headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200, r.text
        labels = np.asarray(decode_png(r.content))
        assert labels.shape == (300, 400)
        assert (labels == reference).mean() > 0.97  # the rule model flips on near-ties between channels
        overlay = client.get(f"/results/{r.headers['x-result-id']}/overlay.png")
        assert overlay.status_code == 200
        assert decode_png(overlay.content).size == (400, 300)
        direct = client.post("/segment", params={"output": "overlay", "format": "png", "alpha": 0.0},
                             content=data, headers={"Content-Type": "image/jpeg"})
        # alpha 0: the overlay is the full-resolution decoded upload itself.
        np.testing.assert_array_equal(np.asarray(decode_png(direct.content).convert("RGB")),
                                      decode_image(data, 10**8))
    # The batch CLI's local mode decodes the same way, so it answers exactly what the server answered.
    from service.local import LocalSegmenter

    local = LocalSegmenter(rule_server.settings.model_path, providers="cpu").segment(data, "labels")
    np.testing.assert_array_equal(np.asarray(decode_png(local.content)), labels)
