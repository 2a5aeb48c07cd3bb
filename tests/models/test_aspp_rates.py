"""DeepLab-v3's ASPP takes its rates from the output stride: (6, 12, 18) at 16, doubled to (12, 24, 36) at 8, as
torchvision builds its stride-8 models. Checkpoints saved when every stride took (12, 24, 36) (format version 2
and earlier) rebuild that geometry, so they compute what they were trained to; torchvision's weights stay
bit-identical."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
from torchvision.models.segmentation import deeplabv3_resnet50 as tv_deeplabv3_resnet50
from torchvision.models.segmentation.deeplabv3 import ASPPConv

from model_export.architectures import build_model
from model_export.checkpoint import (
    checkpoint_model_kwargs,
    load_checkpoint_model,
    read_training_checkpoint,
    save_checkpoint,
    trained_geometry,
)
from model_export.cli import main
from model_export.models import SegmentationModel
from model_export.weights_torchvision import load_torchvision_state_dict

THIN = {"base_width": 4, "head_channels": 8}
PAPER = {16: [6, 12, 18], 8: [12, 24, 36]}


def aspp_rates(model: SegmentationModel) -> list[int]:
    """The dilation of each 3x3 ASPP branch of the main head."""
    return [m[0].dilation[0] for m in model.classifier.modules() if isinstance(m, ASPPConv)]


def geometry(model: torch.nn.Module) -> list[tuple[Any, ...]]:
    return [(name, m.dilation, m.padding, m.stride) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Conv2d)]


@pytest.mark.parametrize("arch", ["deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_thin"])
@pytest.mark.parametrize("stride", [8, 16])
def test_rates_follow_the_output_stride(arch: str, stride: int) -> None:
    with torch.device("meta"):  # the layout only
        model = build_model(arch, 21, output_stride=stride)
        legacy = build_model(arch, 21, output_stride=stride, legacy_aspp_rates=True)
    assert aspp_rates(model) == PAPER[stride]
    # Every ASPP conv pads by its rate, so the features keep their size.
    assert all(m[0].padding == m[0].dilation for m in model.classifier.modules() if isinstance(m, ASPPConv))
    assert aspp_rates(legacy) == [12, 24, 36]


def test_the_thin_default_is_the_papers_stride_16() -> None:
    assert aspp_rates(build_model("deeplabv3_thin", 3, **THIN)) == [6, 12, 18]


def test_torchvision_weights_stay_bit_identical() -> None:
    """torchvision builds deeplabv3_resnet50 at output stride 8 with rates (12, 24, 36): its weights load into the
    same network and compute the same logits, bit for bit."""
    torch.manual_seed(0)
    reference = tv_deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=3).eval()
    ours = load_torchvision_state_dict(reference.state_dict())
    assert geometry(ours.classifier) == geometry(reference.classifier)
    assert geometry(ours.backbone) == geometry(reference.backbone)
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        assert torch.equal(ours(x), reference.classifier(reference.backbone(x)["out"]))


def old_checkpoint(path: Path, output_stride: int, version: int = 2) -> tuple[Path, SegmentationModel]:
    """A deeplabv3_thin checkpoint as the code of format `version` wrote it (its rates: 12/24/36 at any stride),
    and the network it was trained in."""
    torch.manual_seed(0)
    kwargs = {**THIN, "output_stride": output_stride}
    model = build_model("deeplabv3_thin", 3, **kwargs, legacy_aspp_rates=True).eval()
    save_checkpoint(path, {"arch": "deeplabv3_thin", "num_classes": 3, "model_kwargs": kwargs,
                           "preprocessing": "imagenet", "classes": ["a", "b", "c"], "input_size": 160,
                           "state_dict": model.state_dict()})
    blob = torch.load(path, weights_only=False)
    blob["format"] = f"model_export.train/{version}"
    torch.save(blob, path)
    return path, model


@pytest.mark.parametrize("version", [1, 2])
def test_older_checkpoints_at_stride_16_compute_what_they_were_trained_to(tmp_path: Path, version: int) -> None:
    path, trained = old_checkpoint(tmp_path / "old.pt", 16, version)
    loaded = load_checkpoint_model(path)[0]
    assert aspp_rates(loaded) == [12, 24, 36]
    x = torch.randn(1, 3, 160, 160)  # 10x10 features: rate 6 reaches taps that rate 12 does not
    with torch.no_grad():
        assert torch.equal(loaded(x), trained(x))
        # The same weights in the current geometry compute something else: the setting matters.
        current = build_model("deeplabv3_thin", 3, **THIN, output_stride=16).eval()
        current.load_state_dict(trained.state_dict())
        assert not torch.allclose(current(x), trained(x))
    assert trained_geometry(read_training_checkpoint(path)) == {"legacy_aspp_rates": True}


def test_older_checkpoints_at_stride_8_are_the_current_network(tmp_path: Path) -> None:
    path, _ = old_checkpoint(tmp_path / "old8.pt", 8)
    assert aspp_rates(load_checkpoint_model(path)[0]) == [12, 24, 36]
    assert trained_geometry(read_training_checkpoint(path)) == {}  # a run at 16 from them takes 6/12/18


def test_current_checkpoints_rebuild_the_papers_rates(tmp_path: Path) -> None:
    model = build_model("deeplabv3_thin", 3, **THIN)
    path = save_checkpoint(tmp_path / "new.pt", {"arch": "deeplabv3_thin", "num_classes": 3, "model_kwargs": THIN,
                                                 "classes": ["a", "b", "c"], "state_dict": model.state_dict()})
    assert "legacy_aspp_rates" not in checkpoint_model_kwargs(read_training_checkpoint(path))
    assert aspp_rates(load_checkpoint_model(path)[0]) == [6, 12, 18]


def test_a_resumed_old_run_keeps_its_rates_in_the_new_format(tmp_path: Path) -> None:
    """What `train --resume` saves from an old checkpoint: the kwargs it rebuilt it with, in the current format."""
    path, _ = old_checkpoint(tmp_path / "old.pt", 16)
    old = read_training_checkpoint(path)
    resumed = save_checkpoint(tmp_path / "resumed.pt", {k: v for k, v in old.items() if k != "format"}
                              | {"model_kwargs": checkpoint_model_kwargs(old)})
    assert read_training_checkpoint(resumed)["format"] != old["format"]
    assert aspp_rates(load_checkpoint_model(resumed)[0]) == [12, 24, 36]


def dilations(onnx_path: Path) -> set[int]:
    found = set()
    for node in onnx.load(str(onnx_path)).graph.node:
        for attr in node.attribute:
            if node.op_type == "Conv" and attr.name == "dilations":
                found.add(attr.ints[0])
    return found


def test_export_of_an_older_checkpoint_keeps_its_rates(tmp_path: Path) -> None:
    path, _ = old_checkpoint(tmp_path / "old.pt", 16)
    assert main(["export", "--weights", str(path), "-o", str(tmp_path / "old.onnx")]) == 0
    assert {12, 24, 36} <= dilations(tmp_path / "old.onnx") and 6 not in dilations(tmp_path / "old.onnx")
