"""Training settings that cannot describe a run, a checkpoint with nothing to resume, and init weights whose
backbone does not fit: each is refused before anything trains, in one line on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model_export.architectures import build_model
from model_export.checkpoint import save_checkpoint
from model_export.cli import main
from model_export.errors import ModelExportError
from model_export.init_weights import init_from_file
from model_export.synthetic import CLASSES
from model_export.train import train
from service.core.contract import voc_colormap
from testkit.cli import one_line_error

from .conftest import TINY_MODEL, tiny_config

COMMON = ["train", "--arch", "deeplabv3_thin", "--classes", "synthetic", "--base-width", "4", "--head-channels", "8",
          "--output-stride", "16", "--crop-size", "32", "--batch-size", "2", "--iters", "2", "--no-progress",
          "--train-bn"]


@pytest.mark.parametrize(("args", "expected"), [
    (["--log-every", "0"], "--log-every must be at least 1, got 0"),
    (["--save-every", "0"], "--save-every must be at least 1, got 0"),
    (["--accumulate", "0"], "--accumulate must be at least 1, got 0"),
    (["--iters", "0"], "--iters must be at least 1, got 0"),
    (["--lr", "0"], "--lr must be positive, got 0.0"),
    (["--crop-size", "0"], "--crop-size must be at least 1, got 0"),
    (["--min-scale", "2", "--max-scale", "1"],
     "--min-scale must be positive and at most the largest scale (1.0), got 2.0"),
    (["--stop-at", "0"], "--stop-at must be at least 1, got 0"),
], ids=["log-every", "save-every", "accumulate", "iters", "lr", "crop-size", "scale-range", "stop-at"])
def test_settings_that_describe_no_run_are_one_line(args: list[str], expected: str, tiny_voc: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main([*COMMON, "--data", str(tiny_voc), "--out", str(out), *args])
    one_line_error(code, capsys, expected)
    assert not (out / "checkpoint.pt").exists()


def test_python_callers_get_the_setting_by_name(tiny_voc: Path, tmp_path: Path) -> None:
    """`accumulate=0` trained nothing and reported success; the error names the field."""
    with pytest.raises(ModelExportError, match=r"^accumulate must be at least 1, got 0$") as err:
        train(tiny_config(tiny_voc, tmp_path, accumulate=0))
    assert err.value.option == "accumulate"
    with pytest.raises(ModelExportError, match="scales must be positive numbers starting with 1"):
        train(tiny_config(tiny_voc, tmp_path, scales=[0.5, 1.0]))


def test_resuming_initial_weights_says_to_start_from_them(tiny_voc: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`convert-caffe --checkpoint` writes weights at iteration 0 with no optimiser or RNG state: a start, not a
    run. `--resume` with it ended in a KeyError traceback."""
    model = build_model("deeplabv3_thin", len(CLASSES), **TINY_MODEL)
    init = save_checkpoint(tmp_path / "init.pt", {
        "arch": "deeplabv3_thin", "num_classes": len(CLASSES), "model_kwargs": dict(TINY_MODEL),
        "preprocessing": "imagenet", "classes": list(CLASSES), "palette": voc_colormap(len(CLASSES)),
        "input_size": 32, "state_dict": model.state_dict(), "iteration": 0, "source": "caffe:init.caffemodel"})
    out = tmp_path / "run"
    code = main([*COMMON, "--data", str(tiny_voc), "--out", str(out), "--resume", str(init)])
    one_line_error(code, capsys, "holds no training state to resume", f"--init {init}")
    assert not (out / "checkpoint.pt").exists()
    # What the message says works.
    assert main([*COMMON, "--data", str(tiny_voc), "--out", str(out), "--init", str(init)]) == 0


def _backbone_file(path: Path, arch: str, **kwargs: object) -> Path:
    """A torchvision-style ImageNet file (`conv1.weight`, `layer1...`, `fc.*`) of `arch`'s backbone."""
    donor = build_model(arch, 21, **kwargs)
    state = {k.removeprefix("backbone."): v for k, v in donor.state_dict().items() if k.startswith("backbone.")}
    state["fc.weight"] = torch.zeros(1000, 8)
    torch.save(state, path)
    return path


def test_init_refuses_a_backbone_of_another_depth_or_width(tmp_path: Path) -> None:
    """A ResNet-50 file into a ResNet-101 copied 318 of 624 backbone tensors and trained on; a narrower file
    copied only the BN batch counters: both left the backbone at random init without a word."""
    r50 = _backbone_file(tmp_path / "r50.pth", "deeplabv3_resnet50", base_width=8)
    with pytest.raises(ValueError, match=r"does not fit the backbone of deeplabv2_resnet101: \d+ missing keys: "
                                         r"backbone\.layer3\.10\."):
        init_from_file(build_model("deeplabv2_resnet101", 21, base_width=8), r50)
    with pytest.raises(ValueError, match=r"does not fit the backbone of deeplabv3_resnet50: \d+ shape mismatches: "
                                         r"backbone\.bn1\.bias \(8,\) vs model \(16,\)"):
        init_from_file(build_model("deeplabv3_resnet50", 21, base_width=16), r50)


def test_init_keeps_the_whole_backbone_and_lets_the_head_differ(tmp_path: Path) -> None:
    """New classes, as the seed fine-tunes: the classifier keeps its fresh init, the backbone is copied whole."""
    torch.manual_seed(0)
    donor = build_model("deeplabv3_thin", 21, **TINY_MODEL)
    torch.save(donor.state_dict(), tmp_path / "voc.pth")
    model = build_model("deeplabv3_thin", len(CLASSES), **TINY_MODEL)
    fresh_head = model.classifier[-1].weight.clone()
    init_from_file(model, tmp_path / "voc.pth")
    own, given = model.state_dict(), donor.state_dict()
    assert all(torch.equal(own[k], given[k]) for k in own if k.startswith("backbone."))
    assert torch.equal(model.classifier[-1].weight, fresh_head)
