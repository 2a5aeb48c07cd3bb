"""Which nodes of a contract graph the int8 variant keeps in float (`keep_float`), found on the graph's data flow,
not by node order (numbers and command in docs/PRECISION.md; the default keeps all three):
- "tail": every node after the last Convs (bilinear Resize to full size, ArgMax, Softmax/confidence, Casts).
  Argmax over 8-bit logits turns small logit gaps into ties.
- "last_conv": every classifier conv that feeds the logits (DeepLab-v2's four ASPP convs, LR-ASPP's two, each
  copy's in a multi-scale graph), so the logits themselves are never rounded to 8 bits.
- "first_conv": the stem conv that reads the normalised image (each copy's, in a multi-scale graph).
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx

from service.core.contract import ContractError

KEEP_FLOAT_CHOICES = ("tail", "last_conv", "first_conv")
# All three: on the demo model they take int8/fp32 label agreement on real photos from 99.39% to 99.54% (mIoU is
# unchanged either way), and together they are < 1% of ResNet-50's MACs (no slowdown measurable): docs/PRECISION.md.
DEFAULT_KEEP_FLOAT: tuple[str, ...] = ("tail", "last_conv", "first_conv")


def graph_nodes_to_keep_float(model: onnx.ModelProto, keep_float: Iterable[str]) -> list[str]:
    """Names of the nodes that `keep_float` (see the module doc) leaves unquantised. Nodes must be named.

    The rules follow the data flow, not the node order, so that every branch counts: DeepLab-v2's logits are
    the sum of four ASPP convs, LR-ASPP's of two classifier convs, a multi-scale graph has one copy per scale.
    - "last_conv": every Conv from which the logits (the ArgMax input) are reached through non-Conv nodes only;
    - "first_conv": every Conv reached from the graph input (the normalised image) through non-Conv nodes only;
    - "tail": every node downstream of a last conv.
    Shape and Size outputs carry no data of their input, so no rule follows them (a Resize whose target size is
    read from the image is not "fed by" the image).
    """
    unknown = set(keep_float) - set(KEEP_FLOAT_CHOICES)
    if unknown:
        raise ValueError(f"unknown keep_float entries {sorted(unknown)}; choose from {KEEP_FLOAT_CHOICES}")
    nodes = list(model.graph.node)  # topologically sorted, as ONNX requires
    if not any(n.op_type == "Conv" for n in nodes):
        raise ContractError("the model has no Conv node; is this a segmentation model?")
    last_convs = _last_convs(model.graph)
    names: list[str] = []
    if "first_conv" in keep_float:
        names.extend(_first_convs(model.graph))
    if "last_conv" in keep_float:
        names.extend(n.name for n in last_convs)
    if "tail" in keep_float:
        names.extend(_downstream(nodes, last_convs))
    return list(dict.fromkeys(names))


# Ops whose outputs hold no values of their input (only its shape): data-flow walks do not pass through them.
_SHAPE_OPS = frozenset({"Shape", "Size"})


def _last_convs(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Every Conv whose output reaches the logits (ArgMax's input; the graph outputs if there is no ArgMax)
    through non-Conv nodes only, in graph order."""
    producer = {out: node for node in graph.node for out in node.output}
    argmax_inputs = [n.input[0] for n in graph.node if n.op_type == "ArgMax"]
    stack = argmax_inputs or [o.name for o in graph.output]
    seen: set[str] = set()
    found: set[str] = set()
    while stack:
        tensor = stack.pop()
        node = producer.get(tensor)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type == "Conv":
            found.add(id(node))
        elif node.op_type not in _SHAPE_OPS:
            stack.extend(i for i in node.input if i)
    convs = [n for n in graph.node if id(n) in found]
    if not convs:
        raise ContractError("no Conv node feeds the logits; is this a segmentation model?")
    return convs


def _first_convs(graph: onnx.GraphProto) -> list[str]:
    """Names of every Conv reached from a graph input through non-Conv nodes only (the stem of each copy)."""
    initializers = {init.name for init in graph.initializer}
    reached = {i.name for i in graph.input if i.name not in initializers}
    names = []
    for node in graph.node:  # one pass suffices in topological order
        if node.op_type in _SHAPE_OPS or not any(i in reached for i in node.input):
            continue
        if node.op_type == "Conv":
            names.append(node.name)
        else:
            reached.update(node.output)
    return names


def _downstream(nodes: list[onnx.NodeProto], starts: Iterable[onnx.NodeProto]) -> list[str]:
    """Names of every node that consumes, transitively, an output of one of `starts` (not through Shape/Size)."""
    reached = {out for start in starts for out in start.output}
    names = []
    for node in nodes:  # one pass suffices in topological order
        if node.op_type not in _SHAPE_OPS and any(i in reached for i in node.input):
            reached.update(node.output)
            names.append(node.name)
    return names
