"""A precision variant picked beside the given file (`x.fp16.onnx` for `x.onnx`) must be the same model: one made
from other weights (left beside a retrained `x.onnx`) is refused at startup, naming what differs, rather than served
under the new file's name. Real processes, and the comparison itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from service.core.contract import ModelMetadata
from service.core.variants import differences
from testkit.server import ServerProcess
from tests.service.svc_helpers import png_bytes, scene
from tests.service.test_startup_refusals import refusal, retagged

WEIGHTS = "a" * 64
RETRAINED = "b" * 64


@pytest.fixture
def fp32(rule_model: Path, tmp_path: Path) -> Path:
    """The given file: the rule model, recording the weights it was exported from."""
    return retagged(rule_model, tmp_path / "model.onnx", source="runs/x/checkpoint.pt", source_sha256=RETRAINED)


def test_a_variant_of_other_weights_is_refused_naming_the_difference(fp32: Path, tmp_path: Path) -> None:
    stale = retagged(fp32, tmp_path / "model.fp16.onnx", precision="fp16", source_sha256=WEIGHTS)
    line = refusal(fp32, SEGMENT_PRECISION="fp16", SEGMENT_PROVIDERS="cpu")
    assert "cannot start: SEGMENT_PRECISION:" in line, line
    assert f"{stale.name} (fp16) is not a variant of {fp32.name}" in line, line
    assert f"source_sha256 ({RETRAINED[:12]} against {WEIGHTS[:12]})" in line, line
    assert "SEGMENT_PRECISION=fp32" in line, line


def test_a_variant_of_another_model_altogether_is_refused(fp32: Path, tmp_path: Path) -> None:
    retagged(fp32, tmp_path / "model.int8.onnx", precision="int8", source_sha256="",
             classes=json.dumps(["bg", "cat", "dog", "car", "tree"]))
    line = refusal(fp32, SEGMENT_PRECISION="int8", SEGMENT_PROVIDERS="cpu")
    assert "model.int8.onnx (int8) is not a variant of model.onnx" in line and "classes (" in line, line


@pytest.mark.parametrize("variant_sha", [RETRAINED, ""])  # the same weights; an export that did not record them
def test_a_variant_of_the_same_weights_is_served(fp32: Path, tmp_path: Path, variant_sha: str) -> None:
    retagged(fp32, tmp_path / "model.fp16.onnx", precision="fp16", source_sha256=variant_sha,
             project_version="0.0.1")  # made by another version of the exporter: not a difference of model
    with ServerProcess(fp32, SEGMENT_PRECISION="fp16", SEGMENT_PROVIDERS="cpu") as server:
        ready = server.wait_ready().proc.poll() is None
        body = httpx.get(f"{server.url}/readyz", timeout=10).json()
        r = httpx.post(f"{server.url}/segment", params={"output": "stats"}, content=png_bytes(scene()), timeout=30)
    assert ready and body["precision"] == "fp16" and body["model"] == "model.fp16", body
    assert r.status_code == 200, r.text
    # Weights recorded by one file only: alike on the rest of their metadata, which is said.
    assert ("do not both record the sha256 of their weights" in server.log) == (variant_sha == ""), server.log


def test_the_file_given_as_the_variant_itself_is_not_compared(fp32: Path, tmp_path: Path) -> None:
    """`SEGMENT_MODEL_PATH` at the fp16 file: nothing was picked beside anything, whatever lies next to it."""
    fp16 = retagged(fp32, tmp_path / "model.fp16.onnx", precision="fp16", source_sha256=WEIGHTS)
    with ServerProcess(fp16, SEGMENT_PRECISION="fp16", SEGMENT_PROVIDERS="cpu") as server:
        assert server.wait_ready().proc.poll() is None


def meta(**changes: object) -> ModelMetadata:
    base = {"classes": ["bg", "fg"], "palette": [[0, 0, 0], [255, 0, 0]], "input_size": 64, "arch": "a",
            "source": "s", "source_sha256": WEIGHTS}
    return ModelMetadata(**{**base, **changes})  # type: ignore[arg-type]


def test_differences_are_what_names_a_model_not_how_it_was_stored() -> None:
    assert differences(meta(), meta(precision="fp16", project_version="9", extra={"agreement_fp32": "0.99"})) == []
    assert differences(meta(), meta(source_sha256=RETRAINED)) == ["source_sha256"]
    assert differences(meta(), meta(source_sha256="")) == []  # not recorded: cannot tell
    assert differences(meta(), meta(input_size=96, arch="b")) == ["arch", "input_size"]
    assert differences(meta(), meta(mean=[1.0, 2.0, 3.0])) == ["mean"]
    assert differences(meta(extra={"msc_scales": "[0.5, 1.0]"}), meta(extra={"msc_scales": "[1.0]"})) == \
        ["msc_scales"]
    assert differences(meta(extra={"upsampling": "align_corners"}), meta()) == []  # an older export lacks the key


def test_a_variant_beside_a_copy_of_its_fp32_file_passes(rule_model: Path, tmp_path: Path) -> None:
    """The usual layout: the fp32 file and the variant made from it, side by side."""
    shutil.copyfile(rule_model, tmp_path / "m.onnx")
    retagged(rule_model, tmp_path / "m.int8.onnx", precision="int8")
    with ServerProcess(tmp_path / "m.onnx", SEGMENT_PRECISION="int8", SEGMENT_PROVIDERS="cpu") as server:
        body = server.wait_ready().proc.poll() is None and httpx.get(f"{server.url}/readyz", timeout=10).json()
    assert body and body["precision"] == "int8", body


def test_a_variant_shipped_without_its_fp32_file_is_served(fp32: Path, tmp_path: Path) -> None:
    """Only `model.fp16.onnx` deployed, `SEGMENT_MODEL_PATH` naming `model.onnx`: nothing to compare it with."""
    retagged(fp32, tmp_path / "model.fp16.onnx", precision="fp16")
    fp32.unlink()
    with ServerProcess(fp32, SEGMENT_PRECISION="fp16", SEGMENT_PROVIDERS="cpu") as server:
        body = server.wait_ready().proc.poll() is None and httpx.get(f"{server.url}/readyz", timeout=10).json()
    assert body and body["model"] == "model.fp16", body
