"""Dataset JPEGs with an EXIF orientation are read as stored, as their labels are drawn, by evaluation (checkpoint
and ONNX) as by training; a run that meets them says so once."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model_export.evaluate import evaluate_model
from model_export.synthetic import SceneConfig, write_dataset
from model_export.train import train

from .conftest import checkpoint_as_onnx, tiny_config

JPEGS = Path("VOCdevkit/VOC2012/JPEGImages")


def _copies(root: Path, side: tuple[int, int]) -> tuple[Path, Path]:
    """Synthetic scenes re-saved twice by Pillow with the same quality: untagged, and with EXIF orientation 6."""
    write_dataset(root / "src", train=3, val=3, seed=7, config=SceneConfig(min_side=side[0], max_side=side[1],
                                                                           max_objects=2))
    plain, tagged = root / "plain", root / "tagged"
    for copy, orientation in ((plain, None), (tagged, 6)):
        shutil.copytree(root / "src", copy)
        for path in sorted((copy / JPEGS).glob("*.jpg")):
            with Image.open(path) as im:
                pixels = im.copy()
            exif = Image.Exif()
            if orientation is not None:
                exif[0x0112] = orientation
            pixels.save(path, quality=95, exif=exif)
    with Image.open(next((tagged / JPEGS).glob("*.jpg"))) as im:
        assert im.getexif()[0x0112] == 6  # really tagged
    return plain, tagged


def _scored(model: Path, data: Path) -> tuple[float, dict[str, np.ndarray]]:
    preds: dict[str, np.ndarray] = {}
    scores, _ = evaluate_model(model, data, "val", progress=False, protocol="letterbox",
                               on_prediction=lambda i, _t, p: preds.__setitem__(i, p))
    return scores.miou, preds


@pytest.fixture(scope="module")
def varied_checkpoint(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with random (He-scaled) convolutions: a few iterations predict background everywhere,
    and a turned input would then predict the same."""
    blob = torch.load(tiny_checkpoint, weights_only=False)
    generator = torch.Generator().manual_seed(0)
    for name, value in blob["state_dict"].items():
        if name.endswith("weight") and value.dim() == 4:
            blob["state_dict"][name] = torch.randn(value.shape, generator=generator) * (2 / value[0].numel()) ** 0.5
    path = tmp_path_factory.mktemp("exif_ckpt") / "varied.pt"
    torch.save(blob, path)
    return path


@pytest.fixture(scope="module")
def tiny_onnx(varied_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return checkpoint_as_onnx(varied_checkpoint, tmp_path_factory.mktemp("exif_onnx") / "tiny.onnx")


@pytest.mark.parametrize("side", [(56, 56), (44, 60)], ids=["square", "non-square"])
@pytest.mark.parametrize("kind", ["checkpoint", "onnx"])
def test_evaluation_reads_tagged_images_as_stored(kind: str, side: tuple[int, int], varied_checkpoint: Path,
                                                  tiny_onnx: Path, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    plain, tagged = _copies(tmp_path, side)
    model = varied_checkpoint if kind == "checkpoint" else tiny_onnx
    miou_plain, preds_plain = _scored(model, plain)
    assert all(len(np.unique(p)) > 1 for p in preds_plain.values())  # a turned input would predict otherwise
    assert "EXIF orientation" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        miou_tagged, preds_tagged = _scored(model, tagged)
    assert miou_tagged == miou_plain
    assert preds_tagged.keys() == preds_plain.keys()
    for key, pred in preds_plain.items():
        np.testing.assert_array_equal(preds_tagged[key], pred)
    warnings = [r.getMessage() for r in caplog.records if "EXIF orientation" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per run, not once per image
    assert warnings[0].startswith("3 of 3 dataset images carry an EXIF orientation (e.g. ")
    assert ".jpg: 6)" in warnings[0] and "read as stored" in warnings[0]


def test_training_warns_once_about_tagged_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, tagged = _copies(tmp_path, (44, 60))
    with caplog.at_level(logging.WARNING):
        train(tiny_config(tagged, tmp_path / "run", max_iter=1))
    warnings = [r.getMessage() for r in caplog.records if "EXIF orientation" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("3 of 3 dataset images carry an EXIF orientation")
