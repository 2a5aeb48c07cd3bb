"""`train --init` from a DeepLab-v3 checkpoint saved when every output stride took ASPP rates 12/24/36 (format
version 2) keeps those rates at output stride 16, and records them, so its checkpoints export and evaluate the
network it trained; newer weights, and older ones of output stride 8, start at the paper's 6/12/18."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.models.segmentation.deeplabv3 import ASPPConv

from model_export.checkpoint import load_checkpoint_model, read_training_checkpoint
from model_export.models import SegmentationModel
from model_export.train import train

from .conftest import TINY_MODEL, tiny_config


def aspp_rates(model: SegmentationModel) -> list[int]:
    return [m[0].dilation[0] for m in model.classifier.modules() if isinstance(m, ASPPConv)]


def run_from(tiny_voc: Path, out: Path, init: Path, **model_kwargs: object) -> dict:
    """Two iterations of a deeplabv3_thin run initialised from `init`; its checkpoint dict."""
    cfg = tiny_config(tiny_voc, out, init=str(init), max_iter=2, model_kwargs={**TINY_MODEL, **model_kwargs})
    return read_training_checkpoint(train(cfg)["checkpoint"])


def saved_as(version: int, checkpoint: Path, out: Path) -> Path:
    """The checkpoint as the code of format `version` wrote it (the same fields under that format's name)."""
    blob = torch.load(checkpoint, weights_only=False)
    blob["format"] = f"model_export.train/{version}"
    torch.save(blob, out)
    return out


def test_a_run_from_version_2_weights_at_stride_16_keeps_their_rates(tiny_checkpoint: Path, tiny_voc: Path,
                                                                     tmp_path: Path) -> None:
    old = saved_as(2, tiny_checkpoint, tmp_path / "v2.pt")  # deeplabv3_thin at output stride 16
    assert aspp_rates(load_checkpoint_model(old)[0]) == [12, 24, 36]
    ckpt = run_from(tiny_voc, tmp_path / "run", old)
    assert ckpt["model_kwargs"] == {**TINY_MODEL, "legacy_aspp_rates": True}
    assert aspp_rates(load_checkpoint_model(tmp_path / "run" / "checkpoint.pt")[0]) == [12, 24, 36]
    # The ASPP trained on from the file's weights (the run did not start the head afresh).
    before = read_training_checkpoint(old)["state_dict"]
    key = "classifier.0.convs.1.0.weight"
    assert ckpt["state_dict"][key].shape == before[key].shape and not torch.equal(ckpt["state_dict"][key], before[key])


def test_a_run_from_current_weights_takes_the_papers_rates(tiny_checkpoint: Path, tiny_voc: Path,
                                                           tmp_path: Path) -> None:
    ckpt = run_from(tiny_voc, tmp_path / "run", tiny_checkpoint)
    assert ckpt["model_kwargs"] == TINY_MODEL
    assert aspp_rates(load_checkpoint_model(tmp_path / "run" / "checkpoint.pt")[0]) == [6, 12, 18]


def test_version_2_weights_of_stride_8_start_at_the_papers_rates(tiny_voc: Path, tmp_path: Path) -> None:
    """At output stride 8 version 2 built today's network: a run at 16 from its weights takes 6/12/18."""
    cfg = tiny_config(tiny_voc, tmp_path / "os8", max_iter=1, model_kwargs={**TINY_MODEL, "output_stride": 8})
    old = saved_as(2, Path(train(cfg)["checkpoint"]), tmp_path / "v2_os8.pt")
    assert aspp_rates(load_checkpoint_model(old)[0]) == [12, 24, 36]
    ckpt = run_from(tiny_voc, tmp_path / "run", old)
    assert ckpt["model_kwargs"] == TINY_MODEL
    assert aspp_rates(load_checkpoint_model(tmp_path / "run" / "checkpoint.pt")[0]) == [6, 12, 18]
