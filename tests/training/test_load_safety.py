"""Every command that reads a weights file reads tensors, plain values and a checkpoint's RNG states only: a file
whose pickle would run code is refused in one line (exit 2) with nothing run, and our own checkpoints, their RNG
states included, read back exactly."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model_export.catalog import CACHE_ENV
from model_export.checkpoint import read_training_checkpoint, rng_state, save_checkpoint, set_rng_state
from model_export.cli import main
from tests.weights.hostile_files import (
    MARK_TEXT,
    PAYLOADS,
    ExecPayload,
    checkpoint_with_payload,
    state_dict_with_payload,
)

# A tiny run of the tiny checkpoint's network (tests/training/conftest.py), for the commands that train.
TRAIN = ["train", "--arch", "deeplabv3_thin", "--classes", "synthetic", "--base-width", "4", "--head-channels", "8",
         "--output-stride", "16", "--iters", "2", "--batch-size", "2", "--crop-size", "40", "--no-progress"]


def _commands(weights: Path, data: Path, out: Path) -> dict[str, list[str]]:
    """Each command line that reads `weights`, by the flag that names it."""
    return {
        "export --weights": ["export", "--weights", str(weights), "-o", str(out / "m.onnx")],
        "evaluate --model": ["evaluate", "--model", str(weights), "--data", str(data), "--no-progress"],
        "train --init": [*TRAIN, "--init", str(weights), "--data", str(data), "--out", str(out / "init")],
        "train --resume": ["train", "--resume", str(weights), "--data", str(data), "--out", str(out / "resume")],
    }


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
@pytest.mark.parametrize("hidden_in", ["state_dict", "checkpoint"])
def test_a_file_that_would_run_code_is_refused_by_every_command(
        payload: str, hidden_in: str, tiny_voc: Path, tiny_checkpoint: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    mark = tmp_path / "mark"
    if hidden_in == "state_dict":
        path = state_dict_with_payload(tmp_path / "evil.pth", PAYLOADS[payload](mark))
    else:  # every key a checkpoint has, a fitting state_dict, the payload in its args
        path = checkpoint_with_payload(tmp_path / "evil.pt", read_training_checkpoint(tiny_checkpoint),
                                       PAYLOADS[payload](mark))
    named = {"exec": "builtins.exec", "method": "builtins.getattr"}[payload]
    for flag, argv in _commands(path, tiny_voc, tmp_path).items():
        assert main(argv) == 2, flag
        line = _one_error_line(capsys)
        assert str(path) in line and named in line and "refused" in line, (flag, line)
        assert not mark.exists(), f"{flag} ran the file's code"
    # The payload is live: a full unpickle (what the commands did before) runs it.
    torch.load(path, weights_only=False)
    assert mark.read_text() == MARK_TEXT


@pytest.mark.parametrize("content", ["truncated", "empty"])
def test_init_from_a_truncated_or_empty_file_is_one_line(content: str, tiny_voc: Path, tiny_checkpoint: Path,
                                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / f"{content}.pt"
    path.write_bytes(tiny_checkpoint.read_bytes()[:1000] if content == "truncated" else b"")
    assert main([*TRAIN, "--init", str(path), "--data", str(tiny_voc), "--out", str(tmp_path / "run")]) == 2
    line = _one_error_line(capsys)
    # Named once, as no readable PyTorch file (the truncated zip) or no checkpoint at all (the empty file).
    assert f"{path} is not a readable PyTorch" in line and line.count(str(path)) == 1, line
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def _draws() -> tuple[Any, ...]:
    """What each generator a checkpoint records gives next."""
    return random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()


def test_rng_states_read_back_exactly(tmp_path: Path) -> None:
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    _draws()  # numpy now holds a cached gaussian: its state's last two fields are set too
    path = save_checkpoint(tmp_path / "c.pt", {"state_dict": {}, "rng": rng_state()})
    expected = _draws()
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    set_rng_state(read_training_checkpoint(path)["rng"])
    assert _draws() == expected


def test_a_real_runs_checkpoint_reads_as_a_full_unpickle_does(tiny_checkpoint: Path) -> None:
    ckpt = read_training_checkpoint(tiny_checkpoint)
    # Our own file, just written: the reference reading of what the loader must reproduce.
    reference = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)
    assert ckpt.keys() == reference.keys()
    assert ckpt["rng"]["python"] == reference["rng"]["python"]
    mine, theirs = ckpt["rng"]["numpy"], reference["rng"]["numpy"]
    assert mine[0] == theirs[0] == "MT19937" and np.array_equal(mine[1], theirs[1]) and mine[2:] == theirs[2:]
    assert mine[1].dtype == np.uint32
    assert torch.equal(ckpt["rng"]["torch"], reference["rng"]["torch"])
    assert all(torch.equal(v, reference["state_dict"][k]) for k, v in ckpt["state_dict"].items())
    assert ckpt["args"] == reference["args"] and ckpt["iteration"] == reference["iteration"] == 4


def test_export_refuses_an_arch_other_than_the_checkpoints(tiny_checkpoint: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.onnx"
    assert main(["export", "--weights", str(tiny_checkpoint), "--arch", "deeplabv2_thin", "-o", str(out)]) == 2
    line = _one_error_line(capsys)
    assert "deeplabv3_thin checkpoint, not deeplabv2_thin" in line and "--arch" in line
    assert not out.exists()
    # The checkpoint's own arch, given, is what it builds anyway.
    assert main(["export", "--weights", str(tiny_checkpoint), "--arch", "deeplabv3_thin", "-o", str(out)]) == 0
    assert out.stat().st_size > 0


def test_init_imagenet_never_unpickles_a_file_planted_in_the_cache(
        tiny_voc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`--init imagenet` reads torchvision's ResNet file from torch's hub cache when it is there: a file of that
    name is checked against the sha256 prefix in its name and read as tensors only, never fully unpickled."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(CACHE_ENV, raising=False)
    url = torchvision.models.get_weight("ResNet50_Weights.IMAGENET1K_V1").url
    planted = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    planted.parent.mkdir(parents=True)
    mark = tmp_path / "mark"
    state_dict_with_payload(planted, ExecPayload(mark))
    argv = ["train", "--arch", "deeplabv3_resnet50", "--classes", "synthetic", "--init", "imagenet", "--iters", "1",
            "--batch-size", "1", "--crop-size", "40", "--no-progress", "--data", str(tiny_voc),
            "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert planted.name in line and "sha256" in line, line
    assert not mark.exists() and not planted.exists()  # refused unread, and out of the cache
