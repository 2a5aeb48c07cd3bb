"""letterbox / unletterbox geometry and exactness."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from service.core.letterbox import (
    AREA_BELOW_SCALE,
    LetterboxInfo,
    compute_letterbox,
    letterbox,
    pad_canvas,
    resize_nearest,
    unletterbox,
)
from testkit.photos import photo

PAD = (124, 116, 104)

# (height, width): square, landscape, portrait, 1×1, very thin both ways, odd primes
SHAPES = [(64, 64), (37, 64), (64, 37), (1, 1), (1, 200), (200, 1), (3, 1000), (1000, 3), (97, 131),
          (500, 333), (777, 1024), (2, 2)]


@pytest.mark.parametrize(("h", "w"), SHAPES)
@pytest.mark.parametrize("size", [64, 513])
def test_geometry(h: int, w: int, size: int) -> None:
    info = compute_letterbox(h, w, size)
    assert max(info.new_h, info.new_w) == size
    assert 1 <= info.new_h <= size and 1 <= info.new_w <= size
    # aspect ratio kept to within rounding, and never below one pixel
    assert abs(info.new_h - max(1.0, h * size / max(h, w))) <= 0.5 + 1e-9
    assert abs(info.new_w - max(1.0, w * size / max(h, w))) <= 0.5 + 1e-9
    assert (info.top, info.left, info.orig_h, info.orig_w, info.size) == (0, 0, h, w, size)


@pytest.mark.parametrize(("h", "w"), SHAPES)
def test_letterbox_places_resized_image_top_left_and_pads(h: int, w: int) -> None:
    rng = np.random.default_rng(h * 1000 + w)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    out, info = letterbox(image, 64, PAD)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    scale = 64 / max(h, w)
    interp = cv2.INTER_AREA if scale < AREA_BELOW_SCALE else cv2.INTER_LINEAR
    expected = image if (info.new_h, info.new_w) == (h, w) else cv2.resize(
        image, (info.new_w, info.new_h), interpolation=interp)
    np.testing.assert_array_equal(out[: info.new_h, : info.new_w], expected)
    assert (out[info.new_h :, :] == PAD).all()
    assert (out[:, info.new_w :] == PAD).all()


def test_pad_canvas_is_one_read_only_image_per_size_and_colour() -> None:
    """Padding copies from a cached canvas: it must be shared, unwritable (an answer written into it would
    pad every later request), and keyed by size and colour, so two models' pads never mix."""
    canvas = pad_canvas(64, 48, PAD)
    assert canvas.shape == (64, 48, 3) and (canvas == PAD).all()
    assert pad_canvas(64, 48, np.array(PAD, dtype=np.uint8)) is canvas
    with pytest.raises(ValueError):
        canvas[0, 0] = 0
    other = (0, 255, 7)
    assert (pad_canvas(64, 48, other) == other).all() and (pad_canvas(48, 64, PAD).shape == (48, 64, 3))
    image = np.full((30, 64, 3), 200, np.uint8)
    for pad in (PAD, other, PAD):
        out, info = letterbox(image, 64, pad)
        assert (out[info.new_h :] == pad).all() and (out[: info.new_h] == 200).all()


def test_letterbox_writes_into_a_batch_slot() -> None:
    image = photo("chelsea.png")  # 451×300: a real photo, shrunk
    batch = np.zeros((3, 128, 128, 3), dtype=np.uint8)
    out, _ = letterbox(image, 128, PAD, out=batch[1])
    assert np.shares_memory(out, batch)
    expected, _ = letterbox(image, 128, PAD)
    np.testing.assert_array_equal(batch[1], expected)
    assert not batch[0].any() and not batch[2].any()
    with pytest.raises(ValueError):
        letterbox(image, 128, PAD, out=np.zeros((64, 64, 3), np.uint8))


def test_shrinking_strongly_does_not_alias() -> None:
    # 1-pixel stripes halved: averaging gives flat grey; point sampling would give solid black or white.
    stripes = np.zeros((256, 256, 3), dtype=np.uint8)
    stripes[:, ::2] = 255
    out, _ = letterbox(stripes, 128, PAD)
    assert np.abs(out.astype(int) - 127.5).max() <= 1


def test_letterbox_rejects_wrong_input() -> None:
    with pytest.raises(ValueError):
        letterbox(np.zeros((4, 4), np.uint8), 8, PAD)
    with pytest.raises(ValueError):
        letterbox(np.zeros((4, 4, 3), np.float32), 8, PAD)
    with pytest.raises(ValueError):
        compute_letterbox(0, 5, 8)


def _paste(labels_small: np.ndarray, info: LetterboxInfo, fill: int = 255) -> np.ndarray:
    canvas = np.full((info.size, info.size), fill, dtype=np.uint8)
    canvas[info.top : info.top + info.new_h, info.left : info.left + info.new_w] = labels_small
    return canvas


@pytest.mark.parametrize(("h", "w"), SHAPES)
@pytest.mark.parametrize("size", [64, 513])
def test_label_round_trip_is_exact(h: int, w: int, size: int) -> None:
    """Nearest-neighbour with centre alignment loses nothing when going up and back down.

    When the original is no bigger than the model size, the original label map survives
    original → letterbox → unletterbox. When it is bigger, the model-resolution map survives
    unletterbox → back to model resolution. Random labels: every pixel is its own region, the worst case.
    """
    rng = np.random.default_rng(7)
    info = compute_letterbox(h, w, size)
    if max(h, w) <= size:
        original = rng.integers(0, 21, (h, w), dtype=np.uint8)
        model_out = _paste(resize_nearest(original, info.new_w, info.new_h), info)
        np.testing.assert_array_equal(unletterbox(model_out, info), original)
    else:
        small = rng.integers(0, 21, (info.new_h, info.new_w), dtype=np.uint8)
        restored = unletterbox(_paste(small, info), info)
        assert restored.shape == (h, w)
        np.testing.assert_array_equal(resize_nearest(restored, info.new_w, info.new_h), small)


def test_unletterbox_shapes_and_padding_ignored() -> None:
    info = compute_letterbox(300, 451, 64)
    model_out = np.full((64, 64), 9, dtype=np.uint8)  # padding says class 9 ...
    model_out[: info.new_h, : info.new_w] = 3  # ... the image region says class 3
    restored = unletterbox(model_out, info)
    assert restored.shape == (300, 451) and restored.dtype == np.uint8
    assert (restored == 3).all()


def test_unletterbox_honours_offsets_and_copies() -> None:
    info = LetterboxInfo(orig_h=4, orig_w=6, new_h=4, new_w=6, top=2, left=1, size=8)
    model_out = np.zeros((8, 8), dtype=np.uint8)
    model_out[2:6, 1:7] = np.arange(24, dtype=np.uint8).reshape(4, 6)
    restored = unletterbox(model_out, info)
    np.testing.assert_array_equal(restored, np.arange(24).reshape(4, 6))
    assert not np.shares_memory(restored, model_out)
    with pytest.raises(ValueError):
        unletterbox(np.zeros((4, 4), np.uint8), info)


def test_unletterbox_confidence_map_too() -> None:
    info = compute_letterbox(10, 20, 8)
    conf = np.zeros((8, 8), dtype=np.uint8)
    conf[: info.new_h, : info.new_w] = 200
    assert (unletterbox(conf, info) == 200).all()


def test_nearest_is_centre_aligned() -> None:
    # Shrinking [0 1 2 3 4 5] by 3 must pick the centre sample of each triple (1 and 4); corner-aligned
    # INTER_NEAREST picks 0 and 3, shifting masks by a pixel against the image.
    row = np.arange(6, dtype=np.uint8).reshape(1, 6)
    np.testing.assert_array_equal(resize_nearest(row, 2, 1), [[1, 4]])
