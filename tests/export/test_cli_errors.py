"""Every user mistake on the export side's command lines (export, convert-caffe, msc, evaluate, pretrained) ends
as one line that says what is wrong, with exit status 2 and no traceback; nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model_export.architectures import build_model
from model_export.checkpoint import save_checkpoint
from model_export.cli import main
from model_export.synthetic import SceneConfig, write_dataset
from testkit.cli import one_line_error

RANDOM = ["export", "--random-init", "--arch", "deeplabv3_thin"]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "not_json.json").write_text("background, cat\n")
    (tmp_path / "not_a_list.json").write_text('{"classes": ["background", "cat"]}')
    (tmp_path / "a_file").write_text("a file, not a directory")
    (tmp_path / "not_onnx.onnx").write_bytes(b"\x00\x01 this is not a protobuf model \xff\xfe")
    return tmp_path


@pytest.mark.parametrize(("args", "expected"), [
    (["--classes", "{d}/missing.json"], ("--classes", "missing.json", "No such file")),
    (["--classes", "{d}/not_json.json"], ("--classes", "not JSON")),
    (["--classes", "{d}/not_a_list.json"], ("JSON list of class names",)),
    (["--opset", "16"], ("opset >= 17",)),
    (["--input-size", "0"], ("input_size", "positive", "got 0")),
    (["--input-size", "-5"], ("input_size", "positive", "got -5")),
    (["--num-classes", "0"], ("--num-classes must be between 2 and 255, got 0",)),
    (["--num-classes", "300"], ("--num-classes must be between 2 and 255, got 300",)),
], ids=["classes-missing", "classes-not-json", "classes-not-a-list", "opset", "input-size-0", "input-size-negative",
        "num-classes-0", "num-classes-300"])
def test_export_refuses_bad_options_in_one_line(args: list[str], expected: tuple[str, ...], files: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = files / "m.onnx"
    code = main([*RANDOM, *(a.format(d=files) for a in args), "-o", str(out)])
    one_line_error(code, capsys, *expected)
    assert not out.exists()


def test_export_to_an_unwritable_place_is_one_line(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main([*RANDOM, "-o", str(files / "a_file" / "m.onnx")])
    one_line_error(code, capsys, "a_file")


def test_num_classes_that_contradict_the_weights_are_refused(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The head decides the class count; a different --num-classes was silently ignored before."""
    kwargs = {"base_width": 8, "head_channels": 16}
    model = build_model("deeplabv3_thin", 3, **kwargs)
    ckpt = save_checkpoint(files / "ckpt.pt", {
        "arch": "deeplabv3_thin", "num_classes": 3, "model_kwargs": kwargs, "preprocessing": "imagenet",
        "classes": ["background", "sky", "cat"], "input_size": 64, "state_dict": model.state_dict(),
        "iteration": 0, "source": "tests"})
    out = files / "m.onnx"
    code = main(["export", "--weights", str(ckpt), "--num-classes", "21", "-o", str(out)])
    one_line_error(code, capsys, "--num-classes 21", "predicts 3 classes")
    assert not out.exists()
    # Given and equal is fine.
    assert main(["export", "--weights", str(ckpt), "--num-classes", "3", "-o", str(out)]) == 0 and out.exists()


@pytest.mark.parametrize(("args", "expected"), [
    (["--classes", "{d}/missing.json", "-o", "{d}/m.onnx"], ("--classes", "No such file")),
    (["--classes", "{d}/not_json.json", "-o", "{d}/m.onnx"], ("not JSON",)),
    (["--input-size", "0", "--checkpoint", "{d}/init.pt"], ("--input-size must be positive, got 0",)),
], ids=["classes-missing", "classes-not-json", "input-size-0"])
def test_convert_caffe_refuses_bad_options_in_one_line(args: list[str], expected: tuple[str, ...], files: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["convert-caffe", str(files / "any.caffemodel"), *(a.format(d=files) for a in args)])
    one_line_error(code, capsys, *expected)
    assert not (files / "m.onnx").exists() and not (files / "init.pt").exists()


def test_msc_of_a_file_that_is_not_onnx_is_one_line(files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["msc", str(files / "not_onnx.onnx"), "-o", str(files / "out.onnx")])
    one_line_error(code, capsys, "not_onnx.onnx is not an ONNX model file")
    assert not (files / "out.onnx").exists()


def test_msc_to_an_unwritable_place_is_one_line(tiny_onnx_model: Path, files: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["msc", str(tiny_onnx_model), "-o", str(files / "a_file" / "out.onnx")])
    one_line_error(code, capsys, "a_file")


@pytest.fixture
def one_scene(tmp_path: Path) -> Path:
    root = tmp_path / "voc"
    write_dataset(root, train=1, val=1, seed=3, config=SceneConfig(min_side=48, max_side=64, max_objects=2))
    return root


@pytest.mark.parametrize(("args", "expected"), [
    (["--batch-size", "0"], ("--batch-size must be at least 1, got 0",)),
    (["--limit", "0"], ("--limit must be at least 1, got 0",)),
    (["--limit", "-1"], ("--limit must be at least 1, got -1",)),
], ids=["batch-size-0", "limit-0", "limit-negative"])
def test_evaluate_refuses_counts_that_score_nothing(args: list[str], expected: tuple[str, ...], tiny_onnx_model: Path,
                                                    one_scene: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["evaluate", "--model", str(tiny_onnx_model), "--data", str(one_scene), "--no-progress", *args])
    err = one_line_error(code, capsys, *expected)
    assert "mIoU" not in err


def test_evaluate_json_to_an_unwritable_place_is_one_line(tiny_onnx_model: Path, one_scene: Path, files: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["evaluate", "--model", str(tiny_onnx_model), "--data", str(one_scene), "--no-progress",
                 "--json", str(files / "a_file" / "scores.json")])
    one_line_error(code, capsys, "cannot write --json", "a_file")


def test_pretrained_to_an_unwritable_place_is_one_line(files: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A published row (here a thin model's, already in the cache: no network) exported under a regular file."""
    from model_export import catalog
    from model_export.torch_io import sha256_file
    from service.core.contract import VOC_CLASSES

    cache = files / "cache"
    cache.mkdir()
    torch.save(build_model("deeplabv3_thin", 21).state_dict(), cache / "tmp.pth")
    cached = cache / f"thin_demo-{sha256_file(cache / 'tmp.pth')[:8]}.pth"
    (cache / "tmp.pth").replace(cached)
    row = catalog.WeightSource("thin_demo", "deeplabv3_thin", cached.name, VOC_CLASSES, "imagenet", 64)
    monkeypatch.setitem(catalog.WEIGHT_SOURCES, row.name, row)
    code = main(["pretrained", "thin_demo", "--base-url", "http://127.0.0.1:9/", "--cache-dir", str(cache),
                 "-o", str(files / "a_file" / "m.onnx")])
    one_line_error(code, capsys, "a_file")
