"""Caffe-style ResNet geometry strides every downsampling block in its 1x1 conv (as Caffe's ResNet does), at
output stride 8 and 16. Checkpoints saved before layer3 moved its stride too (format version 1) rebuild the
geometry they were trained in, and compute the same logits; new checkpoints rebuild the corrected one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from model_export.architectures import build_model
from model_export.checkpoint import (
    CheckpointError,
    checkpoint_model_kwargs,
    load_checkpoint_model,
    read_training_checkpoint,
    save_checkpoint,
)
from model_export.models import SegmentationModel
from testkit.photos import photo

STAGES = ("layer1", "layer2", "layer3", "layer4")
CAFFE_ARCHS = ("deeplabv2_thin", "deeplabv2_resnet101")
# Which conv of each stage's first block strides, in Caffe's ResNet: the 1x1, wherever the stage downsamples.
CAFFE_STRIDES = {
    8: {"layer1": None, "layer2": "1x1", "layer3": None, "layer4": None},
    16: {"layer1": None, "layer2": "1x1", "layer3": "1x1", "layer4": None},
}
# The file the code before format version 2 wrote: its save_checkpoint added exactly these two fields.
OLD_FIELDS = {"format": "model_export.train/1", "single_block_dilation": True}


def strided(model: SegmentationModel) -> dict[str, str | None]:
    """Per stage, the conv of its first block that has stride 2: '1x1' (conv1), '3x3' (conv2) or None."""
    found: dict[str, str | None] = {}
    for name in STAGES:
        first = getattr(model.backbone, name)[0]
        convs = [tag for tag, conv in (("1x1", first.conv1), ("3x3", first.conv2)) if conv.stride != (1, 1)]
        assert len(convs) <= 1, (name, convs)
        found[name] = convs[0] if convs else None
    return found


def old_geometry(model: SegmentationModel, output_stride: int) -> SegmentationModel:
    """The network the code before format version 2 built: only layer2 moved torchvision's stride to the 1x1, so
    at output stride 16 layer3 strided its 3x3 (at 8 layer3 does not downsample and nothing differs)."""
    if output_stride == 16:
        first = model.backbone.layer3[0]
        first.conv1.stride, first.conv2.stride = (1, 1), (2, 2)
    return model


def photos() -> torch.Tensor:
    """Two real photographs at an odd size, ImageNet-normalised NCHW float (what the models take)."""
    batch = torch.stack([torch.from_numpy(photo(name, (97, 75))) for name in ("astronaut.png", "coffee.png")])
    x = batch.permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def record(model: SegmentationModel, arch: str, model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """What the trainer passes to save_checkpoint, with a randomised BN state so every layer matters."""
    torch.manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return {"arch": arch, "num_classes": 3, "model_kwargs": model_kwargs, "preprocessing": "imagenet",
            "classes": ["a", "b", "c"], "state_dict": model.state_dict(), "iteration": 0}


@pytest.mark.parametrize("arch", CAFFE_ARCHS)
@pytest.mark.parametrize("output_stride", [8, 16])
def test_caffe_style_strides_the_1x1_wherever_a_stage_downsamples(arch: str, output_stride: int) -> None:
    model = build_model(arch, 3, base_width=4, output_stride=output_stride).eval()
    assert strided(model) == CAFFE_STRIDES[output_stride]
    # The shortcut strides with the block, and the features are at the output stride: DeepLab's 8k+1 sizes
    # (513) give (size - 1) / stride + 1 cells with Caffe's ceil-mode pooling.
    downsample = [getattr(model.backbone, s)[0].downsample[0].stride[0] for s in STAGES]
    assert downsample == [1, 2, 2 if output_stride == 16 else 1, 1]
    with torch.no_grad():
        assert model.backbone(torch.zeros(1, 3, 65, 65))["out"].shape[-2:] == (64 // output_stride + 1,) * 2


def test_torchvision_geometry_still_strides_the_3x3() -> None:
    """The DeepLab-v3 layouts are torchvision's (its published weights need it): the stride stays on the 3x3."""
    model = build_model("deeplabv3_thin", 3, base_width=4, output_stride=16)
    assert strided(model) == {"layer1": None, "layer2": "3x3", "layer3": "3x3", "layer4": None}


@pytest.mark.parametrize("arch", CAFFE_ARCHS)
@pytest.mark.parametrize("output_stride", [8, 16])
def test_an_old_checkpoint_loads_to_the_logits_it_computed_before(tmp_path: Path, arch: str,
                                                                  output_stride: int) -> None:
    kwargs = {"base_width": 4, "output_stride": output_stride}
    torch.manual_seed(0)
    old = old_geometry(build_model(arch, 3, **kwargs), output_stride)
    rec = record(old, arch, kwargs)
    old.eval()
    path = tmp_path / "old.pt"
    torch.save({**OLD_FIELDS, **rec}, path)  # the old save_checkpoint: torch.save({format, marker, **ckpt})

    loaded, info = load_checkpoint_model(path)
    assert info["format"] == OLD_FIELDS["format"]
    assert strided(loaded) == {**CAFFE_STRIDES[output_stride], "layer3": "3x3" if output_stride == 16 else None}
    x = photos()
    with torch.no_grad():
        before = old(x)
        assert torch.equal(loaded(x), before)
        # The same weights in the corrected geometry compute other logits at 16: the version is what keeps them.
        corrected = build_model(arch, 3, **kwargs).eval()
        corrected.load_state_dict(rec["state_dict"])
        difference = (corrected(x) - before).abs().max().item()
    if output_stride == 16:
        assert difference > 1e-3 * before.abs().max().item()
    else:
        assert difference == 0.0


def test_a_new_checkpoint_round_trips_in_the_corrected_geometry(tmp_path: Path) -> None:
    kwargs = {"base_width": 4, "output_stride": 16}
    torch.manual_seed(0)
    model = build_model("deeplabv2_thin", 3, **kwargs)
    rec = record(model, "deeplabv2_thin", kwargs)
    path = save_checkpoint(tmp_path / "new.pt", rec)

    blob = read_training_checkpoint(path)
    assert blob["format"] != OLD_FIELDS["format"] and "legacy_caffe_stride" not in checkpoint_model_kwargs(blob)
    loaded, _ = load_checkpoint_model(path)
    assert strided(loaded) == CAFFE_STRIDES[16]
    assert loaded.state_dict().keys() == rec["state_dict"].keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in rec["state_dict"].items())
    x = photos()
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_a_resumed_old_run_records_its_geometry_in_the_new_format(tmp_path: Path) -> None:
    """What `train --resume` saves from an old checkpoint: the kwargs it rebuilt it with, in the current format."""
    kwargs = {"base_width": 4, "output_stride": 16}
    torch.manual_seed(0)
    old = old_geometry(build_model("deeplabv2_thin", 3, **kwargs), 16)
    rec = record(old, "deeplabv2_thin", kwargs)
    torch.save({**OLD_FIELDS, **rec}, tmp_path / "old.pt")
    resumed_kwargs = checkpoint_model_kwargs(read_training_checkpoint(tmp_path / "old.pt"))
    new = save_checkpoint(tmp_path / "resumed.pt", {**rec, "model_kwargs": resumed_kwargs})
    assert read_training_checkpoint(new)["format"] != OLD_FIELDS["format"]
    assert strided(load_checkpoint_model(new)[0])["layer3"] == "3x3"


def test_old_torchvision_layouts_take_no_caffe_setting(tmp_path: Path) -> None:
    """Version 1 of an architecture without Caffe geometry rebuilds as it always did (with the ASPP rates it had at
    output stride 16, a geometry of its own)."""
    kwargs = {"base_width": 4, "output_stride": 16}
    model = build_model("deeplabv3_thin", 3, **kwargs, legacy_aspp_rates=True)
    torch.save({**OLD_FIELDS, **record(model, "deeplabv3_thin", kwargs)}, tmp_path / "old.pt")
    assert checkpoint_model_kwargs(read_training_checkpoint(tmp_path / "old.pt")) == {**kwargs,
                                                                                      "legacy_aspp_rates": True}
    assert strided(load_checkpoint_model(tmp_path / "old.pt")[0])["layer3"] == "3x3"


def test_a_checkpoint_from_a_newer_format_is_refused(tmp_path: Path) -> None:
    model = build_model("deeplabv2_thin", 3, base_width=4)
    torch.save({**record(model, "deeplabv2_thin", {"base_width": 4}), "format": "model_export.train/99"},
               tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=r"model_export\.train/99 checkpoint, newer than"):
        load_checkpoint_model(tmp_path / "future.pt")
