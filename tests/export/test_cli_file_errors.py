"""Files of the wrong kind on real `segment-export` command lines end as one line, exit status 2, no traceback:
an --out that is a file (train, synth), and a --model/--weights file that is no PyTorch checkpoint, whose line
must not repeat torch's advice to retry with `weights_only=False` (which would run the file's code)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from model_export.synthetic import SceneConfig, write_dataset

REPO = Path(__file__).resolve().parents[2]


def _segment_export(*args: str) -> str:
    """Run `segment-export args` in a real process; assert exit 2 and one stderr line without a traceback; it."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "model_export.cli", *args], capture_output=True, text=True,
                          timeout=180, cwd=REPO, env=env)
    err = done.stderr.strip()
    assert done.returncode == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_dataset(root, train=1, val=1, config=SceneConfig(min_side=48, max_side=64))
    return root


@pytest.mark.parametrize("command", ["train", "synth"])
def test_an_out_that_is_a_file_is_one_line(command: str, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("a file, not a directory")
    extra = ["--data", str(dataset), "--arch", "deeplabv3_thin", "--iters", "1"] if command == "train" else []
    err = _segment_export(command, *extra, "--out", str(out))
    assert err.startswith(f"segment-export {command}: error:") and str(out) in err and "not a directory" in err
    assert out.read_text() == "a file, not a directory"


def test_synth_below_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    err = _segment_export("synth", "--out", str(tmp_path / "afile" / "data"), "--train", "1", "--val", "0")
    assert "Not a directory" in err


@pytest.mark.parametrize("kind", ["json", "random-bytes"])
@pytest.mark.parametrize("command", ["evaluate", "export", "train"])
def test_a_file_that_is_no_checkpoint_is_named_without_unsafe_advice(kind: str, command: str, dataset: Path,
                                                                     tmp_path: Path) -> None:
    path = tmp_path / ("names.json" if kind == "json" else "weights.pth")
    if kind == "json":
        path.write_text('["background", "cat", "dog"]')
    else:
        path.write_bytes(bytes(range(256)[::-1]) * 8)  # fixed "random" bytes: no zip, no pickle
    args = {"evaluate": ["evaluate", "--model", str(path), "--data", str(dataset)],
            "export": ["export", "--weights", str(path), "-o", str(tmp_path / "m.onnx")],
            "train": ["train", "--init", str(path), "--data", str(dataset), "--arch", "deeplabv3_thin", "--iters", "1",
                      "--out", str(tmp_path / "run")]}[command]
    err = _segment_export(*args)
    assert f"{path} is not a readable PyTorch checkpoint (zip or legacy pickle)" in err
    assert err.count(str(path)) == 1, err  # named once
    assert "weights_only" not in err and "arbitrary code" not in err
    assert not (tmp_path / "m.onnx").exists()
