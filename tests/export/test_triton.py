"""The Triton model repository written next to an export: layout, dynamic batching, I/O matching the graph."""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnxruntime as ort

from model_export.cli import main


def test_export_writes_a_triton_repository(tmp_path: Path) -> None:
    out, repo = tmp_path / "m.onnx", tmp_path / "triton"
    assert main(["export", "--random-init", "--arch", "deeplabv3_thin", "--num-classes", "4", "--confidence",
                 "-o", str(out), "--triton-repo", str(repo)]) == 0
    model_dir = repo / "segmentation"
    assert (model_dir / "1" / "model.onnx").read_bytes() == out.read_bytes()
    config = (model_dir / "config.pbtxt").read_text()
    assert 'backend: "onnxruntime"' in config and "max_batch_size: 8" in config
    assert re.search(r"dynamic_batching \{\s*max_queue_delay_microseconds: 5000\s*\}", config)
    # Triton's dims exclude the batch axis: the graph's I/O minus dim 0, with the same names and uint8.
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for io in (*session.get_inputs(), *session.get_outputs()):
        dims = ", ".join("-1" if isinstance(d, str) else str(d) for d in io.shape[1:])
        assert f'name: "{io.name}" data_type: TYPE_UINT8 dims: [ {dims} ]' in config
    classes = re.search(r'string_value: (".*") \}', config).group(1)
    assert json.loads(json.loads(classes)) == ["background", "class_1", "class_2", "class_3"]
