"""A multi-scale (MSC) DeepLab-v2 export quantises to int8, keeps the contract and agrees with its fp32 file.

ORT's symbolic shape inference cannot follow the scale pyramid (the scaled copies' batch dim becomes
`floor(1.0*batch)`, which the fusing Max cannot match with the scale-1 copy's `batch`); the pre-processing
then runs without that step, says so in the log, and leaves nothing in the working directory.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest

from model_export.export import read_metadata
from model_export.msc import bake_msc
from model_export.quantize import make_variant, pre_process
from service.core.engine import validate_contract
from tests.quantize.variant_helpers import (
    INT8_MIN_AGREEMENT,
    _agreement,
    _assert_contract_io,
    _photo_labels,
    _session,
)

SKIPPED = "skipped ORT's symbolic shape inference"


@pytest.fixture(scope="module")
def msc_fp32(trained_tiny_deeplabv2_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DeepLab's own test: max over scales 0.5, 0.75 and 1 (the default of `segment-export msc`)."""
    return bake_msc(trained_tiny_deeplabv2_onnx, tmp_path_factory.mktemp("msc") / "v2_msc.onnx")


def test_msc_deeplabv2_quantises_to_int8_and_agrees_with_fp32(msc_fp32: Path, photo_dir: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with caplog.at_level(logging.WARNING, logger="model_export.quantize_int8"):
        out = make_variant(msc_fp32, tmp_path / "v2_msc.int8.onnx", "int8", calibration_dir=photo_dir,
                           calibration_count=5, threads=2)
    # The log says which step was skipped and why; ORT's failure dump stayed out of the working directory.
    skipped = [r.getMessage() for r in caplog.records if SKIPPED in r.getMessage()]
    assert len(skipped) == 1 and "Incomplete symbolic shape inference" in skipped[0], caplog.text
    assert list(cwd.iterdir()) == []

    # The service's own contract check accepts it, and the metadata still records the scale pyramid.
    meta = validate_contract(_session(out))
    assert meta.precision == "int8" and meta.classes == read_metadata(msc_fp32).classes
    assert json.loads(meta.extra["msc_scales"]) == [0.5, 0.75, 1.0]
    _assert_contract_io(out)  # dynamic batch, height and width: batch 2 at an odd size runs

    # Really quantised, with the multi-scale fusion still there and still float.
    graph = onnx.load(str(out)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("DequantizeLinear") > 10 and "QuantizeLinear" in ops
    producer = {o: n for n in graph.node for o in n.output}
    (fusion,) = [n for n in graph.node if n.op_type == "Max"]
    assert len(fusion.input) == 3
    assert all(producer[i].op_type == "Resize" for i in fusion.input)  # each copy's float upsampled logits

    fp32_labels, int8_labels = _photo_labels(msc_fp32), _photo_labels(out)
    assert len(np.unique(np.concatenate([x.ravel() for x in fp32_labels]))) >= 3  # boundaries to agree on
    agreement = _agreement(fp32_labels, int8_labels)
    print(f"MSC DeepLab-v2 int8/fp32 agreement on real photos: {agreement:.5f}")
    assert agreement >= INT8_MIN_AGREEMENT
    assert float(read_metadata(out).extra["agreement_fp32"]) >= INT8_MIN_AGREEMENT


def test_single_scale_pre_processing_keeps_symbolic_shape_inference(trained_tiny_deeplabv2_onnx: Path,
                                                                    tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="model_export.quantize_int8"):
        pre = pre_process(trained_tiny_deeplabv2_onnx, tmp_path)
    assert SKIPPED not in caplog.text
    # Symbolic inference ran: the labels output has the input's symbolic height and width.
    labels = next(o for o in onnx.load(str(pre)).graph.output if o.name == "labels")
    assert [d.dim_param for d in labels.type.tensor_type.shape.dim] == ["batch", "height", "width"]
