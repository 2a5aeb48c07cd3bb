"""A model whose input is smaller than the warm-up's sample image (48x64) warms up and serves every output kind:
the warm-up rendered the overlay on a reduced decode of its sample, whose pixels no longer matched the labels, so
such a server never became ready ("known-good input failed")."""

from __future__ import annotations

from pathlib import Path

import httpx
import onnx
import pytest
from onnx import TensorProto, helper

from service.core.contract import ModelMetadata, voc_colormap
from service.core.engine import load_engine
from service.core.options import EngineOptions
from service.core.output_kinds import OUTPUT_KINDS
from service.core.pipeline import Pipeline
from service.settings import Settings
from testkit.images import decode_labels, encode
from tests.service.svc_helpers import LiveServer, scene


def brightest_channel_model(path: Path, input_size: int) -> Path:
    """Labels: each pixel's brightest channel (0 red, 1 green, 2 blue), any batch and size; `input_size` in the
    metadata."""
    image = helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", "height", "width", 3])
    labels = helper.make_tensor_value_info("labels", TensorProto.UINT8, ["batch", "height", "width"])
    nodes = [helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("ArgMax", ["x"], ["classes"], axis=3, keepdims=0),
             helper.make_node("Cast", ["classes"], ["labels"], to=TensorProto.UINT8)]
    model = helper.make_model(helper.make_graph(nodes, "m", [image], [labels]),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    meta = ModelMetadata(classes=["red", "green", "blue"], palette=voc_colormap(3), input_size=input_size,
                         arch="tiny", source="tests: hand-written graph")
    helper.set_model_props(model, meta.to_props())
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("input_size", [16, 24, 32])
def test_the_output_warm_up_runs_for_a_model_input_under_its_sample(tmp_path: Path, input_size: int) -> None:
    model = brightest_channel_model(tmp_path / "small.onnx", input_size)
    pipeline = Pipeline(load_engine(EngineOptions(model_path=model, providers="cpu")))
    assert pipeline.warm_outputs() > 0


def test_a_server_for_a_small_model_becomes_ready_and_answers_every_kind(tmp_path: Path) -> None:
    model = brightest_channel_model(tmp_path / "small.onnx", 24)
    server = LiveServer(Settings(model_path=model, host="127.0.0.1", port=0, providers="cpu")).start()
    try:
        upload = encode(scene(160, 120), "JPEG")
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for kind in OUTPUT_KINDS:
                r = client.post("/segment", params={"output": kind}, content=upload,
                                headers={"Content-Type": "image/jpeg"})
                assert r.status_code == 200, (kind, r.text)
            labels = client.post("/segment", content=upload, headers={"Content-Type": "image/jpeg"})
        assert decode_labels(labels.content).shape == (120, 160)
    finally:
        server.stop()
