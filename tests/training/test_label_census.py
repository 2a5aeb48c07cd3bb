"""Labels that train and score silently wrong through the real command line: binary masks saved 0/255 (255 is the
ignore label) warn with the fix; a split with no labelled pixel is refused in one line, exit status 2."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_export.cli import main

LABELS = Path("VOCdevkit/VOC2012/SegmentationClass")
HINT = "255 is the ignore label; masks with one object class should use 0 (background) and 1"
TRAIN = ["train", "--arch", "deeplabv3_thin", "--base-width", "4", "--head-channels", "8", "--output-stride", "16",
         "--crop-size", "32", "--batch-size", "2", "--iters", "2", "--no-progress", "--train-bn", "--threads", "1"]


def _relabelled(tiny_voc: Path, out: Path, rule: Callable[[np.ndarray], np.ndarray]) -> Path:
    """A copy of the tiny set whose label maps are `rule(ids)`, saved as 8-bit greyscale PNGs."""
    shutil.copytree(tiny_voc, out)
    for path in (out / LABELS).glob("*.png"):
        Image.fromarray(rule(np.asarray(Image.open(path))).astype(np.uint8), "L").save(path)
    return out


def test_binary_masks_saved_as_0_255_warn(tiny_voc: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    data = _relabelled(tiny_voc, tmp_path / "bin", lambda a: np.where((a > 0) & (a != 255), 255, 0))
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        assert main([*TRAIN, "--classes", "background,object", "--data", str(data), "--out", str(run)]) == 0
    trained = [r.getMessage() for r in caplog.records if "never appears" in r.getMessage()]
    assert trained == [f"class 'object' (1) never appears in the 12 label maps of split 'train'; {HINT}"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["evaluate", "--model", str(run / "checkpoint.pt"), "--data", str(data), "--threads", "1",
                     "--no-progress"]) == 0
    scored = [r.getMessage() for r in caplog.records if "never appears" in r.getMessage()]
    assert scored == [f"class 'object' (1) never appears in the 4 label maps of split 'val'; {HINT}"]
    assert "n/a (absent)" in capsys.readouterr().out  # still scored; the warning says why


def test_labels_mostly_ignored_warn(tiny_checkpoint: Path, tiny_voc: Path, tmp_path: Path,
                                    caplog: pytest.LogCaptureFixture) -> None:
    def mostly_ignored(a: np.ndarray) -> np.ndarray:
        out = np.full_like(a, 255)
        out[:3, :] = a[:3, :]  # 3 rows of 48..64 labelled: ~95 % ignored
        return out

    data = _relabelled(tiny_voc, tmp_path / "mostly", mostly_ignored)
    with caplog.at_level(logging.WARNING):
        assert main(["evaluate", "--model", str(tiny_checkpoint), "--data", str(data), "--threads", "1",
                     "--no-progress"]) == 0
    ignored = [r.getMessage() for r in caplog.records if "the ignore label" in r.getMessage()
               and "label pixels" in r.getMessage()]
    assert len(ignored) == 1 and ignored[0].endswith(HINT), ignored
    assert float(ignored[0].split(" %")[0]) > 90


def test_all_ignored_labels_are_refused(tiny_checkpoint: Path, tiny_voc: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    data = _relabelled(tiny_voc, tmp_path / "all255", lambda a: np.full_like(a, 255))
    run = tmp_path / "run"
    assert main([*TRAIN, "--classes", "synthetic", "--data", str(data), "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("segment-export train: error: the 12 label maps of split 'train' hold no labelled pixel")
    assert "\n" not in err and HINT in err
    assert not (run / "checkpoint.pt").exists()
    assert main(["evaluate", "--model", str(tiny_checkpoint), "--data", str(data), "--threads", "1",
                 "--no-progress"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("segment-export evaluate: error: the 4 label maps of split 'val' hold no labelled pixel")
    assert "\n" not in err and "mIoU" not in captured.out
