"""The fp16 variant for the CUDA provider: half-precision weights and compute, the contract's uint8 I/O kept."""

from __future__ import annotations

from pathlib import Path

import onnx

from service.core.contract import ContractError

from .atomic import atomic_path


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
    with atomic_path(out_path) as partial:  # an interrupted save leaves no truncated file at `out_path`
        onnx.save(half, str(partial))
