"""Calibration errors come from domain code that never names a flag; `segment-export export` shows them as
before the split: the flag where the message names one, the text as is otherwise, one line, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_export.cli import main


@pytest.mark.parametrize(("extra", "expected"), [
    (["--calibration-count", "0"], "--calibration-count must be positive, got 0"),
    (["--calibration-dir", "{tmp}/nope"], "calibration directory {tmp}/nope does not exist or is not a directory"),
])
def test_export_cli_shows_calibration_errors_as_before(extra: list[str], expected: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    if "--calibration-dir" not in extra:
        extra = [*extra, "--calibration-dir", str(tmp_path)]
    args = ["export", "--random-init", "--arch", "deeplabv3_thin", "--num-classes", "3", "--input-size", "32",
            "--precision", "int8", *[a.format(tmp=tmp_path) for a in extra], "-o", str(tmp_path / "x.onnx")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == f"segment-export export: error: {expected.format(tmp=tmp_path)}\n"
    assert not (tmp_path / "x.onnx").exists()
