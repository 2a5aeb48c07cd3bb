"""Every dilated stage applies its atrous rate, whatever its depth; old checkpoints keep their geometry."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model_export.architectures import build_model
from model_export.checkpoint import load_checkpoint_model, save_checkpoint


def rates(model) -> list[list[int]]:
    b = model.backbone
    return [[blk.conv2.dilation[0] for blk in stage] for stage in (b.layer2, b.layer3, b.layer4)]


def paddings_match(model) -> bool:
    return all(m.padding == m.dilation for m in model.modules()
               if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) and m.dilation != (1, 1))


@pytest.mark.parametrize("arch", ["deeplabv2_thin", "deeplabv3_thin"])
@pytest.mark.parametrize(("stride", "expected"), [(8, [[1], [2], [4]]), (16, [[1], [1], [2]])])
def test_single_block_stages_take_their_rate(arch: str, stride: int, expected: list[list[int]]) -> None:
    model = build_model(arch, 3, base_width=4, output_stride=stride)
    assert rates(model) == expected and paddings_match(model)


def test_multi_block_stages_keep_torchvision_and_caffe_layouts() -> None:
    # torchvision: the first block of a dilated stage keeps the previous rate (its published weights need it).
    v3 = build_model("deeplabv3_thin", 3, base_width=4, layers=(1, 2, 2, 2), output_stride=8)
    assert rates(v3) == [[1, 1], [1, 2], [2, 4]]
    # DeepLab-v2 (Caffe): the first block takes the stage's rate too.
    v2 = build_model("deeplabv2_thin", 3, base_width=4, layers=(1, 2, 2, 2), output_stride=8)
    assert rates(v2) == [[1, 1], [2, 2], [4, 4]] and paddings_match(v2)


def test_the_rate_changes_what_the_model_computes() -> None:
    torch.manual_seed(0)
    fixed = build_model("deeplabv3_thin", 3, base_width=4, output_stride=8).eval()
    legacy = build_model("deeplabv3_thin", 3, base_width=4, output_stride=8, legacy_dilation=True).eval()
    legacy.load_state_dict(fixed.state_dict())
    assert rates(legacy) == [[1], [1], [2]]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(fixed(x), legacy(x))


def test_checkpoints_from_before_the_fix_rebuild_their_geometry(tmp_path: Path) -> None:
    model = build_model("deeplabv3_thin", 3, base_width=4, output_stride=8, legacy_dilation=True)
    record = {"arch": "deeplabv3_thin", "num_classes": 3, "model_kwargs": {"base_width": 4, "output_stride": 8},
              "preprocessing": "imagenet", "classes": ["a", "b", "c"], "state_dict": model.state_dict()}
    path = save_checkpoint(tmp_path / "old.pt", record)
    # A file written by the trainer before the fix has no marker: simulate it by dropping the key.
    blob = torch.load(path, weights_only=False)
    del blob["single_block_dilation"]
    torch.save(blob, path)
    assert rates(load_checkpoint_model(path)[0]) == [[1], [1], [2]]
    new = save_checkpoint(tmp_path / "new.pt", record)
    assert rates(load_checkpoint_model(new)[0]) == [[1], [2], [4]]


def test_train_flag_keeps_the_demo_geometry() -> None:
    from model_export.cli import build_parser
    from model_export.train_cli import model_kwargs as _model_kwargs

    base = ["train", "--data", "d", "--out", "o", "--arch", "deeplabv3_thin", "--output-stride", "8"]
    args = build_parser("train").parse_args([*base, "--legacy-dilation"])
    assert _model_kwargs(args)["legacy_dilation"] is True
    model = build_model("deeplabv3_thin", 7, **_model_kwargs(args))
    assert rates(model) == [[1], [1], [2]]
    assert "legacy_dilation" not in _model_kwargs(build_parser("train").parse_args(base))
