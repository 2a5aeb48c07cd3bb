"""int8 and fp16 variants keep the ONNX contract, agree with fp32 on real photos, and fail clearly."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from model_export.calibration import SYNTHETIC_CALIBRATION_SEED, CalibrationError, letterboxed
from model_export.cli import command_line_message
from model_export.export import read_metadata
from model_export.quantize import make_variant
from service.core.contract import ModelMetadata
from service.core.variants import differences
from testkit.photos import photo
from tests.quantize.variant_helpers import (
    INT8_MIN_AGREEMENT,
    _agreement,
    _assert_contract_io,
    _photo_labels,
    _session,
)

# fp16 keeps 10+ mantissa bits and a float32 Resize/ArgMax tail: it must be almost exact.
FP16_MIN_AGREEMENT = 0.995


def _props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


@pytest.fixture(scope="module")
def int8_model(trained_tiny_onnx: Path, photo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "tiny.int8.onnx"
    return make_variant(trained_tiny_onnx, out, "int8", calibration_dir=photo_dir, calibration_count=5, threads=2)


def test_int8_keeps_the_contract_and_the_fp32_metadata(int8_model: Path, trained_tiny_onnx: Path,
                                                         photo_dir: Path) -> None:
    _assert_contract_io(int8_model)
    fp32, int8 = _props(trained_tiny_onnx), _props(int8_model)
    # Everything the fp32 file said is still there, unchanged, except the precision.
    assert {k: v for k, v in int8.items() if k in fp32 and k != "precision"} == \
        {k: v for k, v in fp32.items() if k != "precision"}
    meta = ModelMetadata.from_props(int8)
    assert meta.precision == "int8" and fp32["precision"] == "fp32"
    assert meta.classes == read_metadata(trained_tiny_onnx).classes
    assert differences(read_metadata(trained_tiny_onnx), meta) == []  # served beside it as the same model
    # The calibration set is recorded: count and a sha256 over the image files in name order (not README.txt).
    files = sorted(p for p in photo_dir.iterdir() if p.suffix in (".png", ".jpg"))
    expected = hashlib.sha256(b"".join(hashlib.sha256(p.read_bytes()).digest() for p in files)).hexdigest()
    assert int8["calibration_count"] == "5"
    assert int8["calibration_sha256"] == expected
    assert 0.9 <= float(int8["agreement_fp32"]) <= 1.0
    # It really is quantised, and the tail that compares logits (Resize -> ArgMax) stayed float.
    graph = onnx.load(str(int8_model)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("DequantizeLinear") > 10 and "QuantizeLinear" in ops
    producer = {o: n for n in graph.node for o in n.output}
    argmax = next(n for n in graph.node if n.op_type == "ArgMax")
    resize = producer[argmax.input[0]]
    assert resize.op_type == "Resize" and producer[resize.input[0]].op_type == "Conv"
    assert int8_model.stat().st_size < trained_tiny_onnx.stat().st_size


def test_int8_agrees_with_fp32_on_real_photos(int8_model: Path, trained_tiny_onnx: Path) -> None:
    fp32, int8 = _photo_labels(trained_tiny_onnx), _photo_labels(int8_model)
    # The test is only worth something if fp32 draws boundaries: several classes across the photos.
    assert len(np.unique(np.concatenate([x.ravel() for x in fp32]))) >= 3
    agreement = _agreement(fp32, int8)
    print(f"int8/fp32 agreement on real photos: {agreement:.5f}")
    assert agreement >= INT8_MIN_AGREEMENT


def test_fp16_keeps_the_contract_and_runs_on_cpu(trained_tiny_onnx: Path, photo_dir: Path, tmp_path: Path) -> None:
    out = make_variant(trained_tiny_onnx, tmp_path / "tiny.fp16.onnx", "fp16", calibration_dir=photo_dir,
                       calibration_count=5, threads=2)
    _assert_contract_io(out)
    props = _props(out)
    assert props["precision"] == "fp16"
    graph = onnx.load(str(out)).graph
    fp16 = onnx.TensorProto.FLOAT16
    assert any(init.data_type == fp16 for init in graph.initializer), "weights were not converted"
    agreement = _agreement(_photo_labels(trained_tiny_onnx), _photo_labels(out))
    assert agreement >= FP16_MIN_AGREEMENT
    assert float(props["agreement_fp32"]) >= FP16_MIN_AGREEMENT


def test_int8_keeps_the_confidence_output(tiny_onnx_model_with_confidence: Path, photo_dir: Path,
                                          tmp_path: Path) -> None:
    out = make_variant(tiny_onnx_model_with_confidence, tmp_path / "conf.int8.onnx", "int8",
                       calibration_dir=photo_dir, calibration_count=2, threads=2)
    sess = _session(out)
    assert [(o.name, o.type) for o in sess.get_outputs()] == [("labels", "tensor(uint8)"),
                                                               ("confidence", "tensor(uint8)")]
    labels, conf = sess.run(None, {"image": letterboxed(photo("chelsea.png"), read_metadata(out))[None]})
    assert labels.shape == conf.shape and conf.dtype == np.uint8
    assert conf.min() >= 255 // 5  # a max softmax over 5 classes is at least 1/5


def test_int8_without_calibration_images_fails_clearly(tiny_onnx_model: Path, tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="needs calibration images") as err:
        make_variant(tiny_onnx_model, tmp_path / "x.onnx", "int8", calibration_dir=None, calibration_count=32)
    assert "--" not in str(err.value)  # domain messages never name flags; the CLI names the one at fault
    assert "pass calibration_dir DIR with JPEG/PNG photos" in str(err.value)
    assert "pass --calibration-dir DIR with JPEG/PNG photos" in command_line_message(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(CalibrationError, match="no JPEG or PNG"):
        make_variant(tiny_onnx_model, tmp_path / "x.onnx", "int8", calibration_dir=empty, calibration_count=32)
    with pytest.raises(CalibrationError, match="does not exist"):
        make_variant(tiny_onnx_model, tmp_path / "x.onnx", "int8", calibration_dir=tmp_path / "nope",
                     calibration_count=32)
    assert not (tmp_path / "x.onnx").exists()


def test_demo_model_calibrates_on_synthetic_scenes(trained_tiny_onnx: Path, tmp_path: Path) -> None:
    out = make_variant(trained_tiny_onnx, tmp_path / "demo.int8.onnx", "int8", calibration_dir=None,
                       calibration_count=4, threads=2)
    props = _props(out)
    assert props["calibration_count"] == "4"
    assert props["calibration_source"] == f"synthetic:seed={SYNTHETIC_CALIBRATION_SEED}"
    assert len(props["calibration_sha256"]) == 64
    assert float(props["agreement_fp32"]) >= INT8_MIN_AGREEMENT


def test_evaluate_scores_an_int8_variant(int8_model: Path, tmp_path: Path) -> None:
    from model_export.evaluate import evaluate_model
    from model_export.synthetic import SceneConfig, write_dataset

    write_dataset(tmp_path, train=0, val=3, seed=77, config=SceneConfig(min_side=48, max_side=64))
    scores, classes = evaluate_model(int8_model, tmp_path, "val", threads=2, progress=False)
    assert classes == read_metadata(int8_model).classes
    assert 0.0 < scores.pixel_accuracy <= 1.0


def _segment_export(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "segment-export"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "model_export.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300)


def test_cli_exports_an_int8_variant_end_to_end(photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "thin.int8.onnx"
    proc = _segment_export("export", "--random-init", "--arch", "deeplabv3_thin", "--num-classes", "5",
                           "--input-size", "64", "--precision", "int8", "--calibration-dir", str(photo_dir),
                           "--calibration-count", "3", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["precision"] == "int8" and Path(summary["output"]) == out
    _assert_contract_io(out)
    meta = read_metadata(out)
    assert (meta.precision, meta.arch, meta.input_size) == ("int8", "deeplabv3_thin", 64)
    assert meta.extra["calibration_count"] == "3"


def test_cli_int8_without_calibration_dir_is_a_clear_error(tmp_path: Path) -> None:
    proc = _segment_export("export", "--random-init", "--arch", "deeplabv3_thin", "--num-classes", "5",
                           "--input-size", "64", "--precision", "int8", "-o", str(tmp_path / "x.onnx"))
    assert proc.returncode == 2
    assert "error: int8 quantisation needs calibration images" in proc.stderr
    assert "pass --calibration-dir DIR with JPEG/PNG photos" in proc.stderr
    assert "Traceback" not in proc.stderr
