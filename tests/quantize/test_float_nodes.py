"""The keep_float rules follow the data flow: every conv that feeds the logits stays float, in every branch.

DeepLab-v2's logits are the sum of four ASPP convs and LR-ASPP's of two classifier convs; a multi-scale graph has
one stem and one classifier per copy. None of them may be rounded to 8 bits (docs/PRECISION.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from model_export.calibration import CalibrationSet
from model_export.quantize import graph_nodes_to_keep_float, quantize_int8

SIZE = 64


def _export(arch: str, out: Path, **kwargs: object) -> Path:
    import torch

    from model_export.architectures import build_model
    from model_export.export import build_metadata, export_onnx

    torch.manual_seed(0)
    model = build_model(arch, 5, **kwargs).eval()
    return export_onnx(model, out, build_metadata(model, num_classes=5, input_size=SIZE))


def _logit_path(graph: onnx.GraphProto) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    """(Convs that reach ArgMax's input through non-Conv nodes, the non-Conv nodes on those paths)."""
    producer = {out: node for node in graph.node for out in node.output}
    stack = [n.input[0] for n in graph.node if n.op_type == "ArgMax"]
    assert stack, "no ArgMax in the graph"
    seen: set[str] = set()
    convs, between = [], []
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == "Conv":
            convs.append(node)
        elif node.op_type not in ("Shape", "Size"):
            between.append(node)
            stack.extend(i for i in node.input if i)
    return convs, between


@pytest.mark.parametrize(("arch", "kwargs", "n_classifier_convs"), [
    ("deeplabv2_thin", {"base_width": 4}, 4),  # ASPP: sum of four dilated 3x3 convs
    ("lraspp_mobilenet_v3_large", {}, 2),  # low_classifier + high_classifier
])
def test_int8_keeps_every_conv_feeding_the_logits_float(arch: str, kwargs: dict[str, object],
                                                        n_classifier_convs: int, tmp_path: Path) -> None:
    fp32 = _export(arch, tmp_path / "fp32.onnx", **kwargs)
    rng = np.random.default_rng(0)
    calib = CalibrationSet([rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)], "random", "random")
    kept = quantize_int8(fp32, tmp_path / "int8.onnx", calib)
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    producer = {out: node for node in graph.node for out in node.output}
    initializers = {init.name for init in graph.initializer}

    convs, between = _logit_path(graph)
    assert len(convs) == n_classifier_convs
    for conv in convs:
        assert conv.name in kept
        assert conv.input[1] in initializers and conv.input[1] not in producer  # float weights, no DequantizeLinear
    assert not [n.name for n in between if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def test_msc_graph_keeps_every_copy_stem_and_classifier_float(tmp_path: Path) -> None:
    from model_export.msc import bake_msc

    fp32 = _export("deeplabv2_thin", tmp_path / "fp32.onnx", base_width=4)
    graph = onnx.load(str(bake_msc(fp32, tmp_path / "msc.onnx", (0.5, 1.0), flip=True)))
    copies = 4  # two scales, each also mirrored
    stems = graph_nodes_to_keep_float(graph, ["first_conv"])
    classifiers = graph_nodes_to_keep_float(graph, ["last_conv"])
    assert len(stems) == copies and all(name.endswith("/model/backbone/conv1/Conv") for name in stems)
    assert len(classifiers) == 4 * copies and all("/model/classifier/convs." in name for name in classifiers)
    tail = {n.op_type for n in graph.graph.node if n.name in graph_nodes_to_keep_float(graph, ["tail"])}
    assert {"Max", "ArgMax"} <= tail and "Conv" not in tail
