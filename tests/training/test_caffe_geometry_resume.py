"""Resuming a run saved in checkpoint format version 1 keeps the Caffe-style geometry it was trained in
(layer3 strided in its 3x3 at output stride 16): the resumed run trains it, and its checkpoints, in the current
format, record it."""

from __future__ import annotations

from pathlib import Path

import torch

from model_export.checkpoint import FORMAT, load_checkpoint_model, read_training_checkpoint
from model_export.train import train

from .conftest import tiny_config

V2_THIN = {"arch": "deeplabv2_thin", "model_kwargs": {"base_width": 4, "output_stride": 16}}


def layer3_stride(path: Path) -> tuple[int, int]:
    """Stride of (conv1, conv2) in layer3's first block of the network the checkpoint rebuilds."""
    first = load_checkpoint_model(path)[0].backbone.layer3[0]
    return first.conv1.stride[0], first.conv2.stride[0]


def test_a_resumed_version_1_run_keeps_its_geometry(tiny_voc: Path, tmp_path: Path) -> None:
    half = Path(train(tiny_config(tiny_voc, tmp_path / "half", max_iter=4, stop_at=2, **V2_THIN))["checkpoint"])
    assert layer3_stride(half) == (2, 1)  # a new run: Caffe's stride on the 1x1
    # The same run as the code before format version 2 saved it.
    blob = torch.load(half, weights_only=False)
    blob["format"] = "model_export.train/1"
    torch.save(blob, half)
    assert layer3_stride(half) == (1, 2)

    resumed = Path(train(tiny_config(tiny_voc, tmp_path / "resumed", resume=str(half), max_iter=4,
                                     **V2_THIN))["checkpoint"])
    ckpt = read_training_checkpoint(resumed)
    assert ckpt["format"] == FORMAT and ckpt["iteration"] == 4
    assert ckpt["model_kwargs"]["legacy_caffe_stride"] is True
    assert layer3_stride(resumed) == (1, 2)
    # It trained: the weights moved from the resumed ones.
    before = read_training_checkpoint(half)["state_dict"]
    assert any(not torch.equal(before[k], v) for k, v in ckpt["state_dict"].items() if v.is_floating_point())
