"""DeepLab's native VOC protocol (pad, never resize) and dense-CRF post-processing in evaluate."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from model_export.checkpoint import load_checkpoint_model
from model_export.cli import main
from model_export.data import VOCSegmentation, load_image
from model_export.evaluate import evaluate_model
from model_export.export import build_metadata, export_onnx, read_metadata
from model_export.protocol import pad_native, resolve_protocol
from model_export.synthetic import CLASSES
from service.core.contract import VOC_CLASSES
from service.core.crf import CrfParams, CrfUnavailable, dense_crf, probs_from_labels

MEAN = (124, 116, 104)


def test_native_geometry_pads_and_never_resizes() -> None:
    rng = np.random.default_rng(0)
    voc = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)  # a typical VOC image
    canvas, info = pad_native(voc, 513, MEAN)
    assert canvas.shape == (513, 513, 3) and np.array_equal(canvas[:375, :500], voc)
    assert (canvas[375:] == MEAN).all() and (canvas[:, 500:] == MEAN).all()
    assert (info.new_h, info.new_w, info.orig_h, info.orig_w, info.top, info.left) == (375, 500, 375, 500, 0, 0)
    tall = rng.integers(0, 256, (600, 300, 3), dtype=np.uint8)  # larger than 513: kept whole
    canvas, info = pad_native(tall, 513, MEAN)
    assert canvas.shape == (600, 513, 3) and np.array_equal(canvas[:, :300], tall)


def test_auto_protocol_is_native_for_voc_models_only() -> None:
    assert resolve_protocol("auto", VOC_CLASSES) == "native"
    assert resolve_protocol("auto", CLASSES) == "letterbox"
    assert resolve_protocol("letterbox", VOC_CLASSES) == "letterbox"
    with pytest.raises(ValueError, match="protocol"):
        resolve_protocol("stretch", CLASSES)


@pytest.fixture(scope="module")
def padded_onnx(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with input size 96: larger than the 48-64 px scenes, so native pads them."""
    model, info = load_checkpoint_model(tiny_checkpoint)
    meta = build_metadata(model, num_classes=info["num_classes"], classes=info["classes"], input_size=96)
    return export_onnx(model, tmp_path_factory.mktemp("native") / "tiny96.onnx", meta)


def test_native_protocol_runs_the_padded_unresized_image(tiny_voc: Path, padded_onnx: Path,
                                                         monkeypatch) -> None:
    from service.core.engine import Engine

    fed: list[np.ndarray] = []
    run, run_images = Engine.run, Engine.run_images  # the engine's two entry points (a batch, a list of images)
    monkeypatch.setattr(Engine, "run", lambda self, batch: fed.append(batch.copy()) or run(self, batch))
    monkeypatch.setattr(Engine, "run_images",
                        lambda self, images: fed.append(np.stack(images)) or run_images(self, images))
    preds: dict[str, np.ndarray] = {}
    evaluate_model(padded_onnx, tiny_voc, "val", protocol="native", progress=False,
                   on_prediction=lambda i, t, p: preds.__setitem__(i, p))
    native_inputs, fed[:] = list(fed), []
    evaluate_model(padded_onnx, tiny_voc, "val", protocol="letterbox", progress=False)
    boxed_inputs = np.concatenate(fed)
    session = ort.InferenceSession(str(padded_onnx), providers=["CPUExecutionProvider"])
    pad = read_metadata(padded_onnx).pad_rgb
    data = VOCSegmentation(tiny_voc, "val")
    for index, name in enumerate(data.ids):
        image = load_image(data.image_path(index))
        canvas, _ = pad_native(image, 96, pad)
        (labels,) = session.run(None, {"image": canvas[None]})
        assert np.array_equal(preds[name], labels[0, :image.shape[0], :image.shape[1]])
        assert np.array_equal(native_inputs[index][0], canvas)  # what the model saw: pixels untouched
        # Letterboxing upscales the scene to 96 px instead.
        assert not np.array_equal(boxed_inputs[index][:image.shape[0], :image.shape[1]], image)


def test_crf_sharpens_a_blurred_boundary() -> None:
    image = np.zeros((80, 96, 3), np.uint8)
    image[20:60, 30:80] = (220, 40, 40)
    truth = (image[..., 0] > 0).astype(np.uint8)
    coarse = np.zeros_like(truth)
    coarse[16:64, 24:84] = 1  # a blob that spills over the object's edges, as stride-8 logits do
    refined = dense_crf(image, probs_from_labels(coarse, 2, 0.6))
    assert (refined == truth).mean() > (coarse == truth).mean() + 0.05
    assert (refined == truth).mean() > 0.99


def test_crf_in_evaluate_for_onnx_and_checkpoints(tiny_voc: Path, tiny_checkpoint: Path, padded_onnx: Path,
                                                  capsys) -> None:
    for model in (padded_onnx, tiny_checkpoint):
        seen: list[str] = []
        scores, _ = evaluate_model(model, tiny_voc, "val", crf=CrfParams(), progress=False,
                                   on_prediction=lambda i, t, p, seen=seen: seen.append(i))
        assert 0.0 <= scores.miou <= 1.0 and len(seen) == 4
    assert main(["evaluate", "--model", str(padded_onnx), "--data", str(tiny_voc), "--crf",
                 "--protocol", "native", "--no-progress"]) == 0
    assert "mIoU" in capsys.readouterr().out


def test_missing_crf_library_is_a_clear_error(tiny_voc: Path, padded_onnx: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(CrfUnavailable, match="pydensecrf2"):
        dense_crf(np.zeros((4, 4, 3), np.uint8), np.full((2, 4, 4), 0.5, np.float32))
    assert main(["evaluate", "--model", str(padded_onnx), "--data", str(tiny_voc), "--crf", "--no-progress"]) == 2
    assert "pydensecrf2" in capsys.readouterr().err


def test_checkpoint_max_fusion(tiny_voc: Path, tiny_checkpoint: Path, capsys) -> None:
    mean, _ = evaluate_model(tiny_checkpoint, tiny_voc, "val", scales=(0.5, 1.0), progress=False)
    fused, _ = evaluate_model(tiny_checkpoint, tiny_voc, "val", scales=(0.5, 1.0), fusion="max", progress=False)
    assert 0.0 <= fused.miou <= 1.0 and 0.0 <= mean.miou <= 1.0
    assert main(["evaluate", "--model", str(tiny_checkpoint), "--data", str(tiny_voc), "--scales", "0.5,1",
                 "--fusion", "max", "--no-progress"]) == 0
    assert "mIoU" in capsys.readouterr().out
    with pytest.raises(ValueError, match="fusion"):
        evaluate_model(tiny_checkpoint, tiny_voc, "val", fusion="median", progress=False)
