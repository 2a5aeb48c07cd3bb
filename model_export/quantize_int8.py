"""The calibrated int8 variant: ORT's static QDQ quantisation (per-channel s8 weights, u8 activations) after its
pre-processing, with the nodes `keep_float` names left in float (`model_export.quantize_nodes`)."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import onnx

from .atomic import atomic_path
from .calibration import CalibrationSet, ImageReader
from .quantize_nodes import DEFAULT_KEEP_FLOAT, graph_nodes_to_keep_float

log = logging.getLogger(__name__)


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
        # quantize_static writes `out_path` as it goes: a file the user names is replaced only by a whole one.
        with _quiet_root_logger(), atomic_path(out_path) as partial:
            quantize_static(
                str(pre), str(partial), ImageReader(calib.images),
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
    # (chdir is process-wide; quantisation is a batch job, not a threaded server.)
    with contextlib.chdir(tmp):
        try:
            quant_pre_process(src, str(pre))
        except Exception as exc:  # ORT raises a bare Exception, and asserts inside the inference
            log.warning("int8 pre-processing: skipped ORT's symbolic shape inference, which failed on %s (%s: %s); "
                        "ONNX shape inference and ORT's graph optimisation still run", fp32_path.name,
                        type(exc).__name__, exc)
            quant_pre_process(src, str(pre), skip_symbolic_shape=True)
    return pre


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
