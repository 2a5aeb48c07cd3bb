"""A tiny *trained* model and a folder of real photos for the precision-variant tests.

Agreement between int8 and fp32 means little on random weights, which predict one class everywhere; a few
seconds of training on synthetic scenes gives label maps with several classes and real decision boundaries.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from testkit.photos import PHOTOS, photo_path

SIZE = 64
TRAIN_SEED = 4321  # scenes for the test model; the calibration seed of model_export.calibration differs
STEPS_V2 = 60  # ~1.5 s: enough for the DeepLab-v2 fixture to draw several classes on the photos


def _scenes(start: int, n: int):  # -> tuple[torch.Tensor, torch.Tensor]
    import cv2
    import torch

    from model_export.synthetic import render_scene

    xs, ys = [], []
    for i in range(start, start + n):
        img, lab = render_scene(TRAIN_SEED, i)
        xs.append(cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_AREA))
        ys.append(cv2.resize(lab, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST))
    return torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float(), torch.from_numpy(np.stack(ys)).long()


def _trained_export(arch: str, out: Path, steps: int, source: str, **kwargs: object) -> Path:
    """`arch` (the demo's 7 classes) trained `steps` Adam steps on synthetic scenes, exported at input size 64."""
    import torch
    import torch.nn.functional as F

    from model_export import synthetic
    from model_export.architectures import build_model
    from model_export.export import build_metadata, export_onnx
    from model_export.wrapper import normalize_nchw

    torch.manual_seed(0)
    model = build_model(arch, num_classes=len(synthetic.CLASSES), **kwargs)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = [_scenes(8 * b, 8) for b in range(12)]
    for it in range(steps):
        x, y = batches[it % len(batches)]
        logits = F.interpolate(model(normalize_nchw(x, model.preprocessing)), size=(SIZE, SIZE),
                               mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, y, ignore_index=synthetic.IGNORE_INDEX)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    meta = build_metadata(model, num_classes=len(synthetic.CLASSES), classes=synthetic.CLASSES,
                          palette=synthetic.PALETTE, input_size=SIZE, source=source)
    return export_onnx(model, out, meta)


@pytest.fixture(scope="session")
def trained_tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A thin DeepLab-v3 trained ~10 s on synthetic scenes (the demo's 7 classes), exported at input size 64."""
    return _trained_export("deeplabv3_thin", tmp_path_factory.mktemp("trained") / "tiny.onnx", 120,
                           "tests: 120 Adam steps on synthetic", base_width=8, head_channels=16)


@pytest.fixture(scope="session")
def trained_tiny_deeplabv2_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A thin DeepLab-v2 (ASPP sum of four dilated convs) trained a few seconds the same way, at input size 64."""
    return _trained_export("deeplabv2_thin", tmp_path_factory.mktemp("trained") / "tiny_v2.onnx", STEPS_V2,
                           f"tests: {STEPS_V2} Adam steps on synthetic", base_width=4)


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A calibration folder: the five real sample photos (PNG and JPEG) plus a file that is not an image."""
    root = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        shutil.copy(photo_path(name), root / name)
    (root / "README.txt").write_text("not an image; calibration must skip it\n")
    return root
