"""`segment-export export` end to end: a training checkpoint carries its classes, palette and input size into
the ONNX metadata, and the exported labels match the checkpoint's eager model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest
import torch

from model_export.architectures import build_model
from model_export.checkpoint import save_checkpoint
from model_export.cli import main
from model_export.export import read_metadata
from model_export.wrapper import ExportWrapper
from testkit.photos import photo

CLASSES = ["background", "sky", "cat"]
PALETTE = [[1, 2, 3], [40, 50, 60], [200, 100, 0]]


@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(1)
    kwargs = {"base_width": 8, "head_channels": 16}
    model = build_model("deeplabv3_thin", 3, **kwargs).eval()
    path = save_checkpoint(tmp_path / "ckpt.pt", {
        "arch": "deeplabv3_thin", "num_classes": 3, "model_kwargs": kwargs, "preprocessing": "imagenet",
        "classes": CLASSES, "palette": PALETTE, "input_size": 96, "state_dict": model.state_dict(),
        "iteration": 0, "source": "tests",
    })
    return path, model


def test_checkpoint_metadata_reaches_the_onnx_file(checkpoint, tmp_path: Path, capsys) -> None:
    path, model = checkpoint
    out = tmp_path / "m.onnx"
    assert main(["export", "--weights", str(path), "-o", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["output"] == str(out) and summary["arch"] == "deeplabv3_thin"
    meta = read_metadata(out)
    assert meta.classes == CLASSES
    assert meta.palette == PALETTE
    assert meta.input_size == 96
    assert meta.source == "file:ckpt.pt" and len(meta.source_sha256) == 64
    image = photo("chelsea.png", size=(120, 90))[None]
    (labels,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": image})
    with torch.no_grad():
        expected = ExportWrapper(model)(torch.from_numpy(image)).numpy()
    assert (labels == expected).mean() >= 0.999


def test_flags_override_the_checkpoint(checkpoint, tmp_path: Path) -> None:
    path, _ = checkpoint
    names = tmp_path / "classes.json"
    names.write_text(json.dumps(["a", "b", "c"]))
    out = tmp_path / "m.onnx"
    assert main(["export", "--weights", str(path), "--classes", str(names), "--input-size", "128",
                 "-o", str(out)]) == 0
    meta = read_metadata(out)
    assert meta.classes == ["a", "b", "c"] and meta.input_size == 128
    assert meta.palette[:3] == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]  # VOC colours once names change


def test_a_weights_file_without_names_gets_one_for_each_class_its_head_predicts(tmp_path: Path) -> None:
    """A torchvision-layout file records no class names: the metadata names as many classes as the head
    predicts (not VOC's 21, which left label ids without a name or colour)."""
    torch.manual_seed(2)
    path = tmp_path / "five.pth"
    torch.save(build_model("deeplabv3_thin", 5).state_dict(), path)
    out = tmp_path / "m.onnx"
    assert main(["export", "--weights", str(path), "--arch", "deeplabv3_thin", "-o", str(out)]) == 0
    meta = read_metadata(out)
    assert len(meta.classes) == len(meta.palette) == 5 and meta.classes[0] == "background"


def test_class_names_that_do_not_match_the_head_are_refused(checkpoint, tmp_path: Path, capsys) -> None:
    path, _ = checkpoint
    names = tmp_path / "classes.json"
    names.write_text(json.dumps(["a", "b"]))
    out = tmp_path / "m.onnx"
    assert main(["export", "--weights", str(path), "--classes", str(names), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "2 class names" in err and "predicts 3 classes" in err and "Traceback" not in err
    assert not out.exists()


def test_missing_weights_file_is_one_clear_line(tmp_path: Path, capsys) -> None:
    assert main(["export", "--weights", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()


def test_python_dash_m_reports_a_user_error_in_one_line_too(tmp_path: Path) -> None:
    """`python -m model_export.cli` runs the module as `__main__`; its errors must still be the one-line kind."""
    done = subprocess.run([sys.executable, "-m", "model_export.cli", "export", "--weights", str(tmp_path / "nope.pt"),
                           "-o", str(tmp_path / "m.onnx")], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 2, done.stderr
    assert "does not exist" in done.stderr and "Traceback" not in done.stderr
