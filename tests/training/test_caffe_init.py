"""Fine-tuning from Caffe weights: convert-caffe writes a training checkpoint (BGR/mean kept) from an
initialisation file (no ASPP, one 1x1 pre-training classifier) or a trained file; train --init starts from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model_export.checkpoint import load_checkpoint_model, read_training_checkpoint
from model_export.cli import main
from model_export.synthetic import CLASSES
from tests.training.conftest import tiny_config
from tests.weights.caffe_fixture import LAYERS, WIDTH, make_weights, write_caffemodel

THIN = {"base_width": WIDTH, "layers": list(LAYERS)}


@pytest.fixture(scope="module")
def init_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    blobs, truth = make_weights(seed=4)
    blobs = {k: v for k, v in blobs.items() if not k.startswith("fc1_voc12")}
    rng = np.random.default_rng(1)
    blobs["fc1000"] = [rng.normal(0, 0.01, (10, WIDTH * 32, 1, 1)).astype(np.float32), np.zeros(10, np.float32)]
    truth = {k: v for k, v in truth.items() if k.startswith("backbone.")}
    return write_caffemodel(tmp_path_factory.mktemp("init") / "init.caffemodel", blobs, msc=False), truth


def _classes_file(tmp_path: Path) -> Path:
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(list(CLASSES)))
    return path


def test_init_file_becomes_a_training_checkpoint(init_file, tmp_path: Path, capsys) -> None:
    path, truth = init_file
    # Not an ONNX model: it has no segmentation head.
    assert main(["convert-caffe", str(path), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "initialisation file" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()
    ckpt = tmp_path / "init.pt"
    assert main(["convert-caffe", str(path), "--checkpoint", str(ckpt), "--classes",
                 str(_classes_file(tmp_path))]) == 0
    model, info = load_checkpoint_model(ckpt)
    assert model.preprocessing == "caffe" and info["pretraining_head"] == "fc1000"
    assert info["classes"] == list(CLASSES) and info["arch"] == "deeplabv2_thin"
    state = model.state_dict()
    for key, value in truth.items():
        torch.testing.assert_close(state[key], value, rtol=2e-7, atol=0, msg=key)
    # The ASPP starts as the seed starts it: N(0, 0.01) weights, zero bias, one output per class.
    for conv in model.classifier.convs:
        assert conv.out_channels == len(CLASSES) and torch.count_nonzero(conv.bias) == 0
        assert 0.005 < float(conv.weight.detach().std()) < 0.015
    # Its head is untrained: exporting it as a servable model is refused.
    assert main(["export", "--weights", str(ckpt), "-o", str(tmp_path / "y.onnx")]) == 2
    assert "initialisation file" in capsys.readouterr().err


def test_train_init_from_caffe_checkpoint_keeps_caffe_preprocessing(init_file, tiny_voc: Path,
                                                                   tmp_path: Path) -> None:
    from model_export.train import train

    path, truth = init_file
    ckpt = tmp_path / "init.pt"
    assert main(["convert-caffe", str(path), "--checkpoint", str(ckpt), "--num-classes", str(len(CLASSES))]) == 0
    run = train(tiny_config(tiny_voc, tmp_path / "run", arch="deeplabv2_thin", model_kwargs=dict(THIN),
                            init=str(ckpt), max_iter=1, train_bn=False, crop_size=41,
                            base_lr=2.5e-4))
    assert np.isfinite(run["loss"])
    after = read_training_checkpoint(run["checkpoint"])
    assert after["preprocessing"] == "caffe" and after["iteration"] == 1
    state = after["state_dict"]
    # Frozen BN keeps the converted statistics; the convs took one SGD step away from the Caffe weights.
    key = "backbone.layer1.0.bn1.running_mean"
    torch.testing.assert_close(state[key], truth[key], rtol=2e-7, atol=0)
    conv = "backbone.layer4.0.conv2.weight"
    assert not torch.equal(state[conv], truth[conv])
    # ...from the Caffe weights, not from a random init.
    assert float(torch.nn.functional.cosine_similarity(state[conv].ravel(), truth[conv].ravel(), dim=0)) > 0.9


def test_trained_file_checkpoint_exports_the_same_labels(tmp_path: Path) -> None:
    import onnxruntime as ort

    from testkit.photos import photo

    blobs, _ = make_weights(seed=2)
    path = write_caffemodel(tmp_path / "train2.caffemodel", blobs)
    ckpt, direct, via = tmp_path / "t.pt", tmp_path / "direct.onnx", tmp_path / "via.onnx"
    assert main(["convert-caffe", str(path), "-o", str(direct), "--checkpoint", str(ckpt)]) == 0
    assert read_training_checkpoint(ckpt)["caffe_head"] == "fc1_voc12"
    assert main(["export", "--weights", str(ckpt), "-o", str(via)]) == 0
    image = photo("astronaut.png", size=(120, 96))[None]
    a, b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"image": image})[0]
            for p in (direct, via))
    assert np.array_equal(a, b)
