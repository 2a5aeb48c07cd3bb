"""Startup refusals through the real `segment-serve` process: a model, a setting or a failure that cannot serve
stops the start with exactly one `cannot start: ...` line (no traceback) and exit status 3, naming what is wrong."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper
from pydantic import ValidationError

from service.core.contract import ContractError, ModelMetadata, voc_colormap
from service.settings import Settings
from testkit.server import ServerProcess
from tests.service.svc_helpers import make_rule_model

SEGMENT_SERVE = Path(sys.executable).with_name("segment-serve")


def refusal(model: Path | None, *, command: list[str] | None = None, **env: str) -> str:
    """Start `segment-serve` (info logs), wait for it to exit 3, and return its one `cannot start` line."""
    server = ServerProcess(model, command=command or [str(SEGMENT_SERVE)], log_level="info", **env)
    try:
        assert server.proc.wait(60) == 3, server.log
    finally:
        server.terminate()
    server._reader.join(5)
    lines = [line for line in server.log.splitlines() if "cannot start" in line]
    assert len(lines) == 1 and "Traceback" not in server.log, server.log
    return lines[0]


def retagged(src: Path, dst: Path, **props: str) -> Path:
    """`src` with some of its metadata_props replaced, as a hand-edited or foreign exporter would write them."""
    model = onnx.load(str(src))
    current = {p.key: p.value for p in model.metadata_props}
    helper.set_model_props(model, {**current, **props})
    onnx.save(model, str(dst))
    return dst


@pytest.fixture(scope="module")
def rule(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_rule_model(tmp_path_factory.mktemp("refusals") / "rule.onnx")


@pytest.mark.parametrize(("props", "says"), [
    ({"mean": json.dumps([300.0, -5.0, 100.0])}, "metadata 'mean' must be three finite numbers in 0..255"),
    ({"std": json.dumps([58.0, 0.0, 57.0])}, "metadata 'std' must be three finite numbers above 0"),
    ({"classes": json.dumps("abc")}, "metadata 'classes' must be a JSON list of names"),
    ({"classes": json.dumps({"0": "bg", "1": "x"})}, "metadata 'classes' must be a JSON list of names"),
])
def test_malformed_metadata_is_refused_naming_the_key(rule: Path, tmp_path: Path, props: dict[str, str],
                                                      says: str) -> None:
    assert "cannot start: " + says in refusal(retagged(rule, tmp_path / "m.onnx", **props))


@pytest.mark.parametrize(("key", "value", "says"), [
    ("mean", "[1e999, 0, 0]", "metadata 'mean' must be three finite numbers"),
    ("mean", "NaN", "metadata 'mean' must be a JSON list of 3 numbers"),
    ("mean", '"123"', "metadata 'mean' must be a JSON list of 3 numbers"),
    ("mean", "[1, 2]", "metadata 'mean' must be a JSON list of 3 numbers"),
    ("std", "[1, 1, Infinity]", "metadata 'std' must be three finite numbers above 0"),
    ("std", '[1, 1, "1"]', "metadata 'std' must be a JSON list of 3 numbers"),
    ("classes", "7", "metadata 'classes' must be a JSON list of names"),
    ("classes", '["bg", 1]', "metadata 'classes' must be a JSON list of names"),
    ("palette", '{"0": [0, 0, 0]}', "metadata 'palette' must be a JSON list of [r, g, b] lists"),
    ("palette", '"#000000"', "metadata 'palette' must be a JSON list of [r, g, b] lists"),
    ("palette", "[[0, 0, 0.5]]", "metadata 'palette' must be a JSON list of [r, g, b] lists"),
    ("palette", "[[0, 0, true]]", "metadata 'palette' must be a JSON list of [r, g, b] lists"),
])
def test_metadata_values_of_the_wrong_kind_are_contract_errors(key: str, value: str, says: str) -> None:
    props = ModelMetadata(classes=["bg", "a"], palette=voc_colormap(2), input_size=8, arch="a", source="s").to_props()
    with pytest.raises(ContractError, match=f"^{says.replace('[', '.').replace(']', '.')}"):
        ModelMetadata.from_props({**props, key: value})


def test_an_unexpected_startup_failure_is_one_line_with_its_type(rule: Path) -> None:
    """A failure no refusal words (a bug, here an OverflowError where the request memory is checked) still says
    what it was, in the one line, rather than only uvicorn's `Application startup failed`."""
    patched = ("import service.app\n"
               "def boom(*_):\n    raise OverflowError('cannot convert float infinity to integer')\n"
               "service.app.check_request_memory = boom\n"
               "from service.main import main\nmain()\n")
    line = refusal(rule, command=[sys.executable, "-c", patched])
    assert "cannot start: OverflowError: cannot convert float infinity to integer" in line


def test_a_model_fixed_to_another_size_than_its_input_size_is_refused(tmp_path: Path) -> None:
    """Fixed to 64x64 with input_size 96: every run, warm-up's first, would fail; it stayed unready until its
    warm-up failures made it unhealthy, a minute later."""
    model = make_rule_model(tmp_path / "fixed.onnx", input_size=96, fixed_hw=64)
    line = refusal(model)
    assert "fixed height and width [64, 64] but the metadata 'input_size' is 96" in line


def half_resolution_model(path: Path, rule: Path) -> Path:
    """Labels at half the input's height and width (every second row and column), dimensions symbolic."""
    image = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", "H", "W", 3])
    consts = [helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [2], v))
              for name, v in (("st", [0, 0]), ("en", [2**62, 2**62]), ("ax", [1, 2]), ("sp", [2, 2]))]
    nodes = [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ArgMax", ["f"], ["a"], axis=3, keepdims=0), *consts,
             helper.make_node("Slice", ["a", "st", "en", "ax", "sp"], ["s"]),
             helper.make_node("Cast", ["s"], ["labels"], to=TensorProto.UINT8)]
    labels = helper.make_tensor_value_info("labels", TensorProto.UINT8, ["N", "h", "w"])
    model = helper.make_model(helper.make_graph(nodes, "half", [image], [labels]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {p.key: p.value for p in onnx.load(str(rule)).metadata_props})
    onnx.save(model, str(path))
    return path


def test_labels_of_another_size_than_the_input_refuse_the_model(rule: Path, tmp_path: Path) -> None:
    """A contract error, not a device failing: no retrying every SEGMENT_INFERENCE_PROBE_S until unhealthy."""
    line = refusal(half_resolution_model(tmp_path / "half.onnx", rule))
    assert "cannot start: model returned labels (2, 48, 48) for input (2, 96, 96, 3)" in line


FLOAT_SETTINGS = [name for name, field in Settings.model_fields.items() if field.annotation in (float, float | None)]


@pytest.mark.parametrize("name", FLOAT_SETTINGS)
@pytest.mark.parametrize("value", ["inf"])  # -inf and nan: refused by their bounds already
def test_no_float_setting_takes_inf_or_nan(name: str, value: str) -> None:
    with pytest.raises(ValidationError, match=name):
        Settings(**{name: value})


def test_an_infinite_probe_interval_is_refused_at_startup(rule: Path) -> None:
    """It started, and then every /segment answered 500 (an OverflowError rounding the interval up)."""
    line = refusal(rule, SEGMENT_INFERENCE_PROBE_S="inf")
    assert line.startswith("cannot start: SEGMENT_INFERENCE_PROBE_S: Input should be a finite number")


@pytest.mark.parametrize("host", ["not..a..host", "nosuchhost.invalid"])
def test_a_host_that_cannot_be_bound_is_refused_before_the_model_loads(rule: Path, host: str) -> None:
    """Was a traceback (an invalid name) or an error naming no setting, both after the model had loaded."""
    server = ServerProcess(rule, command=[str(SEGMENT_SERVE)], log_level="info", SEGMENT_HOST=host)
    assert server.proc.wait(60) == 3
    server._reader.join(5)
    lines = server.log.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cannot start: SEGMENT_HOST: "), server.log
    assert host in lines[0]


def test_a_model_path_that_is_a_directory_says_so(tmp_path: Path) -> None:
    line = refusal(tmp_path)
    assert f"cannot start: SEGMENT_MODEL_PATH: model path {tmp_path} is a directory" in line
