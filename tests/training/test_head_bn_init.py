"""Fine-tuning from given weights freezes BN (the seed's choice for pretrained statistics), but the BN layers of a
head the weights do not supply train, statistics and gamma/beta: frozen at their initialisation they would be
identities. A segmentation checkpoint that supplies the head's BN keeps it frozen, as the backbone's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model_export.checkpoint import read_training_checkpoint
from model_export.cli import main
from model_export.synthetic import CLASSES
from model_export.train import train

from .conftest import TINY_MODEL, tiny_config

HEAD_BN = ("classifier.0.convs.0.1", "classifier.0.convs.1.1", "classifier.0.convs.2.1", "classifier.0.convs.3.1",
           "classifier.0.convs.4.2", "classifier.0.project.1", "classifier.2")
STATS, AFFINE = ("running_mean", "running_var"), ("weight", "bias")


def backbone_file(checkpoint: Path, out: Path) -> Path:
    """A backbone-only state dict (`backbone.*` as an ImageNet-pretrained file gives, no head) from a checkpoint."""
    state = read_training_checkpoint(checkpoint)["state_dict"]
    torch.save({k: v for k, v in state.items() if k.startswith("backbone.")}, out)
    return out


def fine_tune(tiny_voc: Path, out: Path, init: Path, **overrides: object) -> dict:
    """Two iterations from `init` with BN left to the default (frozen on given weights); the checkpoint dict."""
    settings: dict[str, object] = {"max_iter": 2, "train_bn": None, **overrides}
    return read_training_checkpoint(train(tiny_config(tiny_voc, out, init=str(init), **settings))["checkpoint"])


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], layers: tuple[str, ...],
            fields: tuple[str, ...]) -> list[str]:
    return [f"{layer}.{f}" for layer in layers for f in fields
            if not torch.equal(before[f"{layer}.{f}"], after[f"{layer}.{f}"])]


def backbone_bn(state: dict[str, torch.Tensor]) -> list[str]:
    """The backbone's BN statistics and affine parameters (a BN layer is what has a running mean)."""
    layers = [k.removesuffix(".running_mean") for k in state if k.startswith("backbone.") and k.endswith("_mean")]
    return [f"{layer}.{f}" for layer in layers for f in STATS + AFFINE]


def test_a_new_head_trains_its_bn_while_the_backbone_stays_frozen(tiny_checkpoint: Path, tiny_voc: Path,
                                                                  tmp_path: Path) -> None:
    init = backbone_file(tiny_checkpoint, tmp_path / "backbone.pth")
    ckpt = fine_tune(tiny_voc, tmp_path / "run", init)
    after = ckpt["state_dict"]
    assert ckpt["args"]["train_bn"] is False  # BN frozen, as on given weights
    assert ckpt["head_norms_trained"] == sorted(HEAD_BN)
    # Every head BN left its identity start (mean 0, var 1, gamma 1, beta 0): it normalises and shifts.
    for layer in HEAD_BN:
        assert not torch.all(after[f"{layer}.running_mean"] == 0), layer
        assert not torch.all(after[f"{layer}.running_var"] == 1), layer
        assert not torch.all(after[f"{layer}.weight"] == 1), layer
        assert not torch.all(after[f"{layer}.bias"] == 0), layer
    # The backbone's BN keeps the file's statistics and affine parameters.
    given = torch.load(init)
    keys = backbone_bn(after)
    assert keys and all(torch.equal(after[k], given[k]) for k in keys)


def test_a_head_the_checkpoint_supplies_stays_frozen(tiny_checkpoint: Path, tiny_voc: Path, tmp_path: Path) -> None:
    """A full segmentation checkpoint fine-tuned: its head's BN statistics are trained ones, frozen as DeepLab-v3
    freezes BN for its final fine-tuning. A new class count replaces only the last conv."""
    before = read_training_checkpoint(tiny_checkpoint)["state_dict"]
    for classes in (list(CLASSES), [*CLASSES, "unused"]):
        ckpt = fine_tune(tiny_voc, tmp_path / str(len(classes)), tiny_checkpoint, classes=classes)
        assert ckpt["head_norms_trained"] == []
        assert changed(before, ckpt["state_dict"], HEAD_BN, STATS + AFFINE) == []


def test_at_batch_size_1_the_new_head_trains_gamma_and_beta(tiny_checkpoint: Path, tiny_voc: Path,
                                                            tmp_path: Path) -> None:
    """One image per batch gives the image-pooling branch one value per channel: no statistics to take (train
    mode would fail). The new head's BNs keep their initial statistics and train their scale and shift."""
    init = backbone_file(tiny_checkpoint, tmp_path / "backbone.pth")
    after = fine_tune(tiny_voc, tmp_path / "run", init, batch_size=1, accumulate=2)["state_dict"]
    for layer in HEAD_BN:
        assert torch.all(after[f"{layer}.running_mean"] == 0) and torch.all(after[f"{layer}.running_var"] == 1)
        assert not torch.all(after[f"{layer}.weight"] == 1), layer


def test_a_resumed_run_trains_the_same_head_bn(tiny_checkpoint: Path, tiny_voc: Path, tmp_path: Path) -> None:
    """The checkpoint records which head BNs train, so a run stopped and resumed is the run uninterrupted."""
    init = backbone_file(tiny_checkpoint, tmp_path / "backbone.pth")
    whole = fine_tune(tiny_voc, tmp_path / "whole", init, max_iter=3)["state_dict"]
    fine_tune(tiny_voc, tmp_path / "part", init, max_iter=3, stop_at=1)
    resumed = read_training_checkpoint(train(tiny_config(
        tiny_voc, tmp_path / "part", max_iter=3, train_bn=None, resume=str(tmp_path / "part" / "checkpoint.pt"),
    ))["checkpoint"])
    assert resumed["head_norms_trained"] == sorted(HEAD_BN)
    assert all(torch.equal(whole[k], resumed["state_dict"][k]) for k in whole)


def test_the_cli_fine_tunes_an_imagenet_style_backbone(tiny_checkpoint: Path, tiny_voc: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    init = backbone_file(tiny_checkpoint, tmp_path / "backbone.pth")
    argv = ["train", "--data", str(tiny_voc), "--out", str(tmp_path / "run"), "--init", str(init),
            "--arch", "deeplabv3_thin", "--classes", "synthetic", "--base-width", "4", "--head-channels", "8",
            "--output-stride", "16", "--iters", "2", "--batch-size", "2", "--crop-size", "40", "--lr", "0.01",
            "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    after = read_training_checkpoint(tmp_path / "run" / "checkpoint.pt")["state_dict"]
    assert not torch.all(after["classifier.2.running_var"] == 1)
    assert not torch.all(after["classifier.0.project.1.bias"] == 0)
    assert after["classifier.2.bias"].numel() == TINY_MODEL["head_channels"]
