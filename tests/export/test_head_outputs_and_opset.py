"""A head of one output (a sigmoid/binary head) is refused in one line saying why, at export and at training: the
exported graph labels each pixel with the ArgMax over the class outputs, which is 0 for one output whatever its
logit. An `--opset` the exporter cannot write is refused in one line naming the supported range."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torchvision.models.segmentation import lraspp_mobilenet_v3_large

from model_export.architectures import build_model
from model_export.cli import main
from model_export.errors import ModelExportError
from model_export.export import MAX_OPSET, MIN_OPSET, build_metadata, export_onnx
from model_export.train import train
from model_export.train_config import TrainConfig
from testkit.cli import one_line_error

RANDOM = ["export", "--random-init", "--arch", "deeplabv3_thin"]


@pytest.fixture(scope="module")
def binary_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torchvision's LR-ASPP with one output, its bias making every pixel foreground under a sigmoid."""
    torch.manual_seed(0)
    model = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=1).eval()
    with torch.no_grad():
        model.classifier.high_classifier.bias.fill_(50.0)
    path = tmp_path_factory.mktemp("binary") / "binary.pth"
    torch.save(model.state_dict(), path)
    return path


def test_a_one_output_torchvision_head_is_refused(binary_weights: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "binary.onnx"
    code = main(["export", "--weights", str(binary_weights), "-o", str(out)])
    one_line_error(code, capsys, "binary.pth", "1 output", "sigmoid", "2 classes", "background and foreground")
    assert not out.exists()


def test_a_one_class_random_init_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.onnx"
    code = main([*RANDOM, "--num-classes", "1", "-o", str(out)])
    one_line_error(code, capsys, "--num-classes", "got 1", "sigmoid head needs 2 classes")
    assert not out.exists()


def test_two_classes_export_and_label_both(tmp_path: Path) -> None:
    """The binary model the refusal points to: 2 outputs, and the graph labels pixels 1 where class 1 scores more."""
    torch.manual_seed(0)
    model = build_model("deeplabv3_thin", 2, base_width=4, head_channels=8).eval()
    with torch.no_grad():
        model.classifier[-1].bias.copy_(torch.tensor([0.0, 50.0]))
    path = export_onnx(model, tmp_path / "two.onnx", build_metadata(model, num_classes=2, input_size=64))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).integers(0, 256, (1, 40, 48, 3), dtype=np.uint8)
    assert np.unique(session.run(None, {"image": image})[0]).tolist() == [1]


def test_the_python_api_refuses_one_output() -> None:
    model = build_model("deeplabv3_thin", 1, base_width=4, head_channels=8).eval()
    with pytest.raises(ModelExportError, match=r"1 output.*2 classes, background and foreground"):
        build_metadata(model, num_classes=1, input_size=64)


def test_training_one_class_is_refused(tmp_path: Path) -> None:
    cfg = TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), arch="deeplabv3_thin", classes=["object"])
    with pytest.raises(ModelExportError, match=r"classes names 1 class.*at least 2.*background and foreground"):
        train(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("opset", ["99", str(MAX_OPSET + 1), "16"])
def test_an_opset_out_of_range_is_one_line(opset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.onnx"
    code = main([*RANDOM, "--opset", opset, "-o", str(out)])
    one_line_error(code, capsys, f"--opset {opset}", f"choose {MIN_OPSET} to {MAX_OPSET}")
    assert not out.exists()


def test_the_highest_opset_exports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.onnx"
    code = main([*RANDOM, "--num-classes", "3", "--opset", str(MAX_OPSET), "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    assert {o.version for o in onnx.load(str(out)).opset_import if o.domain in ("", "ai.onnx")} == {MAX_OPSET}
