"""What model and providers `segment-serve` chooses, through real processes: an empty provider list is refused
naming SEGMENT_PROVIDERS, an explicit SEGMENT_PRECISION that the model file's metadata contradicts is refused
naming both settings, and an fp16 file given directly with precision auto on the CPU serves with a warning."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service.core.engine_resolve import EngineError, resolve_providers
from testkit.server import ServerProcess
from tests.service.test_startup_refusals import refusal, retagged


@pytest.mark.parametrize("spec", [",", " ", " , "])
def test_no_provider_listed_is_refused_naming_the_setting(rule_model: Path, spec: str) -> None:
    line = refusal(rule_model, SEGMENT_PROVIDERS=spec)
    assert "cannot start: SEGMENT_PROVIDERS: no execution provider is listed" in line, line
    assert "IndexError" not in line
    with pytest.raises(EngineError, match="no execution provider is listed") as raised:
        resolve_providers(spec, available=["CPUExecutionProvider"])
    assert raised.value.setting == "providers"


def test_explicit_precision_contradicted_by_the_file_is_refused(rule_model: Path, tmp_path: Path) -> None:
    fp16 = retagged(rule_model, tmp_path / "rule.fp16.onnx", precision="fp16")
    line = refusal(fp16, SEGMENT_PRECISION="fp32", SEGMENT_PROVIDERS="cpu")
    assert "cannot start: SEGMENT_PRECISION: fp32 was asked for" in line, line
    assert f"SEGMENT_MODEL_PATH, {fp16}, is fp16" in line, line
    assert "beside it" not in line  # no fp32 sibling to point at
    shutil.copyfile(rule_model, tmp_path / "rule.onnx")
    line = refusal(fp16, SEGMENT_PRECISION="fp32", SEGMENT_PROVIDERS="cpu")
    assert f"{tmp_path / 'rule.onnx'} beside it is the fp32 variant" in line, line
    # The metadata decides, not the name: a file without a suffix that says int8.
    int8 = retagged(rule_model, tmp_path / "plain.onnx", precision="int8")
    assert "fp32 was asked for" in refusal(int8, SEGMENT_PRECISION="fp32", SEGMENT_PROVIDERS="cpu")


def test_an_fp16_file_with_precision_auto_on_the_cpu_serves_with_a_warning(rule_model: Path,
                                                                         tmp_path: Path) -> None:
    fp16 = retagged(rule_model, tmp_path / "rule.fp16.onnx", precision="fp16")
    for precision, warned in (("auto", True), ("fp16", False)):  # asked for by name: nothing to warn about
        with ServerProcess(fp16, SEGMENT_PRECISION=precision, SEGMENT_PROVIDERS="cpu") as server:
            assert server.wait_ready().proc.poll() is None
        warnings = [line for line in server.log.splitlines() if "far slower than fp32" in line]
        assert len(warnings) == int(warned), server.log
        if warned:
            assert "is fp16" in warnings[0] and "CPUExecutionProvider" in warnings[0], warnings
