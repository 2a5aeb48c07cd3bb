"""Ctrl-C during `segment-export train` (a real process, a real SIGINT): one line naming the iteration, exit status
130, no traceback, a checkpoint at that iteration that `--resume` continues from."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from model_export.atomic import leftover_partials

TRAIN = ["train", "--arch", "deeplabv3_thin", "--classes", "synthetic", "--base-width", "4", "--head-channels", "8",
         "--output-stride", "16", "--crop-size", "32", "--batch-size", "2", "--iters", "5000", "--save-every", "4000",
         "--log-every", "1", "--no-progress", "--train-bn", "--threads", "1"]


def _command(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "model_export.cli", *TRAIN, "--data", str(data), "--out", str(out), *extra]


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": root}


def _interrupt(data: Path, out: Path, *extra: str, group: bool = False) -> tuple[int, str]:
    """Start training, SIGINT it once metrics.csv shows a few iterations; (exit status, stderr)."""
    proc = subprocess.Popen(_command(data, out, *extra), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        metrics = out / "metrics.csv"
        while not (metrics.exists() and len(metrics.read_text().splitlines()) > 3):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        # `group`: as a terminal sends it, to the data loader workers too.
        os.killpg(proc.pid, signal.SIGINT) if group else proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


def _saved_iteration(err: str, out: Path) -> int:
    lines = [line for line in err.splitlines() if line.startswith("interrupted")]
    ckpt = out / "checkpoint.pt"
    assert len(lines) == 1, err
    head, saved_to, resume = lines[0].split("; ")
    assert saved_to == f"checkpoint saved to {ckpt}" and resume == f"continue with --resume {ckpt}"
    iteration = int(head.removeprefix("interrupted at iteration "))
    assert torch.load(ckpt, weights_only=False)["iteration"] == iteration
    assert not ckpt.with_suffix(".pt.tmp").exists() and leftover_partials(ckpt.parent) == []  # no save left half
    return iteration


def test_ctrl_c_saves_the_current_iteration_and_resume_continues(tiny_voc: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    status, err = _interrupt(tiny_voc, out)
    assert status == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    iteration = _saved_iteration(err, out)
    assert 3 <= iteration < 4000  # before any periodic save
    resumed = subprocess.run(_command(tiny_voc, out, "--resume", str(out / "checkpoint.pt"),
                                      "--stop-at", str(iteration + 2)),
                             env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert torch.load(out / "checkpoint.pt", weights_only=False)["iteration"] == iteration + 2
    logged = [int(line.split(",")[0]) for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert logged[-3:] == [iteration, iteration + 1, iteration + 2]


def test_ctrl_c_to_the_process_group_with_loader_workers(tiny_voc: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    status, err = _interrupt(tiny_voc, out, "--workers", "2", group=True)
    assert status == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    _saved_iteration(err, out)
