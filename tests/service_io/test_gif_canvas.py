"""A GIF whose first frame covers only part of its canvas: browsers show the rest transparent, which the decoder
composites over white (as it does every transparent pixel), not the arbitrary colour of palette entry 0."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from service.core.decode import decode_image
from service.settings import Settings
from tests.service.svc_helpers import LiveServer, make_rule_model

GREEN = (20, 220, 20)
# A 32x32 canvas seen by a 96 model: enlarged by exactly 3, so the rule model's answer is exact at every pixel.
CANVAS, FRAME_AT, FRAME_SIZE = (32, 32), (8, 12), (16, 8)


def partial_gif(transparency: int | None = None, frames: int = 1) -> bytes:
    """A GIF with a green FRAME_SIZE first frame at FRAME_AT on a CANVAS logical screen; palette entry 0 black."""
    frame = Image.new("P", FRAME_SIZE, 1)
    frame.putpalette([0, 0, 0, *GREEN, 20, 20, 220] + [0] * 759)
    options: dict[str, object] = {"optimize": False}
    if transparency is not None:
        options["transparency"] = transparency
    if frames > 1:
        options.update(save_all=True, append_images=[frame.copy() for _ in range(frames - 1)], duration=50)
    buf = io.BytesIO()
    frame.save(buf, "GIF", **options)
    data = bytearray(buf.getvalue())
    # Widen the logical screen, then move the first image descriptor (after the 768-byte global colour table).
    data[6:10] = CANVAS[0].to_bytes(2, "little") + CANVAS[1].to_bytes(2, "little")
    descriptor = data.index(b"\x2c", 13 + 768)
    data[descriptor + 1 : descriptor + 5] = FRAME_AT[0].to_bytes(2, "little") + FRAME_AT[1].to_bytes(2, "little")
    return bytes(data)


def expected_pixels() -> np.ndarray:
    """What a browser shows on a white page: the green frame, white around it."""
    pixels = np.full((CANVAS[1], CANVAS[0], 3), 255, np.uint8)
    (x, y), (w, h) = FRAME_AT, FRAME_SIZE
    pixels[y : y + h, x : x + w] = GREEN
    return pixels


@pytest.mark.parametrize(("transparency", "frames"), [(None, 1), (None, 3), (0, 1), (2, 2)])
def test_canvas_outside_the_first_frame_is_white(transparency: int | None, frames: int) -> None:
    with Image.open(io.BytesIO(partial_gif(transparency, frames))) as img:  # the file is what it claims
        assert img.size == CANVAS and img.tile[0][1] == (*FRAME_AT, FRAME_AT[0] + 16, FRAME_AT[1] + 8)
    np.testing.assert_array_equal(decode_image(partial_gif(transparency, frames), 10**6), expected_pixels())


def test_gif_that_covers_its_canvas_is_unchanged() -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)).quantize(16)
    buf = io.BytesIO()
    img.save(buf, "GIF")
    np.testing.assert_array_equal(decode_image(buf.getvalue(), 10**6), np.asarray(img.convert("RGB")))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    model = make_rule_model(tmp_path_factory.mktemp("rule") / "rule.onnx", input_size=96)
    live = LiveServer(Settings(model_path=model, host="127.0.0.1", port=0, max_wait_ms=2, intra_op_threads=1,
                               worker_threads=2)).start()
    yield live
    live.stop()


def test_segment_sees_the_canvas_a_browser_shows(server: LiveServer) -> None:
    """The rule model's labels (brightest channel, below 64 is background) of the browser's view, pixel for pixel:
    white around the frame (class 1, R wins the tie), never the black of palette entry 0 (background)."""
    pixels = expected_pixels().astype(np.int64)
    expected = pixels.argmax(axis=2) + 1
    expected[pixels.max(axis=2) < 64] = 0
    with server.client() as client:
        r = client.post("/segment", params={"output": "labels"}, content=partial_gif(),
                        headers={"Content-Type": "image/gif"})
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content))), expected)
