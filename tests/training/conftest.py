"""Tiny synthetic datasets and a tiny trained checkpoint shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_export.synthetic import CLASSES, SceneConfig, write_dataset

TINY_SCENES = SceneConfig(min_side=48, max_side=64, max_objects=2)
TINY_MODEL = {"base_width": 4, "head_channels": 8, "output_stride": 16}


@pytest.fixture(scope="session")
def tiny_voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 train + 4 val synthetic scenes of 48..64 px, in the VOC layout."""
    root = tmp_path_factory.mktemp("tiny_voc")
    write_dataset(root, train=12, val=4, seed=3, config=TINY_SCENES)
    return root


def tiny_config(data: Path, out: Path, **overrides: object):
    """A TrainConfig for a very small deeplabv3_thin on the tiny synthetic set."""
    from model_export.train_config import TrainConfig

    settings: dict[str, object] = dict(
        data=str(data), out=str(out), arch="deeplabv3_thin", classes=list(CLASSES),
        model_kwargs=dict(TINY_MODEL), max_iter=6, batch_size=2, crop_size=40, base_lr=0.01,
        train_bn=True, seed=5, save_every=1000, log_every=1, progress=False,
    )
    settings.update(overrides)
    return TrainConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_voc: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint after a few iterations on the tiny set."""
    from model_export.train import train

    out = tmp_path_factory.mktemp("tiny_run")
    return Path(train(tiny_config(tiny_voc, out, max_iter=4))["checkpoint"])


def checkpoint_as_onnx(checkpoint: Path, out: Path) -> Path:
    """`checkpoint`'s model exported to `out` with its own classes, palette and input size."""
    from model_export.checkpoint import load_checkpoint_model
    from model_export.export import build_metadata, export_onnx

    model, info = load_checkpoint_model(checkpoint)
    meta = build_metadata(model, num_classes=info["num_classes"], classes=info["classes"],
                          palette=info["palette"], input_size=info["input_size"], source="tests")
    return export_onnx(model, out, meta)
