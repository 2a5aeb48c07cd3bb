"""Write a Triton Inference Server model repository for an exported contract ONNX file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx

from service.core.contract import CONFIDENCE_OUTPUT, INPUT_NAME, LABELS_OUTPUT, ModelMetadata
from service.core.options import DEFAULT_BATCH_SIZE

from .atomic import atomic_path

CONFIG_TEMPLATE = """\
name: "{name}"
backend: "onnxruntime"
max_batch_size: {max_batch_size}
input [
  {{ name: "{input}" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] }}
]
output [
{outputs}
]
dynamic_batching {{
  max_queue_delay_microseconds: {max_queue_delay_us}
}}
parameters {{ key: "classes" value: {{ string_value: {classes} }} }}
"""


def write_triton_repository(onnx_path: str | Path, repo: str | Path, name: str = "segmentation",
                            max_batch_size: int = DEFAULT_BATCH_SIZE, max_queue_delay_us: int = 5000) -> Path:
    """Lay out `repo/name/{config.pbtxt, 1/model.onnx}` with dynamic batching; return the model dir.

    Triton batches along dim 0 itself, so dims omit the batch axis. Images in one Triton batch must share
    H and W: clients letterbox to the metadata's input_size, as our own service does.
    """
    proto = onnx.load(str(onnx_path), load_external_data=False)
    meta = ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props})
    names = [o.name for o in proto.graph.output]
    outputs = ",\n".join(
        f'  {{ name: "{n}" data_type: TYPE_UINT8 dims: [ -1, -1 ] }}'
        for n in (LABELS_OUTPUT, CONFIDENCE_OUTPUT) if n in names
    )
    model_dir = Path(repo) / name
    # A running Triton may poll the repository: it sees the previous model or the new one, never half a copy.
    with atomic_path(model_dir / "1" / "model.onnx") as partial:
        shutil.copyfile(onnx_path, partial)
    with atomic_path(model_dir / "config.pbtxt") as partial:
        partial.write_text(CONFIG_TEMPLATE.format(
            name=name, max_batch_size=max_batch_size, input=INPUT_NAME, outputs=outputs,
            max_queue_delay_us=max_queue_delay_us, classes=json.dumps(json.dumps(meta.classes)),
        ))
    return model_dir
