"""A resumed run keeps the settings recorded in its checkpoint: `--resume` + `--data` + `--out` continues the
same LR schedule and data stream; a given option that contradicts the record is refused, naming it."""

from __future__ import annotations

import csv
import logging
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from model_export.checkpoint import read_training_checkpoint, save_checkpoint
from model_export.cli import build_parser, main
from model_export.train import train

from .conftest import tiny_config

# A run whose every setting differs from TrainConfig's defaults where it matters: schedule (iters, lr), data
# stream (seed, batch, accumulation, crop, scales) and parameter groups (trained BN).
RUN = ["train", "--arch", "deeplabv3_thin", "--classes", "synthetic", "--base-width", "4", "--head-channels", "8",
       "--output-stride", "16", "--iters", "6", "--lr", "0.01", "--seed", "5", "--batch-size", "2",
       "--accumulate", "2", "--crop-size", "40", "--scales", "1,0.75", "--train-bn", "--log-every", "1",
       "--no-progress"]


def _lr_log(out: Path) -> list[tuple[str, str]]:
    """(iteration, lr) as written to metrics.csv."""
    with open(out / "metrics.csv", newline="") as f:
        return [(row["iteration"], row["lr"]) for row in csv.DictReader(f)]


def test_resume_with_only_the_checkpoint_continues_the_recorded_run(tiny_voc: Path, tmp_path: Path) -> None:
    data = ["--data", str(tiny_voc)]
    assert main([*RUN, *data, "--out", str(tmp_path / "straight")]) == 0
    assert main([*RUN, *data, "--out", str(tmp_path / "half"), "--stop-at", "3"]) == 0
    torch.manual_seed(12345)  # the resumed run must not depend on the caller's RNG either
    ckpt = tmp_path / "half" / "checkpoint.pt"
    assert main(["train", "--resume", str(ckpt), *data, "--out", str(tmp_path / "resumed")]) == 0
    resumed_early = ["train", "--resume", str(ckpt), *data, "--out", str(tmp_path / "early")]
    assert main([*resumed_early, "--stop-at", "3"]) == 2  # at the checkpoint's iteration: nothing to train
    assert not (tmp_path / "early" / "checkpoint.pt").exists()
    # Same poly schedule (6 iterations from lr 0.01), logged every iteration as recorded.
    assert _lr_log(tmp_path / "resumed") == _lr_log(tmp_path / "straight")[3:]
    # Same data stream and optimiser: the weights are bit-identical to the uninterrupted run's.
    straight = read_training_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    resumed = read_training_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert resumed["iteration"] == 6 and resumed["max_iter"] == 6
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    for k, v in straight["state_dict"].items():
        assert torch.equal(v, resumed["state_dict"][k]), k


def test_a_given_option_that_contradicts_the_checkpoint_is_refused(tiny_voc: Path, tiny_checkpoint: Path,
                                                                  tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # --iters agrees with the record (4), --lr does not (0.01): only --lr is named.
    common = ["train", "--resume", str(tiny_checkpoint), "--data", str(tiny_voc), "--out", str(tmp_path)]
    assert main([*common, "--iters", "4", "--lr", "0.02"]) == 2
    err = capsys.readouterr().err
    assert "--lr" in err and "0.02" in err and "0.01" in err and "--iters" not in err, err
    assert main([*common, "--is-training", "stats"]) == 2  # recorded: BN trained in full
    assert "--is-training" in capsys.readouterr().err


def _resumed(recorded: dict | None, *flags: str):
    from model_export.train_cli import config_from_args, resumed_config

    args = build_parser("train").parse_args(["train", "--data", "d2", "--out", "o2", "--resume", "r.pt", *flags])
    return resumed_config(args, config_from_args(args), recorded)


def test_resumed_settings_come_from_the_record_unless_they_may_change(tmp_path: Path) -> None:
    recorded = asdict(tiny_config(tmp_path / "d", tmp_path / "o", stop_at=3, log_every=1, workers=0,
                                  resume="old.pt"))
    cfg = _resumed(recorded, "--log-every", "5", "--workers", "2", "--device", "cpu", "--lr", "0.01",
                   "--no-progress", "--threads", "1")
    assert asdict(cfg) == {**recorded, "data": "d2", "out": "o2", "resume": "r.pt", "stop_at": None,
                           "log_every": 5, "workers": 2, "device": "cpu", "progress": False}
    # Not given: the recorded value, not the option's default.
    assert _resumed(recorded).log_every == 1
    for flags in (("--seed", "6"), ("--scales", "1,0.5"), ("--no-mirror",), ("--base-width", "8")):
        with pytest.raises(ValueError, match=flags[0]):
            _resumed(recorded, *flags)


def test_checkpoints_without_recorded_settings_resume_with_the_options(tiny_voc: Path, tiny_checkpoint: Path,
                                                                       tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    assert _resumed(None, "--lr", "0.5").base_lr == 0.5
    blob = read_training_checkpoint(tiny_checkpoint)
    del blob["args"], blob["format"]
    old = save_checkpoint(tmp_path / "old.pt", blob)
    with caplog.at_level(logging.WARNING, logger="model_export.train"):
        summary = train(tiny_config(tiny_voc, tmp_path / "out", resume=str(old), max_iter=5))
    assert summary["iterations"] == 1 and "records no settings" in caplog.text


def test_train_refuses_a_config_that_contradicts_the_checkpoint(tiny_voc: Path, tiny_checkpoint: Path,
                                                                tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"base_lr=0\.02 \(checkpoint: 0\.01\)"):
        train(tiny_config(tiny_voc, tmp_path, resume=str(tiny_checkpoint), max_iter=4, base_lr=0.02))
