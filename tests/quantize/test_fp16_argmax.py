"""The fp16 variant's ArgMax compares the float32 upsampled logits, as the fp32 file does: rounding them to fp16
after the upsample turns logits that differ by less than half an fp16 step into ties, which ArgMax resolves to
the lower class id.

The labels are computed by ONNX's reference evaluator, which runs the graph as the specification defines it. ORT's
CPU provider has no fp16 ArgMax and drops the fp32->fp16->fp32 cast pair it would need, hiding the rounding;
the CUDA provider, which the fp16 variant is for, runs ArgMax in fp16 as written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx.reference import ReferenceEvaluator
from torch import nn

from model_export.export import build_metadata, export_onnx
from model_export.models import SegmentationModel
from model_export.msc import bake_msc
from model_export.quantize import convert_fp16


class _Pool8(nn.Module):
    """A stride-8 'backbone': average pooling, so the logits are upsampled 8x as a real model's are."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": F.avg_pool2d(x, 8)}


def _boundary_model() -> SegmentationModel:
    """Two classes: logit 0 is 1000 everywhere, logit 1 is 1000 ± ~0.5 from the red channel. Both sit on the fp16
    grid (spacing 0.5 at 1000), so the fp16 network computes them as the fp32 one does; across a red edge the
    upsampled logit 1 passes 1000.19 and 1000.06, which fp16 rounds to a tie with logit 0."""
    head = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[1, 0] = 0.2223  # x ImageNet-normalised red: +0.4999 at 255, -0.4708 at 0
        head.bias.fill_(1000.0)
    return SegmentationModel(_Pool8(), head, None, "deeplabv3_thin", "imagenet", 8).eval()


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = _boundary_model()
    meta = build_metadata(model, num_classes=2, input_size=64, source="tests: crafted logits")
    return export_onnx(model, tmp_path_factory.mktemp("fp16") / "edge.onnx", meta)


def _edges() -> np.ndarray:
    """Two 64x64 images: red on the left half (then on the right), a vertical edge between feature columns."""
    image = np.zeros((2, 64, 64, 3), np.uint8)
    image[0, :, :32, 0] = 255
    image[1, :, 32:, 0] = 255
    return image


def _labels(path: Path, images: np.ndarray) -> np.ndarray:
    return ReferenceEvaluator(str(path)).run(["labels"], {"image": images})[0]


@pytest.mark.parametrize("msc", [False, True], ids=["single-scale", "msc"])
def test_fp16_labels_equal_fp32_at_near_ties(fp32_model: Path, tmp_path: Path, msc: bool) -> None:
    source = bake_msc(fp32_model, tmp_path / "msc.onnx", (0.5, 1.0)) if msc else fp32_model
    half = tmp_path / "edge.fp16.onnx"
    convert_fp16(source, half)
    images = _edges()
    expected, got = _labels(source, images), _labels(half, images)
    assert set(np.unique(expected)) == {0, 1}
    # Rounded to fp16 after the upsample, two columns of every row (256 pixels) came out as class 0.
    assert np.array_equal(got, expected), f"{int((got != expected).sum())} pixels differ from fp32"


def test_fp16_argmax_reads_float32_logits(fp32_model: Path, tmp_path: Path) -> None:
    half = tmp_path / "edge.fp16.onnx"
    convert_fp16(fp32_model, half)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(half)))
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    (argmax,) = [n for n in model.graph.node if n.op_type == "ArgMax"]
    assert types[argmax.input[0]] == onnx.TensorProto.FLOAT
