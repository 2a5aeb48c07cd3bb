"""The committed demo model still does what its card says, measured through the served ONNX path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_export.evaluate import evaluate_model
from model_export.export import read_metadata
from model_export.synthetic import CLASSES, PALETTE, SceneConfig, write_dataset
from model_export.torch_io import sha256_file

MODELS = Path(__file__).resolve().parents[2] / "models"
EMBEDDED = Path(__file__).resolve().parents[2] / "service" / "models" / "default.onnx"
RECORD = MODELS / "default.json"
FRESH_SEED = 2  # neither the training seed (0) nor the recorded held-out seed (1)


@pytest.fixture(scope="module")
def record() -> dict:
    if not RECORD.is_file():
        pytest.fail("models/default.json is missing; run models/make_default.py")
    return json.loads(RECORD.read_text())


def test_default_model_file_matches_its_record(record: dict) -> None:
    onnx_path = EMBEDDED
    assert onnx_path.stat().st_size < 15 * 1024 * 1024
    assert sha256_file(onnx_path) == record["sha256"]
    meta = read_metadata(onnx_path)
    assert meta.classes == list(CLASSES) == record["classes"]
    assert meta.palette[: len(CLASSES)] == PALETTE
    assert meta.input_size == record["input_size"]
    assert "synthetic" in meta.source
    # The target for the demo model; the fresh-scene test below holds the file to its recorded value.
    assert record["miou"] >= 0.90, record["miou"]


def test_default_model_reaches_its_recorded_miou_on_fresh_scenes(record: dict, tmp_path: Path) -> None:
    held = record["held_out"]
    write_dataset(tmp_path, train=0, val=80, seed=FRESH_SEED,
                  config=SceneConfig(ignore_border=held["ignore_border"]))
    scores, classes = evaluate_model(EMBEDDED, tmp_path, "val", threads=2, progress=False)
    assert classes == list(CLASSES)
    floor = record["miou"] - 0.02  # the recorded held-out value, less the tolerance for a different sample
    assert scores.miou >= floor, (scores.miou, floor)


def test_default_model_masks_sit_on_the_objects() -> None:
    """The served masks are not shifted against the scene: fresh scenes (exact masks, no ignore band) enlarged
    4x, so that the service halves them to the model's 320 px as it would a 640-px photo, and the prediction
    compared with the true mask moved by every shift up to 10 px. The best agreement must be within 1 px of no
    shift. The model trained on labels taken at each block's top-left pixel came out 6 px right and down here
    (3.5 px at the model's stride 8, doubled)."""
    import cv2
    import numpy as np

    from model_export.synthetic import render_scene
    from service.local import LocalSegmenter

    segmenter = LocalSegmenter(EMBEDDED, threads=2)
    reach = 10
    agreement = np.zeros((2 * reach + 1, 2 * reach + 1))
    for index in range(12):
        image, truth = render_scene(FRESH_SEED, index)
        image = cv2.resize(image, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
        truth = cv2.resize(truth, None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST_EXACT)
        predicted = segmenter.labels([image])[0]
        h, w = truth.shape
        inner = predicted[reach:h - reach, reach:w - reach]
        for dy in range(-reach, reach + 1):
            for dx in range(-reach, reach + 1):  # predicted[y, x] against truth[y - dy, x - dx]
                moved = truth[reach - dy:h - reach - dy, reach - dx:w - reach - dx]
                agreement[dy + reach, dx + reach] += np.count_nonzero(inner == moved)
    dy, dx = (int(v) - reach for v in np.unravel_index(agreement.argmax(), agreement.shape))
    assert abs(dx) <= 1 and abs(dy) <= 1, (dx, dy)
