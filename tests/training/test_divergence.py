"""A diverging run stops with one clear error and keeps its last finite checkpoint; BN is trained by default when
training starts from random weights (frozen BN cannot normalise a random deep ResNet)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import model_export.train as train_module
from model_export.checkpoint import nonfinite_tensors, read_training_checkpoint
from model_export.cli import main
from model_export.synthetic import CLASSES
from model_export.train import TrainingDiverged, train
from model_export.train_config import TrainConfig

from .conftest import tiny_config

TINY_FLAGS = ["--arch", "deeplabv3_thin", "--classes", "synthetic", "--base-width", "4", "--head-channels", "8",
              "--output-stride", "16", "--crop-size", "40", "--batch-size", "2", "--lr", "0.01", "--seed", "5",
              "--no-progress"]


def _poison_loss_at(monkeypatch: pytest.MonkeyPatch, call: int, *, gradient_only: bool = False) -> None:
    """Make the `call`-th training loss NaN (or, with `gradient_only`, keep its value and make its gradient NaN,
    as an overflow in the backward pass would)."""
    real = train_module.multiscale_loss
    calls = {"n": 0}

    def loss(*args: object, **kwargs: object) -> torch.Tensor:
        value = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] != call:
            return value
        if gradient_only:
            value.register_hook(lambda grad: grad * float("nan"))
            return value
        return value * float("nan")

    monkeypatch.setattr(train_module, "multiscale_loss", loss)


def _finite_at(path: Path, iteration: int) -> dict:
    ckpt = read_training_checkpoint(path)
    assert ckpt["iteration"] == iteration
    assert nonfinite_tensors(ckpt["state_dict"]) == []
    return ckpt


def test_a_nan_loss_stops_the_cli_with_one_line_and_keeps_the_last_good_checkpoint(
        tiny_voc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data", str(tiny_voc), "--iters", "4", "--save-every", "2", "--train-bn", "off"]
    assert main(["train", *TINY_FLAGS, *data, "--out", str(tmp_path / "good"), "--stop-at", "2"]) == 0
    capsys.readouterr()
    _poison_loss_at(monkeypatch, 3)
    assert main(["train", *TINY_FLAGS, *data, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("segment-export train: error: training diverged: loss is nan at "
                                              "iteration 3"), err
    # What to try, spelt as flags: pretrained weights, BN training (random weights, frozen BN), a lower rate.
    assert "--init imagenet" in err and "--train-bn" in err and "--lr, now 0.01" in err, err
    assert "keeps iteration 2" in err, err
    # The checkpoint on disk is iteration 2's, exactly as an undisturbed run saved it.
    kept = _finite_at(tmp_path / "run" / "checkpoint.pt", 2)["state_dict"]
    good = read_training_checkpoint(tmp_path / "good" / "checkpoint.pt")["state_dict"]
    assert all(torch.equal(kept[k], good[k]) for k in good)


def test_weights_made_non_finite_by_a_finite_loss_are_not_saved(tiny_voc: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss of iteration 2 is finite but its gradient is not: the step leaves NaN weights, which must not
    replace iteration 1's checkpoint (the next loss would only have told one iteration later, or never)."""
    _poison_loss_at(monkeypatch, 2, gradient_only=True)
    with pytest.raises(TrainingDiverged, match=r"weight tensors became non-finite .* at iteration 2; .* keeps "
                                               r"iteration 1"):
        train(tiny_config(tiny_voc, tmp_path, max_iter=3, save_every=1))
    _finite_at(tmp_path / "checkpoint.pt", 1)


def test_a_huge_learning_rate_stops_before_a_non_finite_checkpoint(tiny_voc: Path, tmp_path: Path) -> None:
    """No stand-in: an absurd rate blows the run up for real after its first saved iteration."""
    with pytest.raises(TrainingDiverged, match="at iteration 2; .* keeps iteration 1. Try: lower the learning rate "
                                               r"\(base_lr, now 1e\+10\)"):
        train(tiny_config(tiny_voc, tmp_path, max_iter=4, base_lr=1e10, save_every=1))
    _finite_at(tmp_path / "checkpoint.pt", 1)


def test_random_weights_train_bn_by_default_where_frozen_bn_diverges(tiny_voc: Path, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """The README's run in small: DeepLab-v2 ResNet-101 from random weights. Frozen BN is an identity at
    initialisation, so 33 unnormalised residual blocks blow the activations (and the loss) up."""
    def run(out: str, train_bn: bool | None) -> TrainConfig:
        return TrainConfig(data=str(tiny_voc), out=str(tmp_path / out), arch="deeplabv2_resnet101",
                           classes=list(CLASSES), max_iter=4, batch_size=1, crop_size=33, seed=5,
                           train_bn=train_bn, progress=False)

    summary = train(run("auto", None))
    assert torch.isfinite(torch.tensor(summary["loss"])).item()
    ckpt = _finite_at(summary["checkpoint"], 4)
    assert ckpt["args"]["train_bn"] is True  # recorded resolved, so a resume keeps it
    with (caplog.at_level("WARNING", logger="model_export.train"),
          pytest.raises(TrainingDiverged, match="frozen BN on random weights normalises nothing")):
        train(run("frozen", False))
    assert "BatchNorm is frozen on randomly initialised weights" in caplog.text
    assert not (tmp_path / "frozen" / "checkpoint.pt").exists()


def test_given_weights_keep_bn_frozen_and_a_resume_keeps_its_recorded_mode(tiny_voc: Path, tiny_checkpoint: Path,
                                                                           tmp_path: Path) -> None:
    start = read_training_checkpoint(tiny_checkpoint)["state_dict"]
    fine_tuned = train(tiny_config(tiny_voc, tmp_path / "ft", init=str(tiny_checkpoint), train_bn=None,
                                   max_iter=2))
    after = read_training_checkpoint(fine_tuned["checkpoint"])
    assert after["args"]["train_bn"] is False
    stats = [k for k in start if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(after["state_dict"][k], start[k]) for k in stats)
    # A random-init run records trained BN; resuming it without saying so keeps trained BN, no conflict.
    half = train(tiny_config(tiny_voc, tmp_path / "a", train_bn=None, max_iter=4, stop_at=2))
    resumed = train(tiny_config(tiny_voc, tmp_path / "b", train_bn=None, max_iter=4, resume=str(half["checkpoint"])))
    assert read_training_checkpoint(resumed["checkpoint"])["args"]["train_bn"] is True


@pytest.mark.parametrize(("flags", "train_bn", "affine"), [((), None, True), (("--train-bn", "off"), False, True)])
def test_bn_flag_to_config(flags: tuple[str, ...], train_bn: bool | None, affine: bool) -> None:
    """Not given: resolved by the trainer from where training starts; `off`: frozen, explicitly."""
    from model_export.cli import build_parser
    from model_export.train_cli import config_from_args

    cfg = config_from_args(build_parser("train").parse_args(["train", "--data", "d", "--out", "o", *flags]))
    assert (cfg.train_bn, cfg.bn_affine) == (train_bn, affine)
