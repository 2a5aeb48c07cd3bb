"""`train --init` from a version-1 checkpoint of a Caffe-style model trains in the geometry its weights were
trained in (layer3 strided in its 3x3 at output stride 16), and the checkpoint it writes records that geometry, so
export and evaluate of it compute what the run trained. Weights of the current format, version-1 weights whose
network is the current one (output stride 8) and torchvision backbone files start in the corrected geometry."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from model_export.architectures import build_model
from model_export.checkpoint import FORMAT, load_checkpoint_model, read_training_checkpoint
from model_export.cli import main
from model_export.data import Augment, TrainStream, VOCSegmentation
from model_export.evaluate import evaluate_model
from model_export.init_weights import init_geometry, read_init_file
from model_export.loss import multiscale_logits, multiscale_loss
from model_export.models import SegmentationModel
from model_export.synthetic import CLASSES
from model_export.train import train
from model_export.wrapper import normalize_nchw, preprocessing_constants

from .conftest import tiny_config

THIN = {"base_width": 4, "output_stride": 16}
BATCH, CROP, SEED = 2, 40, 7
CAFFE_1X1, TORCHVISION_3X3 = (2, 1), (1, 2)  # layer3's first block: stride of (its 1x1, its 3x3) at stride 16


def make_checkpoint(tiny_voc: Path, out: Path, version: int, output_stride: int = 16, **model_kwargs: Any) -> Path:
    """A deeplabv2_thin run of two iterations, saved as the code of checkpoint format `version` saved it (the
    code before version 2 wrote the same fields under the version-1 format name)."""
    kwargs = {**THIN, "output_stride": output_stride, **model_kwargs}
    path = Path(train(tiny_config(tiny_voc, out, arch="deeplabv2_thin", model_kwargs=kwargs, max_iter=2))["checkpoint"])
    blob = torch.load(path, weights_only=False)
    blob["format"] = f"model_export.train/{version}"
    # Two steps leave the ASPP near its N(0, 0.01) start, whose logits hardly depend on the features: a head of
    # trained magnitude makes what the backbone computes (its geometry) show in the logits and the loss.
    generator = torch.Generator().manual_seed(3)
    for key, value in blob["state_dict"].items():
        if key.startswith("classifier.") and key.endswith(".weight"):
            value.copy_(torch.randn(value.shape, generator=generator))
    torch.save(blob, path)
    return path


@pytest.fixture(scope="module")
def v1_checkpoint(tiny_voc: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tiny_voc, tmp_path_factory.mktemp("v1"), version=1)


@pytest.fixture(scope="module")
def legacy_run(v1_checkpoint: Path, tiny_voc: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of `train --init <the version-1 checkpoint>` at output stride 16."""
    out = tmp_path_factory.mktemp("from_v1") / "run"
    train_cli(tiny_voc, out, v1_checkpoint, "--output-stride", "16")
    return out


def layer3_strides(model: SegmentationModel) -> tuple[int, int]:
    """Stride of (conv1 = the 1x1, conv2 = the 3x3) in layer3's first block."""
    first = model.backbone.layer3[0]
    return first.conv1.stride[0], first.conv2.stride[0]


def train_cli(tiny_voc: Path, out: Path, init: Path, *extra: str) -> Path:
    """The real `segment-export train --init` for two iterations; the checkpoint it wrote."""
    argv = ["train", "--data", str(tiny_voc), "--out", str(out), "--init", str(init), "--arch", "deeplabv2_thin",
            "--classes", "synthetic", "--base-width", "4", "--iters", "2", "--batch-size", str(BATCH),
            "--crop-size", str(CROP), "--seed", str(SEED), "--log-every", "1", "--no-progress", *extra]
    assert main(argv) == 0
    return out / "checkpoint.pt"


def first_loss(run: Path) -> float:
    """The loss the run logged for its first iteration (computed with the initial weights, before any step)."""
    with open(run / "metrics.csv", newline="") as fh:
        return float(next(csv.DictReader(fh))["loss"])


def batch_loss(model: SegmentationModel, data: Path) -> float:
    """The loss of `model` on the run's first batch (the trainer's stream for SEED), BN frozen as --init runs."""
    pad = preprocessing_constants(model.preprocessing)[0]
    stream = TrainStream(VOCSegmentation(data, "train"), Augment(crop_size=CROP, pad_rgb=pad), SEED)  # type: ignore[arg-type]
    images, labels = zip(*(stream[k] for k in range(BATCH)), strict=True)
    x = normalize_nchw(torch.stack(images).float(), model.preprocessing)
    with torch.no_grad():
        return float(multiscale_loss(multiscale_logits(model.eval(), x, [1.0]), torch.stack(labels)))


def in_geometry(path: Path, legacy: bool) -> SegmentationModel:
    """A checkpoint's weights in the legacy (version-1) or in the corrected Caffe-style geometry."""
    model = build_model("deeplabv2_thin", len(CLASSES), **THIN, legacy_caffe_stride=legacy)
    model.load_state_dict(read_training_checkpoint(path)["state_dict"])
    return model


def strided_3x3_convs(onnx_path: Path) -> list[str]:
    """The exported graph's 3x3 convolutions that stride (Caffe-style geometry strides only 1x1s)."""
    found = []
    for node in onnx.load(str(onnx_path)).graph.node:
        attrs = {a.name: list(a.ints) for a in node.attribute}
        if node.op_type == "Conv" and attrs.get("kernel_shape") == [3, 3] and attrs.get("strides") != [1, 1]:
            found.append(node.name)
    return found


def predictions(model: Path, data: Path) -> dict[str, np.ndarray]:
    """`evaluate`'s label map of every training image for a checkpoint or an ONNX file."""
    out: dict[str, np.ndarray] = {}
    evaluate_model(model, data, "train", protocol="letterbox", device="cpu", progress=False,
                   on_prediction=lambda name, _target, pred: out.__setitem__(name, pred))
    return out


def agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """The fraction of pixels two sets of label maps agree on."""
    return float(np.mean(np.concatenate([(a[k] == b[k]).ravel() for k in a])))


def test_a_run_from_version_1_weights_trains_in_their_geometry(v1_checkpoint: Path, legacy_run: Path,
                                                               tiny_voc: Path) -> None:
    assert layer3_strides(load_checkpoint_model(v1_checkpoint)[0]) == TORCHVISION_3X3
    # The first loss is computed before any step: it shows the network the run trained.
    legacy, corrected = (batch_loss(in_geometry(v1_checkpoint, flag), tiny_voc) for flag in (True, False))
    assert abs(corrected - legacy) > 1e-3
    assert first_loss(legacy_run) == pytest.approx(legacy, abs=2e-6)

    # Its checkpoint, in the current format, records that geometry, and trained on from the given weights.
    ckpt = read_training_checkpoint(legacy_run / "checkpoint.pt")
    assert ckpt["format"] == FORMAT and ckpt["iteration"] == 2
    assert ckpt["model_kwargs"] == {**THIN, "legacy_caffe_stride": True}
    assert ckpt["args"]["model_kwargs"] == ckpt["model_kwargs"]
    assert layer3_strides(load_checkpoint_model(legacy_run / "checkpoint.pt")[0]) == TORCHVISION_3X3
    before = read_training_checkpoint(v1_checkpoint)["state_dict"]
    changed = [k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and not torch.equal(before[k], v)]
    assert "backbone.layer3.0.conv2.weight" in changed


def test_export_and_evaluate_of_that_run_use_its_geometry(legacy_run: Path, tiny_voc: Path, tmp_path: Path) -> None:
    onnx_path = tmp_path / "model.onnx"
    assert main(["export", "--weights", str(legacy_run / "checkpoint.pt"), "-o", str(onnx_path)]) == 0
    # The graph strides one 3x3, layer3's: the version-1 geometry (the corrected one strides none).
    (strided,) = strided_3x3_convs(onnx_path)
    assert "layer3" in strided

    # evaluate of the checkpoint predicts what its export predicts, unlike the same weights in the corrected
    # geometry.
    corrected = tmp_path / "corrected.pt"
    blob: dict[str, Any] = torch.load(legacy_run / "checkpoint.pt", weights_only=False)
    blob["model_kwargs"] = {k: v for k, v in blob["model_kwargs"].items() if k != "legacy_caffe_stride"}
    torch.save(blob, corrected)
    exported = predictions(onnx_path, tiny_voc)
    assert agreement(predictions(legacy_run / "checkpoint.pt", tiny_voc), exported) > 0.999
    assert agreement(predictions(corrected, tiny_voc), exported) < 0.99


def test_a_run_from_that_run_keeps_the_geometry(legacy_run: Path, tiny_voc: Path, tmp_path: Path) -> None:
    """The current-format checkpoint of a run from version-1 weights records their geometry; it passes on."""
    new = train_cli(tiny_voc, tmp_path / "again", legacy_run / "checkpoint.pt", "--output-stride", "16")
    assert read_training_checkpoint(new)["model_kwargs"]["legacy_caffe_stride"] is True
    assert layer3_strides(load_checkpoint_model(new)[0]) == TORCHVISION_3X3


def test_current_weights_start_in_the_corrected_geometry(tiny_voc: Path, tmp_path: Path) -> None:
    init = make_checkpoint(tiny_voc, tmp_path / "v2", version=2)
    new = train_cli(tiny_voc, tmp_path / "run", init, "--output-stride", "16")
    ckpt = read_training_checkpoint(new)
    assert "legacy_caffe_stride" not in ckpt["model_kwargs"]
    assert layer3_strides(load_checkpoint_model(new)[0]) == CAFFE_1X1
    assert first_loss(tmp_path / "run") == pytest.approx(batch_loss(in_geometry(init, False), tiny_voc), abs=2e-6)


def test_version_1_weights_of_output_stride_8_start_in_the_corrected_geometry(tiny_voc: Path,
                                                                              tmp_path: Path) -> None:
    """At output stride 8 version 1 built the current network (layer3 does not downsample): the weights belong
    to no older geometry, and a run at 16 strides layer3 as Caffe's ResNet does."""
    init = make_checkpoint(tiny_voc, tmp_path / "v1_os8", version=1, output_stride=8)
    new = train_cli(tiny_voc, tmp_path / "run", init, "--output-stride", "16")
    assert read_training_checkpoint(new)["model_kwargs"] == THIN
    assert layer3_strides(load_checkpoint_model(new)[0]) == CAFFE_1X1


def test_weights_of_the_legacy_dilation_keep_it(tiny_voc: Path, tmp_path: Path) -> None:
    """The other older geometry a checkpoint records: single-block stages dilated one rate lower."""
    init = make_checkpoint(tiny_voc, tmp_path / "legacy_dilation", version=2, legacy_dilation=True)
    new = train_cli(tiny_voc, tmp_path / "run", init, "--output-stride", "16")
    assert read_training_checkpoint(new)["model_kwargs"] == {**THIN, "legacy_dilation": True}
    # layer4 (one block) at output stride 16: rate 1, as the weights were trained, not the current 2.
    assert load_checkpoint_model(new)[0].backbone.layer4[0].conv2.dilation == (1, 1)


def test_init_from_a_torchvision_backbone_file_with_the_cli(tiny_voc: Path, tmp_path: Path) -> None:
    donor = build_model("deeplabv2_thin", 7, **THIN).state_dict()
    # torchvision's ImageNet ResNet layout: plain `layer1...` names, and an `fc` head that is dropped.
    state = {k.removeprefix("backbone."): v for k, v in donor.items() if k.startswith("backbone.")}
    state["fc.weight"] = torch.zeros(1000, 128)
    torch.save(state, tmp_path / "resnet.pth")
    new = train_cli(tiny_voc, tmp_path / "run", tmp_path / "resnet.pth", "--output-stride", "16")
    ckpt = read_training_checkpoint(new)
    # Trained in torchvision's geometry, the backbone is trained on in it: stride on the 3x3, floor-mode pooling.
    assert ckpt["model_kwargs"] == {**THIN, "caffe_style": False}
    assert ckpt["source"] == f"init={tmp_path / 'resnet.pth'}"
    backbone = load_checkpoint_model(new)[0].backbone
    assert backbone.maxpool.ceil_mode is False
    for stage in (backbone.layer2, backbone.layer3):
        assert (stage[0].conv1.stride[0], stage[0].conv2.stride[0]) == TORCHVISION_3X3
    # BN is frozen on given weights: its statistics are the file's.
    key = "backbone.layer3.0.bn2.running_var"
    assert torch.equal(ckpt["state_dict"][key], donor[key])


def test_init_from_a_newer_format_is_refused(tiny_voc: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A tensors-only checkpoint (as convert-caffe writes) of a newer format may be in a geometry this version
    cannot build: refused in one line, as `--resume` and `export` refuse it."""
    model = build_model("deeplabv2_thin", len(CLASSES), **THIN)
    torch.save({"format": "model_export.train/99", "arch": "deeplabv2_thin", "num_classes": len(CLASSES),
                "model_kwargs": THIN, "state_dict": model.state_dict()}, tmp_path / "future.pt")
    argv = ["train", "--data", str(tiny_voc), "--out", str(tmp_path / "run"), "--init", str(tmp_path / "future.pt"),
            "--arch", "deeplabv2_thin", "--classes", "synthetic", "--base-width", "4", "--output-stride", "16",
            "--iters", "1", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "model_export.train/99 checkpoint, newer than" in err and "\n" not in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_weights_of_another_arch_in_an_older_geometry_are_named(v1_checkpoint: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """`--arch` chosen over the checkpoint's: the run builds its own arch's current geometry (the file's settings
    belong to its network), and a warning says the weights were trained in another one."""
    blob = read_init_file(v1_checkpoint)
    with caplog.at_level(logging.WARNING, logger="model_export.init_weights"):
        assert init_geometry(blob, v1_checkpoint, "deeplabv2_thin") == {"legacy_caffe_stride": True}
        assert not caplog.records  # its own arch keeps the geometry, as the tests above show: nothing to say
        assert init_geometry(blob, v1_checkpoint, "deeplabv3_thin") == {}
    (record,) = caplog.records
    assert "deeplabv2_thin" in record.message and "legacy_caffe_stride" in record.message, record.message
    assert "deeplabv3_thin run builds the current geometry" in record.message, record.message
