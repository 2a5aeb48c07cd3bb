"""`GET /results/{id}/overlay.png?alpha=`: the overlay fetched again is drawn at the opacity asked for, validated
as `POST /segment?alpha=` is (a real uvicorn, the rule model, real PNG bytes)."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service.svc_helpers import LiveServer, png_bytes, scene


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _overlay(client: httpx.Client, result_id: str, query: str = "") -> bytes:
    response = client.get(f"/results/{result_id}/overlay.png{query}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return response.content


@pytest.fixture(scope="module")
def upload() -> tuple[np.ndarray, bytes]:
    image = scene(150, 100)
    return image, png_bytes(image)


def test_the_overlay_follows_alpha_as_the_blend_says(rule_server: LiveServer,
                                                     upload: tuple[np.ndarray, bytes]) -> None:
    image, data = upload
    with rule_server.client() as client:
        answer = client.post("/segment?output=labels", content=data, headers={"Content-Type": "image/png"})
        assert answer.status_code == 200, answer.text
        result_id = answer.headers["x-result-id"]
        labels = np.asarray(Image.open(io.BytesIO(answer.content)))  # palette PNG: pixel values are class ids
        palette = {c["id"]: c["color"] for c in client.get("/classes").json()["classes"]}
        at = {alpha: _overlay(client, result_id, f"?alpha={alpha}") for alpha in ("0", "0.25", "0.6", "1")}
        default = _overlay(client, result_id)
        half = _overlay(client, result_id, "?alpha=0.5")

    foreground = labels != 0
    assert foreground.any() and (~foreground).any(), "the scene must have both foreground and background"
    colours = np.zeros_like(image)
    for class_id, colour in palette.items():
        colours[labels == class_id] = colour

    # alpha 0 is the upload itself (PNG: lossless), alpha 1 the class colours over the foreground.
    np.testing.assert_array_equal(_pixels(at["0"]), image)
    expected_opaque = np.where(foreground[..., None], colours, image)
    np.testing.assert_array_equal(_pixels(at["1"]), expected_opaque)
    # In between, (1 - a) * image + a * colour on the foreground (±1 for rounding); background untouched.
    for alpha in ("0.25", "0.6"):
        a = float(alpha)
        blend = (1 - a) * image.astype(float) + a * colours.astype(float)
        got = _pixels(at[alpha]).astype(float)
        assert np.abs(got - blend)[foreground].max() <= 1, alpha
        np.testing.assert_array_equal(got[~foreground], image[~foreground])
    assert len(set(at.values())) == len(at), "each alpha gives its own overlay"
    assert default == half, "without alpha the overlay is drawn at 0.5, as before"


def test_results_overlay_is_the_same_as_segment_overlay_at_that_alpha(rule_server: LiveServer,
                                                                      upload: tuple[np.ndarray, bytes]) -> None:
    _, data = upload
    with rule_server.client() as client:
        answer = client.post("/segment?output=overlay&format=png&alpha=0.6", content=data,
                             headers={"Content-Type": "image/png"})
        assert answer.status_code == 200, answer.text
        again = _overlay(client, answer.headers["x-result-id"], "?alpha=0.6")
    np.testing.assert_array_equal(_pixels(again), _pixels(answer.content))


@pytest.mark.parametrize("alpha", ["1.5", "-0.1", "abc", "nan", ""])
def test_a_bad_alpha_is_refused_as_segment_refuses_it(rule_server: LiveServer, upload: tuple[np.ndarray, bytes],
                                                      alpha: str) -> None:
    _, data = upload
    with rule_server.client() as client:
        segment = client.post(f"/segment?output=overlay&alpha={alpha}", content=data,
                              headers={"Content-Type": "image/png"})
        stored = client.post("/segment?output=stats", content=data, headers={"Content-Type": "image/png"})
        again = client.get(f"/results/{stored.json()['id']}/overlay.png?alpha={alpha}")
    assert 400 <= segment.status_code < 500
    assert again.status_code == segment.status_code
    assert again.headers["content-type"].startswith("application/json")
    assert again.json()["error"]["code"] == segment.json()["error"]["code"] == "invalid_request"
