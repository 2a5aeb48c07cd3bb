"""Multi-scale test-time inference (DeepLab's MSC) baked into a contract ONNX file.

DeepLab-v2 tests at scales 0.5, 0.75 and 1: the image is resized to each, the network runs on each, the
logits are upsampled back and fused by an element-wise **max**; a mirrored pass is optional. This module
rewrites an exported graph instead of re-tracing the model, so it works on any file `export_onnx` wrote,
the shipped demo model included, with no checkpoint and no torch:

    image ─▶ Transpose ─▶ Cast ─┬─ Resize(s₁) ─▶ network ─▶ logits at H×W ─┐
                                ├─ Resize(s₂) ─▶ network ─▶ logits at H×W ─┼─▶ Max ─▶ ArgMax ─▶ labels
                                └─ …  (and each mirrored, then mirrored back) ┘

The copies share the weights (initializers are not duplicated). Each copy's last Resize already takes its
target size from the `image` input, so the logits of every scale come back at the input's H×W; being the
exported Resize, it keeps the model's pixel mapping (corner-aligned for a converted Caffe model: the metadata's
`upsampling`). The scale pyramid resizes the image with half-pixel centres, as `F.interpolate` does. The input,
outputs, opset and metadata stay as they were (uint8 in, labels out): the service runs it unchanged.
Scaled sizes are floor(H·s), as `F.interpolate(scale_factor=s)` computes them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from google.protobuf import json_format, message
from onnx import helper, numpy_helper

from service.core.contract import INPUT_NAME, LABELS_OUTPUT

from .atomic import atomic_path
from .catalog import DEEPLAB_SCALES


class MscError(ValueError):
    """The graph is not one `export_onnx` wrote, so the scale pyramid cannot be inserted."""


def parse_scales(text: str) -> tuple[float, ...]:
    """'0.5,0.75,1' -> (0.5, 0.75, 1.0); each scale in (0, 4]."""
    try:
        scales = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"expected comma-separated scales, got {text!r}") from None
    if not scales or any(not 0 < s <= 4 for s in scales) or len(set(scales)) != len(scales):
        raise ValueError(f"scales must be distinct numbers in (0, 4], got {text!r}")
    return scales


def _load(src: str | Path) -> onnx.ModelProto:
    """The ONNX model in `src`; MscError for a file that is not one."""
    try:
        return onnx.load(str(src))
    except (message.Error, json_format.Error) as exc:  # what protobuf raises for bytes that are not a model
        raise MscError(f"{src} is not an ONNX model file: {exc}") from None


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _float_input(graph: onnx.GraphProto) -> str:
    """The float NCHW image in 0..255: Cast(Transpose(image))."""
    for node in graph.node:
        if node.op_type == "Transpose" and list(node.input) == [INPUT_NAME]:
            for cast in graph.node:
                if cast.op_type == "Cast" and list(cast.input) == [node.output[0]]:
                    return cast.output[0]
    raise MscError("no Cast(Transpose(image)) at the start of the graph: not an export_onnx file")


def logits_name(graph: onnx.GraphProto) -> str:
    """The upsampled logits [N, C, H, W]: the input of the ArgMax behind the `labels` output."""
    producers = _producers(graph)
    node = producers.get(LABELS_OUTPUT)
    while node is not None and node.op_type == "Cast":
        node = producers.get(node.input[0])
    if node is None or node.op_type != "ArgMax":
        raise MscError("`labels` is not Cast(ArgMax(logits)): not an export_onnx file")
    return node.input[0]


def _core(graph: onnx.GraphProto, start: str, end: str) -> list[onnx.NodeProto]:
    """The nodes that compute `end` from `start` (and from graph inputs, constants), in graph order."""
    producers = _producers(graph)
    needed: set[int] = set()
    stack = [end]
    while stack:
        name = stack.pop()
        node = producers.get(name)
        if name == start or node is None or id(node) in needed:
            continue
        needed.add(id(node))
        stack.extend(i for i in node.input if i)
    return [n for n in graph.node if id(n) in needed]


def _copy(nodes: Sequence[onnx.NodeProto], prefix: str, rename: dict[str, str]) -> list[onnx.NodeProto]:
    """`nodes` with every tensor they produce prefixed; inputs follow `rename` (outside tensors stay)."""
    produced = {o for n in nodes for o in n.output}
    names = {**{o: prefix + o for o in produced}, **rename}
    out = []
    for node in nodes:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = prefix + node.name
        new.input[:] = [names.get(i, i) if i else i for i in node.input]
        new.output[:] = [names[o] for o in node.output]
        out.append(new)
    return out


def _mirror(name: str, out: str) -> list[onnx.NodeProto]:
    """Reverse the W axis of an NCHW tensor (Slice with step -1)."""
    consts = {"starts": [-1], "ends": [np.iinfo(np.int64).min], "axes": [3], "steps": [-1]}
    nodes = [helper.make_node("Constant", [], [f"{out}/{k}"], value=numpy_helper.from_array(
        np.array(v, np.int64), f"{out}/{k}")) for k, v in consts.items()]
    nodes.append(helper.make_node("Slice", [name, *(f"{out}/{k}" for k in consts)], [out], name=out))
    return nodes


def _toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Kahn's order by tensor dependencies (ONNX needs producers before consumers)."""
    done, ordered, pending = set(available), [], list(nodes)
    while pending:
        ready = [n for n in pending if all(not i or i in done for i in n.input)]
        if not ready:
            raise MscError("cycle or dangling input while inserting the scale pyramid")
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
        ordered.extend(ready)
        done.update(o for n in ready for o in n.output)
    return ordered


def bake_msc(src: str | Path, dst: str | Path, scales: Sequence[float] = DEEPLAB_SCALES,
             flip: bool = False) -> Path:
    """Write `dst`: `src` with max fusion over `scales` (and mirrors) in the graph; metadata records it."""
    model = _load(src)
    precision = {p.key: p.value for p in model.metadata_props}.get("precision", "fp32")
    if precision != "fp32":
        raise MscError(f"{Path(src).name} is a {precision} variant: bake MSC into the fp32 file (or use "
                       f"`segment-export export --msc ... --precision {precision}`)")
    graph = model.graph
    start, end = _float_input(graph), logits_name(graph)
    if any(n.op_type == "Max" and n.output[0] == end for n in graph.node):
        raise MscError("the graph already fuses several scales")
    core = _core(graph, start, end)
    core_ids = {id(n) for n in core}
    new_nodes = [n for n in graph.node if id(n) not in core_ids]
    fused = []
    for k, scale in enumerate(scales):
        for mirrored in (False, True) if flip else (False,):
            tag = f"msc{k}{'f' if mirrored else ''}/"
            x = start
            if scale != 1.0:
                new_nodes.append(helper.make_node(
                    "Constant", [], [tag + "scales"],
                    value=numpy_helper.from_array(np.array([1, 1, scale, scale], np.float32), tag + "scales")))
                new_nodes.append(helper.make_node(
                    "Resize", [x, "", tag + "scales"], [tag + "input"], name=tag + "Resize", mode="linear",
                    coordinate_transformation_mode="half_pixel"))
                x = tag + "input"
            if mirrored:
                new_nodes += _mirror(x, tag + "mirrored")
                x = tag + "mirrored"
            new_nodes += _copy(core, tag, {start: x})
            out = tag + end
            if mirrored:
                new_nodes += _mirror(out, tag + "unmirrored")
                out = tag + "unmirrored"
            fused.append(out)
    new_nodes.append(helper.make_node("Max", fused, [end], name="msc/Max") if len(fused) > 1
                     else helper.make_node("Identity", fused, [end], name="msc/Identity"))
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    ordered = _toposort(new_nodes, available)
    del graph.node[:]
    graph.node.extend(ordered)
    props = {p.key: p.value for p in model.metadata_props}
    props["msc_scales"] = json.dumps(list(scales))
    props["msc_flip"] = "true" if flip else "false"
    helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    dst = Path(dst)
    with atomic_path(dst) as partial:  # `dst` may be the served model: replaced only by a complete file
        onnx.save(model, str(partial))
    return dst

