"""A model that fails inside onnxruntime on one kind of input (a poisoned image) and answers every other input
exactly like the rule model, and such a poisoned image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.service.svc_helpers import make_rule_model, scene

POISON = 200  # a red value at the top-left pixel of a batch that makes the graph fail inside onnxruntime


def make_poisonable_model(path: Path) -> Path:
    """The rule model plus a data-dependent Gather: it reads row `R` of a 200-row table, where R is the largest
    red value among the top-left pixels of the batch's images. R >= 200 is an index out of bounds, which
    onnxruntime refuses at run time ("indices element out of data bounds"), a real ORT error. The gathered value
    is 0, added to the labels, so every other input is answered exactly like the rule model."""
    make_rule_model(path)
    model = onnx.load(str(path))
    g = model.graph
    labels = next(n for n in g.node if n.output[0] == "labels")
    labels.output[0] = "labels_clean"
    g.initializer.extend([
        helper.make_tensor("start", TensorProto.INT64, [4], [0, 0, 0, 0]),
        helper.make_tensor("end", TensorProto.INT64, [4], [2**62, 1, 1, 1]),
        helper.make_tensor("table", TensorProto.INT32, [POISON], [0] * POISON),
    ])
    g.node.extend([
        helper.make_node("Slice", ["image", "start", "end"], ["corner"]),  # [N,1,1,1] uint8: R of pixel (0,0)
        helper.make_node("ReduceMax", ["corner"], ["corner_max"], keepdims=0),  # scalar: any image can poison
        helper.make_node("Cast", ["corner_max"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["zero_or_fail"], axis=0),
        # In int32: onnxruntime has no uint8 Add before 1.21, and the service supports older ones.
        helper.make_node("Cast", ["labels_clean"], ["labels_wide"], to=TensorProto.INT32),
        helper.make_node("Add", ["labels_wide", "zero_or_fail"], ["labels_sum"]),
        helper.make_node("Cast", ["labels_sum"], ["labels"], to=TensorProto.UINT8),
    ])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def poisoned(width: int = 96, height: int = 72) -> np.ndarray:
    """A scene whose top-left block makes the poisonable model's run fail."""
    image = scene(width, height)
    image[:8, :8] = (POISON + 50, 0, 0)  # a block, so it survives the letterbox resize
    return image
