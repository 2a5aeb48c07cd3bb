"""DeepLab-v2 is built in the Caffe geometry of MSRA's weights (stride on a downsampling block's 1x1, ceil-mode
pooling). Started from a backbone trained in torchvision's geometry (stride on the 3x3, floor-mode pooling), the
same weights would compute other features under frozen BN statistics that no longer fit them: such a run builds
torchvision's geometry, and a run started from its checkpoint keeps it."""

from __future__ import annotations

from pathlib import Path

import torch

from model_export.architectures import build_model
from model_export.checkpoint import load_checkpoint_model, read_training_checkpoint
from model_export.init_weights import backbone_geometry, read_init_file
from model_export.train import train

from .conftest import TINY_MODEL, tiny_config

THIN_V2 = {"base_width": 4, "output_stride": 16}
TORCHVISION = {"caffe_style": False}


def test_torchvision_imagenet_weights_build_deeplabv2_in_their_geometry() -> None:
    assert backbone_geometry("imagenet", None, "deeplabv2_resnet101") == TORCHVISION
    # DeepLab-v3 is in torchvision's geometry already: nothing to set.
    assert backbone_geometry("imagenet", None, "deeplabv3_resnet101") == {}


def test_a_segmentation_state_dict_keeps_the_architecture_geometry(tmp_path: Path) -> None:
    """A state dict of a whole segmentation model (`backbone.`, `classifier.`) names no geometry: the arch's own."""
    path = tmp_path / "seg.pth"
    torch.save(build_model("deeplabv2_thin", 3, **THIN_V2).state_dict(), path)
    assert backbone_geometry(path, read_init_file(path), "deeplabv2_thin") == {}


def test_checkpoints_carry_their_backbone_geometry_into_deeplabv2(tiny_voc: Path, tmp_path: Path) -> None:
    caffe_run = train(tiny_config(tiny_voc, tmp_path / "v2", arch="deeplabv2_thin", model_kwargs=THIN_V2,
                                  max_iter=1))["checkpoint"]
    v3_run = train(tiny_config(tiny_voc, tmp_path / "v3", max_iter=1))["checkpoint"]
    caffe, v3 = read_init_file(caffe_run), read_init_file(v3_run)
    assert backbone_geometry(caffe_run, caffe, "deeplabv2_thin") == {}
    assert backbone_geometry(v3_run, v3, "deeplabv2_thin") == TORCHVISION
    assert backbone_geometry(v3_run, v3, "deeplabv3_thin") == {}

    # A DeepLab-v2 run from the v3 checkpoint trains in torchvision's geometry, and one from that run keeps it.
    v3_kwargs = {"base_width": TINY_MODEL["base_width"], "output_stride": 16}
    first = train(tiny_config(tiny_voc, tmp_path / "from_v3", arch="deeplabv2_thin", model_kwargs=dict(v3_kwargs),
                              init=str(v3_run), max_iter=1))["checkpoint"]
    assert read_training_checkpoint(first)["model_kwargs"] == {**v3_kwargs, **TORCHVISION}
    second = train(tiny_config(tiny_voc, tmp_path / "chained", arch="deeplabv2_thin", model_kwargs=dict(v3_kwargs),
                               init=str(first), max_iter=1))["checkpoint"]
    assert read_training_checkpoint(second)["model_kwargs"] == {**v3_kwargs, **TORCHVISION}
    assert load_checkpoint_model(second)[0].backbone.maxpool.ceil_mode is False
