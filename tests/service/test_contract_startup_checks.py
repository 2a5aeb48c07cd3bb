"""The contract checks a model meets before the server starts: a batch dimension declared dynamic must run a batch
of 2 with labels of that batch (when batches of 2 or more will run), and an optional `confidence` output must be
uint8 [batch, height, width]. Real onnxruntime sessions on tiny hand-made graphs; refusals through `segment-serve`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from service.core.contract import BatchSizeError, ContractError, LabelsShapeError, ModelMetadata, voc_colormap
from service.core.engine import Engine, load_engine
from service.core.options import EngineOptions
from service.settings import Settings
from tests.service.svc_helpers import LiveServer, png_bytes, scene
from tests.service.test_startup_refusals import refusal

SIZE = 64  # the models' input_size: small, so each run costs little


def save_model(path: Path, nodes: list[onnx.NodeProto], *, inits: tuple[onnx.TensorProto, ...] = (),
               confidence: int | None = None, confidence_shape: list[int | str] | None = None) -> Path:
    """A contract model whose `nodes` turn `image` into `labels` (and `confidence` of that type, if given), all
    dimensions but the channels symbolic, with its metadata."""
    image = helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", "height", "width", 3])
    outputs = [helper.make_tensor_value_info("labels", TensorProto.UINT8, ["batch", "height", "width"])]
    if confidence is not None:
        outputs.append(helper.make_tensor_value_info("confidence", confidence,
                                                     confidence_shape or ["batch", "height", "width"]))
    model = helper.make_model(helper.make_graph(nodes, "m", [image], outputs, initializer=list(inits)),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    meta = ModelMetadata(classes=["background", "red", "green"], palette=voc_colormap(3), input_size=SIZE,
                         arch="tiny", source="tests: hand-written graph")
    helper.set_model_props(model, meta.to_props())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


ARGMAX = [helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
          helper.make_node("ArgMax", ["x"], ["classes"], axis=3, keepdims=0)]


def good_model(path: Path) -> Path:
    """Labels: the brightest channel of each pixel, for any batch."""
    return save_model(path, [*ARGMAX, helper.make_node("Cast", ["classes"], ["labels"], to=TensorProto.UINT8)])


def reshape_model(path: Path) -> Path:
    """A batch declared dynamic and hard-coded inside: a Reshape to [1, SIZE, SIZE], as a careless export writes
    it. One image runs; two fail inside onnxruntime."""
    shape = helper.make_tensor("one_image", TensorProto.INT64, [3], [1, SIZE, SIZE])
    return save_model(path, [*ARGMAX, helper.make_node("Reshape", ["classes", "one_image"], ["one"]),
                             helper.make_node("Cast", ["one"], ["labels"], to=TensorProto.UINT8)], inits=(shape,))


def first_image_model(path: Path) -> Path:
    """Labels of the first image only: batch 1 whatever the input's batch."""
    consts = [helper.make_tensor(name, TensorProto.INT64, [1], [v])
              for name, v in (("start", 0), ("end", 1), ("axis0", 0))]
    return save_model(path, [*ARGMAX, helper.make_node("Slice", ["classes", "start", "end", "axis0"], ["first"]),
                             helper.make_node("Cast", ["first"], ["labels"], to=TensorProto.UINT8)],
                      inits=tuple(consts))


def confidence_model(path: Path, dtype: int, *, channel_dim: bool = False) -> Path:
    """Labels and a `confidence` output of `dtype` (the brightest channel's value), with a trailing dimension of 1
    if `channel_dim`."""
    return save_model(path, [*ARGMAX, helper.make_node("Cast", ["classes"], ["labels"], to=TensorProto.UINT8),
                             helper.make_node("ReduceMax", ["x", "channels"], ["peak"], keepdims=int(channel_dim)),
                             helper.make_node("Cast", ["peak"], ["confidence"], to=dtype)],
                      inits=(helper.make_tensor("channels", TensorProto.INT64, [1], [3]),), confidence=dtype,
                      confidence_shape=["batch", "height", "width", 1][:4 if channel_dim else 3])


def counted(engine: Engine) -> list[tuple[int, ...]]:
    """The input shape of every run of `engine`'s session from now on (its run wrapped, the session real)."""
    shapes: list[tuple[int, ...]] = []
    run = engine.session.run

    def counting_run(names, feeds, *args, **kwargs):  # type: ignore[no-untyped-def]
        shapes.append(tuple(feeds["image"].shape))
        return run(names, feeds, *args, **kwargs)

    engine.session.run = counting_run  # type: ignore[method-assign]
    return shapes


def cpu_engine(model: Path) -> Engine:
    return load_engine(EngineOptions(model_path=model, providers="cpu", fixed_shapes="off"))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("contract_checks")
    return {"good": good_model(folder / "good.onnx"), "reshape": reshape_model(folder / "reshape.onnx"),
            "first": first_image_model(folder / "first.onnx")}


def test_a_good_model_is_checked_with_one_run_of_two_images(models: dict[str, Path]) -> None:
    engine = cpu_engine(models["good"])
    shapes = counted(engine)
    engine.check_labels(max_batch_size=8)
    assert shapes == [(2, SIZE, SIZE, 3)]


def test_with_batches_of_one_the_check_runs_one_image(models: dict[str, Path]) -> None:
    engine = cpu_engine(models["reshape"])
    shapes = counted(engine)
    engine.check_labels(max_batch_size=1)  # the model cannot batch, and need not
    assert shapes == [(1, SIZE, SIZE, 3)]


def test_a_batch_that_fails_above_one_image_is_a_batch_size_error(models: dict[str, Path]) -> None:
    engine = cpu_engine(models["reshape"])
    shapes = counted(engine)
    with pytest.raises(BatchSizeError, match="SEGMENT_MAX_BATCH_SIZE=1"):
        engine.check_labels(max_batch_size=4)
    assert shapes == [(2, SIZE, SIZE, 3), (1, SIZE, SIZE, 3)]  # the second run tells the model from the device


def test_labels_of_batch_one_for_a_batch_of_two_are_a_labels_shape_error(models: dict[str, Path]) -> None:
    with pytest.raises(LabelsShapeError, match=rf"labels \(1, {SIZE}, {SIZE}\) for input \(2, {SIZE}, {SIZE}, 3\)"):
        cpu_engine(models["first"]).check_labels(max_batch_size=2)


def test_a_hard_coded_batch_refuses_to_start(models: dict[str, Path]) -> None:
    line = refusal(models["reshape"], SEGMENT_MAX_BATCH_SIZE="8")
    assert ("cannot start: model runs 1 image but fails a batch of 2: SEGMENT_MAX_BATCH_SIZE is 8, so its batch "
            "dimension must really be dynamic; re-export it with a dynamic batch, or serve it with "
            "SEGMENT_MAX_BATCH_SIZE=1 (onnxruntime: ") in line


def test_labels_of_the_first_image_only_refuse_to_start(models: dict[str, Path]) -> None:
    line = refusal(models["first"])
    assert f"cannot start: model returned labels (1, {SIZE}, {SIZE}) for input (2, {SIZE}, {SIZE}, 3)" in line


def test_a_hard_coded_batch_serves_one_image_a_batch(models: dict[str, Path]) -> None:
    """Batches of 1 are what such a model can serve: it starts, and concurrent requests all run, none fails."""
    settings = Settings(model_path=models["reshape"], host="127.0.0.1", port=0, max_batch_size=1,
                        providers="cpu", max_wait_ms=20)
    server = LiveServer(settings).start()
    try:
        async def segment_all() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                bodies = [png_bytes(scene(40 + i, 30)) for i in range(4)]
                return await asyncio.gather(*(client.post("/segment", content=b) for b in bodies))

        assert [r.status_code for r in asyncio.run(segment_all())] == [200] * 4
        failures = httpx.get(f"{server.url}/metrics").text
        assert not [line for line in failures.splitlines()
                    if line.startswith("segment_inference_failures_total") and not line.endswith(" 0.0")]
    finally:
        server.stop()


@pytest.mark.parametrize(("dtype", "refused"), [(TensorProto.FLOAT, True), (TensorProto.UINT8, False)])
def test_a_confidence_output_must_be_uint8(tmp_path: Path, dtype: int, refused: bool) -> None:
    model = confidence_model(tmp_path / "confidence.onnx", dtype)
    if refused:
        with pytest.raises(ContractError, match=r"output 'confidence' must be uint8 \[batch, height, width\], "
                                                r"got tensor\(float\)"):
            cpu_engine(model)
    else:
        engine = cpu_engine(model)
        assert engine.has_confidence
        labels = engine.run(np.full((2, SIZE, SIZE, 3), (200, 10, 10), np.uint8))
        assert labels.shape == (2, SIZE, SIZE) and (labels == 0).all()


def test_a_confidence_output_of_another_rank_is_refused(tmp_path: Path) -> None:
    model = confidence_model(tmp_path / "rank4.onnx", TensorProto.UINT8, channel_dim=True)
    with pytest.raises(ContractError, match=r"output 'confidence' must be uint8 \[batch, height, width\], "
                                            r"got tensor\(uint8\) \['batch', 'height', 'width', 1\]"):
        cpu_engine(model)
