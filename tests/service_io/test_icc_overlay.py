"""Overlays of uploads with an embedded ICC profile, on a live server: a Display P3 upload's overlay keeps the
upload's numbers and carries its profile, with the class colours converted into it, so that a colour-managed viewer
shows the photo as the upload and the classes in their sRGB palette colours; the model still sees sRGB; the
overlay refetched from the results cache is the same file; uploads without a profile, with an sRGB, a broken or a
grey one give the overlay they gave before (no profile in it)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.core.contract import voc_colormap
from service.core.decode import decode_image
from service.local import LocalSegmenter
from service.settings import Settings
from tests.service.svc_helpers import LiveServer, make_rule_model
from tests.service_io.icc_helpers import DISPLAY_P3, GREY_18, SRGB_VARIANTS, encoded, from_srgb, patches, shown

SIZE = 96
PALETTE = voc_colormap(5)  # the rule model's
# Dark and saturated (brightest channel < 64: background to the rule model), so that its Display P3 numbers are
# not its sRGB ones; then red (class 1) and green (class 2), as `patches` has them.
DARK_TEAL = (5, 50, 60)
RED, GREEN = (220, 30, 30), (30, 200, 40)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    model = make_rule_model(tmp_path_factory.mktemp("rule") / "rule.onnx", input_size=SIZE)
    live = LiveServer(Settings(model_path=model, host="127.0.0.1", port=0, max_wait_ms=2, intra_op_threads=1,
                               worker_threads=2)).start()
    yield live
    live.stop()


def post(server: LiveServer, data: bytes, **params: object) -> httpx.Response:
    with server.client() as client:
        r = client.post("/segment", params=params, content=data, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    return r


def picture(height: int = 240, width: int = 320) -> np.ndarray:
    """sRGB: the left half dark teal (background), the right half red above green."""
    srgb = np.empty((height, width, 3), np.uint8)
    srgb[:, : width // 2] = DARK_TEAL
    srgb[: height // 2, width // 2 :] = RED
    srgb[height // 2 :, width // 2 :] = GREEN
    return srgb


def boxes(height: int, width: int) -> dict[str, tuple[slice, slice]]:
    """The middle of each region, away from its edges (JPEG's ringing, the label map's nearest resize)."""
    h, w, dh, dw = height // 2, width // 2, height // 8, width // 8
    return {"background": (slice(dh, height - dh), slice(dw, w - dw)),
            "red": (slice(dh, h - dh), slice(w + dw, width - dw)),
            "green": (slice(h + dh, height - dh), slice(w + dw, width - dw))}


def p3_upload(fmt: str) -> tuple[bytes, np.ndarray]:
    """A Display P3 upload of `picture`, and the sRGB colours a colour-managed viewer shows for it."""
    stored = from_srgb(picture(), DISPLAY_P3)
    assert np.abs(stored[0, 0].astype(int) - DARK_TEAL).max() > 10  # P3's numbers are not sRGB's here
    data = encoded(stored, fmt, DISPLAY_P3)
    return data, shown(data)


@pytest.mark.parametrize("overlay_format", ["png", "jpeg"])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_display_p3_overlay_carries_the_profile_and_shows_srgb(server: LiveServer, fmt: str,
                                                               overlay_format: str) -> None:
    data, expected = p3_upload(fmt)
    body = post(server, data, output="overlay", alpha=1, format=overlay_format).content
    overlay = Image.open(io.BytesIO(body))
    assert overlay.format == overlay_format.upper()
    assert overlay.info.get("icc_profile") == DISPLAY_P3
    seen = shown(body)  # through the overlay's own profile, as a viewer shows it
    assert seen.shape == expected.shape
    regions = boxes(*seen.shape[:2])
    lossless = overlay_format == "png"
    background = regions["background"]
    if lossless:  # every pixel of the photo as the upload shows it
        assert np.abs(seen[background].astype(int) - expected[background]).max() <= 2
    assert np.abs(seen[background].reshape(-1, 3).mean(0) - expected[background].reshape(-1, 3).mean(0)).max() <= 2
    for name, cls in (("red", 1), ("green", 2)):
        region = seen[regions[name]].reshape(-1, 3).astype(int)
        colour = np.asarray(PALETTE[cls])
        if lossless:
            assert np.abs(region - colour).max() <= 2, (name, np.unique(region, axis=0))
        assert np.abs(region.mean(0) - colour).max() <= 2, (name, region.mean(0))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_only_the_letterbox_content_is_converted_for_the_model(tmp_path: Path, fmt: str) -> None:
    pipeline = LocalSegmenter(make_rule_model(tmp_path / "rule.onnx", input_size=SIZE), threads=1).pipeline
    srgb = picture(120, 320)  # wide: the letterbox pads rows below the content
    stored = from_srgb(srgb, DISPLAY_P3)
    data = encoded(stored, fmt, DISPLAY_P3)
    prepared = pipeline.preprocess(data, full_resolution=True)
    assert prepared.icc_profile == DISPLAY_P3
    np.testing.assert_array_equal(prepared.image, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    info = prepared.info
    assert info.new_h < SIZE
    pad = np.asarray(pipeline.engine.metadata.pad_rgb, np.uint8)
    assert (prepared.tensor[info.new_h :] == pad).all()  # the model's pad colour, exactly
    # The content as the same picture stored in sRGB gives it, within a level or two (JPEG's own loss aside).
    plain = pipeline.preprocess(encoded(srgb, fmt, None), full_resolution=True)
    assert plain.icc_profile is None
    content, expected = prepared.tensor[: info.new_h], plain.tensor[: info.new_h]
    for name, (rows, cols) in boxes(info.new_h, info.new_w).items():
        assert np.abs(content[rows, cols].astype(int) - expected[rows, cols]).max() <= 2, name


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_the_model_still_sees_srgb_under_a_display_p3_overlay(server: LiveServer, fmt: str) -> None:
    # The labels the overlay was drawn from (the results cache keeps them): DARK_RED read as sRGB numbers would
    # be background; shown as a browser shows it, it is red.
    srgb = np.empty((240, 320, 3), np.uint8)
    srgb[:, :160], srgb[:, 160:] = (68, 5, 5), GREEN
    stored = from_srgb(srgb, DISPLAY_P3)
    assert stored[0, 0].max() < 64
    r = post(server, encoded(stored, fmt, DISPLAY_P3), output="overlay", format="png")
    with server.client() as client:
        labels_png = client.get(f"/results/{r.headers['x-result-id']}/labels.png")
    assert labels_png.status_code == 200
    labels = np.asarray(Image.open(io.BytesIO(labels_png.content)))
    assert labels.shape == (240, 320)
    assert (labels[:, :150] == 1).mean() > 0.99, np.unique(labels[:, :150], return_counts=True)
    assert (labels[:, 170:] == 2).mean() > 0.99
    # ... and the same labels as the labels answer, which decodes for the model only.
    alone = np.asarray(Image.open(io.BytesIO(post(server, encoded(stored, fmt, DISPLAY_P3)).content)))
    assert (alone == labels).mean() > 0.99


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_the_refetched_overlay_is_the_same_file(server: LiveServer, fmt: str) -> None:
    data, _ = p3_upload(fmt)
    r = post(server, data, output="overlay", alpha=0.6, format="png")
    assert Image.open(io.BytesIO(r.content)).info.get("icc_profile") == DISPLAY_P3
    with server.client() as client:
        again = client.get(f"/results/{r.headers['x-result-id']}/overlay.png", params={"alpha": 0.6})
    assert again.status_code == 200
    assert again.content == r.content


@pytest.mark.parametrize("overlay_format", ["png", "jpeg"])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_overlays_without_a_kept_profile_are_unchanged(server: LiveServer, fmt: str, overlay_format: str) -> None:
    # An sRGB or a broken profile: the very bytes of the untagged upload's overlay, which carries no profile.
    pixels = patches(120, 160)
    plain = post(server, encoded(pixels, fmt, None), output="overlay", format=overlay_format).content
    assert "icc_profile" not in Image.open(io.BytesIO(plain)).info
    for profile in (SRGB_VARIANTS["iec61966-2.1"], SRGB_VARIANTS["v4"], b"\x00garbage" * 100):
        tagged = post(server, encoded(pixels, fmt, profile), output="overlay", format=overlay_format)
        assert tagged.content == plain
        with server.client() as client:
            again = client.get(f"/results/{tagged.headers['x-result-id']}/overlay.png")
        assert "icc_profile" not in Image.open(io.BytesIO(again.content)).info


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_grey_profile_is_still_converted_at_full_size(server: LiveServer, fmt: str) -> None:
    # An RGB overlay cannot carry a grey profile: its pixels are the sRGB ones `decode_image` gives.
    grey = np.tile(np.linspace(0, 255, 160).astype(np.uint8)[None, :, None], (120, 1, 3))
    data = encoded(grey, fmt, GREY_18, mode="L")
    body = post(server, data, output="overlay", alpha=0, format="png").content
    overlay = Image.open(io.BytesIO(body))
    assert "icc_profile" not in overlay.info
    converted = decode_image(data, 1 << 30)
    assert np.abs(converted.astype(int) - grey).max() > 10  # the grey profile moved the levels
    np.testing.assert_array_equal(np.asarray(overlay), converted)
