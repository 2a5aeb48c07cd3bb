"""Session-wide fixtures: tiny contract-conforming ONNX models exported through the real export path."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A thin DeepLab-v3 with 5 classes, random weights, exported with the real exporter (input_size 64)."""
    import torch

    from model_export.architectures import build_model
    from model_export.export import build_metadata, export_onnx

    torch.manual_seed(0)
    model = build_model("deeplabv3_thin", num_classes=5, base_width=8, head_channels=16).eval()
    meta = build_metadata(model, num_classes=5, classes=["background", "red", "green", "blue", "stripes"],
                          input_size=64, source="tests: random init")
    return export_onnx(model, tmp_path_factory.mktemp("models") / "tiny.onnx", meta)


@pytest.fixture(scope="session")
def tiny_onnx_model_with_confidence(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same as tiny_onnx_model but with the optional uint8 `confidence` output."""
    import torch

    from model_export.architectures import build_model
    from model_export.export import build_metadata, export_onnx

    torch.manual_seed(0)
    model = build_model("deeplabv3_thin", num_classes=5, base_width=8, head_channels=16).eval()
    meta = build_metadata(model, num_classes=5, input_size=64, source="tests: random init")
    return export_onnx(model, tmp_path_factory.mktemp("models") / "tiny_conf.onnx", meta, confidence=True)
