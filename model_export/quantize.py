"""Reduced-precision variants of a contract ONNX file: calibrated int8 (QDQ) for CPU, fp16 for CUDA.

Both keep the contract untouched at the edges: uint8 NHWC `image` in, uint8 `labels` (and `confidence`) out,
the same metadata plus `precision`, the calibration set and the measured label agreement with fp32.

What stays in float in the int8 file (`keep_float`), chosen by measurement on a trained demo-style thin model
(numbers and command in docs/PRECISION.md); the default keeps all three:
- "tail": every node after the last Convs (bilinear Resize to full size, ArgMax, Softmax/confidence, Casts).
  Argmax over 8-bit logits turns small logit gaps into ties.
- "last_conv": every classifier conv that feeds the logits (DeepLab-v2's four ASPP convs, LR-ASPP's two, each
  copy's in a multi-scale graph), so the logits themselves are never rounded to 8 bits.
- "first_conv": the stem conv that reads the normalised image (each copy's, in a multi-scale graph).
The rules are found on the graph's data flow, not by node order (`graph_nodes_to_keep_float`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx

from service.core.contract import CONFIDENCE_OUTPUT, INPUT_NAME, LABELS_OUTPUT, ContractError, ModelMetadata

from .calibration import CalibrationSet, ImageReader, calibration_set, is_synthetic_demo, synthetic_set
from .catalog import DEFAULT_CALIBRATION_COUNT, PRECISIONS
from .errors import ModelExportError

log = logging.getLogger(__name__)

KEEP_FLOAT_CHOICES = ("tail", "last_conv", "first_conv")
# All three: on the demo model they take int8/fp32 label agreement on real photos from 99.39% to 99.54% (mIoU is
# unchanged either way), and together they are < 1% of ResNet-50's MACs (no slowdown measurable): docs/PRECISION.md.
DEFAULT_KEEP_FLOAT: tuple[str, ...] = ("tail", "last_conv", "first_conv")
# Agreement with fp32 is measured on at most this many images (calibration images or demo scenes).
AGREEMENT_IMAGES = 16


def make_variant(fp32_path: Path, out_path: Path, precision: str, calibration_dir: Path | None = None,
                 calibration_count: int = DEFAULT_CALIBRATION_COUNT, *, keep_float: Sequence[str] = DEFAULT_KEEP_FLOAT,
                 threads: int = 0) -> Path:
    """Write the `precision` variant of the contract model at `fp32_path` to `out_path`; return `out_path`.

    int8 needs calibration images (`calibration_dir`), except for the synthetic demo model, whose scenes are
    rendered. The metadata records precision, calibration count and sha256, and `agreement_fp32`: the fraction
    of label pixels equal to the fp32 model's on the calibration images (or demo scenes).
    """
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    props = _props(fp32_path)
    meta = ModelMetadata.from_props(props)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if precision == "int8":
        calib = calibration_set(meta, calibration_dir, calibration_count)
        float_nodes = quantize_int8(fp32_path, out_path, calib, keep_float=keep_float)
        props.update({
            "calibration_count": str(calib.count), "calibration_sha256": calib.sha256,
            "calibration_source": calib.origin, "quantization": "QDQ static, per-channel s8 weights, u8 activations",
            "float_nodes": ",".join(keep_float), "float_node_names": ",".join(float_nodes),
        })
        agreement_images = calib.images[:AGREEMENT_IMAGES]
        agreement_origin = calib.origin
    elif precision == "fp16":
        convert_fp16(fp32_path, out_path)
        agreement_images, agreement_origin = _fp16_agreement_images(meta, calibration_dir, calibration_count)
    else:
        raise ModelExportError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS[1:])}",
                               option="precision")
    props["precision"] = precision
    if agreement_images:
        agreement = label_agreement(fp32_path, out_path, agreement_images, threads=threads)
        props["agreement_fp32"] = f"{agreement:.6f}"
        props["agreement_images"] = f"{len(agreement_images)} from {agreement_origin}"
        log.info("%s variant agrees with fp32 on %.4f%% of label pixels (%d images)", precision,
                 100 * agreement, len(agreement_images))
    _write_props(out_path, props)
    check_contract(out_path)
    log.info("wrote %s variant %s in %.1fs", precision, out_path, time.perf_counter() - start)
    return out_path


def _props(path: Path) -> dict[str, str]:
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def _write_props(path: Path, props: dict[str, str]) -> None:
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    ModelMetadata.from_props(props)  # still a valid contract
    onnx.save(proto, str(path))


def _fp16_agreement_images(meta: ModelMetadata, calibration_dir: Path | None,
                           count: int) -> tuple[list[np.ndarray], str]:
    """fp16 needs no calibration; its agreement is measured on the same kind of images when there are any."""
    if calibration_dir is not None:
        calib = calibration_set(meta, calibration_dir, min(count, AGREEMENT_IMAGES))
        return calib.images, calib.origin
    if is_synthetic_demo(meta):
        calib = synthetic_set(min(count, AGREEMENT_IMAGES), meta)
        return calib.images, calib.origin
    log.warning("fp16 agreement with fp32 not measured: pass --calibration-dir to measure it on real images")
    return [], ""


def graph_nodes_to_keep_float(model: onnx.ModelProto, keep_float: Iterable[str]) -> list[str]:
    """Names of the nodes that `keep_float` (see module doc) leaves unquantised. Nodes must be named.

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


def quantize_int8(fp32_path: Path, out_path: Path, calib: CalibrationSet,
                  keep_float: Sequence[str] = DEFAULT_KEEP_FLOAT) -> list[str]:
    """Static QDQ quantisation after ORT's pre-processing; returns the names of the nodes kept in float."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory() as tmp:
        pre = pre_process(Path(fp32_path), Path(tmp))
        model = onnx.load(str(pre))
        float_nodes = graph_nodes_to_keep_float(model, keep_float)
        log.info("calibrating on %d images (%s); keeping %d nodes in float", calib.count, calib.origin,
                 len(float_nodes))
        with _quiet_root_logger():
            quantize_static(
                str(pre), str(out_path), ImageReader(calib.images),
                quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                # MinMax keeps only per-tensor ReduceMin/ReduceMax scalars per image, so memory stays small.
                # (Not CalibMaxIntermediateOutputs: in onnxruntime 1.32 it discards ranges instead of merging.)
                nodes_to_exclude=float_nodes, calibrate_method=CalibrationMethod.MinMax,
            )
    return float_nodes


def pre_process(fp32_path: Path, tmp: Path) -> Path:
    """ORT's quantisation pre-processing (shape inference, then ORT's graph optimisation, so that quantisation
    sees the graph ORT will run) of `fp32_path` into `tmp`/pre.onnx.

    ORT's symbolic shape inference fails on a multi-scale graph: a Resize by scales [1, 1, s, s] gives the batch
    dim `floor(1.0*batch)` (sympy keeps the float factor), which the Max fusing it with the scale-1 copy's `batch`
    cannot broadcast ("Incomplete symbolic shape inference"). It only adds dims that ONNX's shape inference leaves
    unknown (the MSC DeepLab-v2 quantises to the same nodes without it), so then it alone is skipped.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, pre = str(fp32_path.resolve()), tmp.resolve() / "pre.onnx"
    # On failure ORT dumps sym_shape_infer_temp.onnx and its weights into the working directory: keep them in tmp.
    with _working_directory(tmp):
        try:
            quant_pre_process(src, str(pre))
        except Exception as exc:  # ORT raises a bare Exception, and asserts inside the inference
            log.warning("int8 pre-processing: skipped ORT's symbolic shape inference, which failed on %s (%s: %s); "
                        "ONNX shape inference and ORT's graph optimisation still run", fp32_path.name,
                        type(exc).__name__, exc)
            quant_pre_process(src, str(pre), skip_symbolic_shape=True)
    return pre


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    """`contextlib.chdir` (Python 3.11+) for 3.10; quantisation is a batch job, not a threaded server."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ORT's quantiser logs one INFO line per copied bias on the root logger; keep INFO readable."""
    root = logging.getLogger()
    noise = logging.Filter("model_export")  # passes only records from our own loggers

    def drop(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or noise.filter(record)

    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def convert_fp16(fp32_path: Path, out_path: Path) -> None:
    """fp16 weights and compute with uint8 I/O unchanged (for the CUDA provider).

    Every Cast stays as it is: the first one turns the uint8 image into float32 and the converter then inserts
    a float32->float16 cast after it; converting that Cast itself leaves stale float32 type info that ORT
    rejects. Resize (and a multi-scale graph's Max) stay float32 (onnxconverter-common's default block list), and
    so does ArgMax: the upsampled logits it compares are float32, as in the fp32 file. Left to the converter, they
    were rounded to fp16 after the upsample, and logits less than half an fp16 step apart (0.25 at 1000) became
    ties that ArgMax gives to the lower class id: the CUDA provider runs that fp16 ArgMax as written.
    """
    from onnxconverter_common import float16

    model = onnx.load(str(fp32_path))
    keep = [n.name for n in model.graph.node if n.op_type in ("Cast", "ArgMax")]
    if any(not name for name in keep):
        raise ContractError("fp16 conversion needs named Cast and ArgMax nodes")
    half = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=keep)
    onnx.checker.check_model(half)
    onnx.save(half, str(out_path))


def check_contract(path: Path) -> None:
    """The variant keeps the contract's I/O: uint8 `image` [N,H,W,3], uint8 `labels` (+ `confidence`)."""
    model = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(model)
    uint8 = onnx.TensorProto.UINT8
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    outputs = {o.name: o.type.tensor_type for o in model.graph.output}
    if list(inputs) != [INPUT_NAME] or inputs[INPUT_NAME].elem_type != uint8:
        raise ContractError(f"variant {path} lost the uint8 `{INPUT_NAME}` input")
    if LABELS_OUTPUT not in outputs or set(outputs) - {LABELS_OUTPUT, CONFIDENCE_OUTPUT}:
        raise ContractError(f"variant {path} outputs {sorted(outputs)}, not the contract's")
    if any(t.elem_type != uint8 for t in outputs.values()):
        raise ContractError(f"variant {path} outputs are not uint8")


def label_agreement(reference: Path, variant: Path, images: Sequence[np.ndarray], threads: int = 0) -> float:
    """Fraction of label pixels on which `variant` equals `reference` over letterboxed uint8 HxWx3 images."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sessions = [ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for p in (reference, variant)]
    equal = total = 0
    for image in images:
        ref, var = (s.run([LABELS_OUTPUT], {INPUT_NAME: image[None]})[0] for s in sessions)
        equal += int((ref == var).sum())
        total += ref.size
    return equal / total if total else float("nan")
