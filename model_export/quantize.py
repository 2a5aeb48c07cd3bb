"""Reduced-precision variants of a contract ONNX file: calibrated int8 (QDQ) for CPU, fp16 for CUDA.

Both keep the contract untouched at the edges: uint8 NHWC `image` in, uint8 `labels` (and `confidence`) out,
the same metadata plus `precision`, the calibration set and the measured label agreement with fp32.

The steps live beside this module, which writes the variant and its record:
- `model_export.quantize_nodes`: what stays in float in the int8 file (`keep_float`, chosen by measurement on a
  trained demo-style thin model; docs/PRECISION.md);
- `model_export.quantize_int8`: ORT's static QDQ quantisation and its pre-processing;
- `model_export.quantize_fp16`: the fp16 conversion.
Their public names are importable from here too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from service.core.contract import CONFIDENCE_OUTPUT, INPUT_NAME, LABELS_OUTPUT, ContractError, ModelMetadata

from .atomic import atomic_path
from .calibration import calibration_set, is_synthetic_demo, synthetic_set
from .catalog import DEFAULT_CALIBRATION_COUNT, PRECISIONS
from .errors import ModelExportError

# The steps, importable from here as before the split (bench/ and the tests import them from this module).
from .quantize_fp16 import convert_fp16
from .quantize_int8 import pre_process, quantize_int8
from .quantize_nodes import DEFAULT_KEEP_FLOAT, KEEP_FLOAT_CHOICES, graph_nodes_to_keep_float

__all__ = [
    "AGREEMENT_IMAGES", "DEFAULT_KEEP_FLOAT", "KEEP_FLOAT_CHOICES", "check_contract", "convert_fp16",
    "graph_nodes_to_keep_float", "label_agreement", "make_variant", "pre_process", "quantize_int8",
]

log = logging.getLogger(__name__)

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
    start = time.perf_counter()
    # The variant is built, annotated and checked in a draft beside `out_path`, which it replaces only when
    # complete: an interrupt or a failed check leaves the file there before (often a served model) untouched.
    with atomic_path(out_path) as draft:
        props = _convert(fp32_path, draft, precision, calibration_dir, calibration_count, keep_float, threads)
        _write_props(draft, props)
        check_contract(draft, shown=out_path)
    log.info("wrote %s variant %s in %.1fs", precision, out_path, time.perf_counter() - start)
    return out_path


def _convert(fp32_path: Path, draft: Path, precision: str, calibration_dir: Path | None, calibration_count: int,
             keep_float: Sequence[str], threads: int) -> dict[str, str]:
    """Write the `precision` variant's graph to `draft`; the metadata it is to carry."""
    props = _props(fp32_path)
    meta = ModelMetadata.from_props(props)
    if precision == "int8":
        calib = calibration_set(meta, calibration_dir, calibration_count)
        float_nodes = quantize_int8(fp32_path, draft, calib, keep_float=keep_float)
        props.update({
            "calibration_count": str(calib.count), "calibration_sha256": calib.sha256,
            "calibration_source": calib.origin, "quantization": "QDQ static, per-channel s8 weights, u8 activations",
            "float_nodes": ",".join(keep_float), "float_node_names": ",".join(float_nodes),
        })
        agreement_images = calib.images[:AGREEMENT_IMAGES]
        agreement_origin = calib.origin
    elif precision == "fp16":
        convert_fp16(fp32_path, draft)
        agreement_images, agreement_origin = _fp16_agreement_images(meta, calibration_dir, calibration_count)
    else:
        raise ModelExportError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS[1:])}",
                               option="precision")
    props["precision"] = precision
    if agreement_images:
        agreement = label_agreement(fp32_path, draft, agreement_images, threads=threads)
        props["agreement_fp32"] = f"{agreement:.6f}"
        props["agreement_images"] = f"{len(agreement_images)} from {agreement_origin}"
        log.info("%s variant agrees with fp32 on %.4f%% of label pixels (%d images)", precision,
                 100 * agreement, len(agreement_images))
    return props


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


def check_contract(path: Path, shown: Path | None = None) -> None:
    """The variant keeps the contract's I/O: uint8 `image` [N,H,W,3], uint8 `labels` (+ `confidence`). Errors
    name `shown` (the file being written, for a draft of it) or `path`."""
    model = onnx.load(str(path), load_external_data=False)
    path = shown or path
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
