"""Weights holding NaN or infinity are refused at export: the service would answer garbage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model_export.architectures import build_model
from model_export.checkpoint import save_checkpoint
from model_export.cli import main
from model_export.export import NonFiniteWeightsError, build_metadata, export_onnx

KWARGS = {"base_width": 4, "head_channels": 8}


@pytest.mark.parametrize(("tensor", "value"), [("classifier.4.weight", float("nan")),
                                                ("backbone.layer1.0.bn1.running_var", float("inf"))])
def test_export_refuses_a_checkpoint_with_non_finite_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             tensor: str, value: float) -> None:
    torch.manual_seed(1)
    model = build_model("deeplabv3_thin", 3, **KWARGS)
    state = model.state_dict()
    state[tensor].view(-1)[0] = value
    path = save_checkpoint(tmp_path / "checkpoint.pt", {
        "arch": "deeplabv3_thin", "num_classes": 3, "model_kwargs": KWARGS, "preprocessing": "imagenet",
        "classes": ["background", "a", "b"], "input_size": 64, "state_dict": state, "iteration": 3,
    })
    out = tmp_path / "m.onnx"
    assert main(["export", "--weights", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"segment-export export: error: {path} holds non-finite weights"), err
    assert f"1 tensors, e.g. {tensor}" in err, err
    assert not out.exists()


def test_export_onnx_refuses_non_finite_weights_from_any_caller(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_model("deeplabv3_thin", 3, **KWARGS)
    meta = build_metadata(model, num_classes=3, input_size=64)
    with torch.no_grad():
        model.backbone.conv1.weight[0, 0, 0, 0] = float("-inf")
    with pytest.raises(NonFiniteWeightsError, match=r"deeplabv3_thin model \(random-init\) holds non-finite "
                                                    r"weights .* backbone\.conv1\.weight"):
        export_onnx(model, tmp_path / "m.onnx", meta)
    assert not (tmp_path / "m.onnx").exists()
