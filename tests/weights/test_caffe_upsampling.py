"""A converted DeepLab-v2 Caffe model upsamples its logits corner-aligned, as Caffe's Interp did: at the 8k+1 sizes
DeepLab uses, logit cell i stands for pixel 8i. Models our trainer makes (fine-tuned from a converted checkpoint
too) keep half-pixel centres: cell i stands for the centre of its block, pixel 8i + 3.5 at 8k sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from model_export.architectures import build_model
from model_export.caffe import convert_caffemodel
from model_export.checkpoint import load_checkpoint_model, read_training_checkpoint
from model_export.cli import main
from model_export.evaluate import predict_probs
from model_export.export import build_metadata, export_onnx, read_metadata
from model_export.models import SegmentationModel
from model_export.msc import bake_msc
from model_export.synthetic import CLASSES, write_dataset
from model_export.wrapper import normalize_nchw
from testkit.photos import photo
from tests.training.conftest import TINY_SCENES, tiny_config
from tests.weights.caffe_fixture import LAYERS, NUM_CLASSES, WIDTH, make_weights, write_caffemodel

SIZES = ((65, 65), (129, 129))  # 8k+1, as DeepLab's 513: corner alignment puts cell i exactly on pixel 8i


@pytest.fixture(scope="module")
def caffe_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a synthetic trained .caffemodel, its `convert-caffe -o` ONNX file)."""
    tmp = tmp_path_factory.mktemp("caffe_up")
    blobs, _ = make_weights(seed=7)
    path = write_caffemodel(tmp / "train2.caffemodel", blobs)
    assert main(["convert-caffe", str(path), "-o", str(tmp / "voc12.onnx")]) == 0
    return path, tmp / "voc12.onnx"


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _batch(size: tuple[int, int]) -> np.ndarray:
    return np.stack([photo("astronaut.png", size), photo("rocket.jpg", size)])


def _logit_resize_modes(path: Path) -> list[str]:
    """The coordinate mode of every Resize that upsamples logits to a target size (4th input), not by scales."""
    modes = []
    for node in onnx.load(str(path)).graph.node:
        if node.op_type == "Resize" and len(node.input) == 4 and node.input[3]:
            attrs = {a.name: a.s.decode() for a in node.attribute if a.name == "coordinate_transformation_mode"}
            modes.append(attrs.get("coordinate_transformation_mode", "half_pixel"))  # ONNX's default
    return modes


@torch.no_grad()
def _reference(model: SegmentationModel, images: np.ndarray, align_corners: bool) -> np.ndarray:
    """Labels with the logits upsampled by F.interpolate directly, independently of the export wrapper."""
    x = normalize_nchw(torch.from_numpy(images).permute(0, 3, 1, 2).float(), model.preprocessing)
    logits = F.interpolate(model(x), size=images.shape[1:3], mode="bilinear", align_corners=align_corners)
    return logits.argmax(1).numpy().astype(np.uint8)


def test_caffe_export_upsamples_corner_aligned(caffe_export) -> None:
    path, onnx_path = caffe_export
    model, _ = convert_caffemodel(path)
    assert model.upsample_align_corners
    assert _logit_resize_modes(onnx_path) == ["align_corners"]
    assert read_metadata(onnx_path).extra["upsampling"] == "align_corners"
    session = _session(onnx_path)
    agree = total = differ = 0
    for size in SIZES:
        images = _batch(size)
        (labels,) = session.run(["labels"], {"image": images})
        corner, centre = _reference(model, images, True), _reference(model, images, False)
        agree += int((labels == corner).sum())
        total += labels.size
        differ += int((corner != centre).sum())
    assert agree / total >= 0.999, f"agreement with the corner-aligned reference {agree / total:.5f}"
    # Meaningful: on these inputs the two upsamplings label hundreds of pixels differently.
    assert differ >= 0.01 * total, differ


def _single_cell_forward(cell: tuple[int, int]):  # type: ignore[no-untyped-def]
    """A forward whose 9x9 logits (a 65x65 or 72x72 input at stride 8) favour class 1 at one cell only."""
    logits = torch.zeros(1, NUM_CLASSES, 9, 9)
    logits[:, 1] = -1.0
    logits[0, 1, cell[0], cell[1]] = 2.0  # class 1 wins where that cell's bilinear weight exceeds 1/3: no ties

    def forward(self: SegmentationModel, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1, :1, :1] * 0 + logits  # keeps the batch dimension dynamic in the trace

    return forward


def _class1_centre(path: Path, side: int) -> tuple[float, float]:
    (labels,) = _session(path).run(["labels"], {"image": np.zeros((1, side, side, 3), np.uint8)})
    ys, xs = np.nonzero(labels[0] == 1)
    assert 0 < ys.size < 200 and ys.min() > 0 and xs.max() < side - 1  # a blob well inside the image
    return float(ys.mean()), float(xs.mean())  # the blob is symmetric about the cell's pixel


def test_cell_lands_on_pixel_8i_for_caffe_and_8i_plus_3_5_otherwise(caffe_export, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = caffe_export
    cell = (3, 5)
    monkeypatch.setattr(SegmentationModel, "forward", _single_cell_forward(cell))
    caffe = tmp_path / "caffe.onnx"
    assert main(["convert-caffe", str(path), "-o", str(caffe)]) == 0
    model = build_model("deeplabv2_thin", NUM_CLASSES, base_width=WIDTH, layers=LAYERS).eval()
    meta = build_metadata(model, num_classes=NUM_CLASSES, input_size=65, source="test")
    default = export_onnx(model, tmp_path / "default.onnx", meta)
    # Each at the size its mapping is exact for: 8k+1 (Caffe's corners) and 8k (our trainer's block centres, which
    # at other sizes follow the true input/logit ratio, as the trainer's nearest-exact labels do).
    np.testing.assert_allclose(_class1_centre(caffe, 65), (8 * cell[0], 8 * cell[1]), atol=1e-6)
    np.testing.assert_allclose(_class1_centre(default, 72), (8 * cell[0] + 3.5, 8 * cell[1] + 3.5), atol=1e-6)


def test_msc_graph_of_caffe_export_keeps_corner_alignment(caffe_export, tmp_path: Path) -> None:
    path, onnx_path = caffe_export
    scales = (0.5, 1.0)
    msc = bake_msc(onnx_path, tmp_path / "voc12.msc.onnx", scales)
    assert _logit_resize_modes(msc) == ["align_corners"] * len(scales)
    model, _ = convert_caffemodel(path)
    session = _session(msc)
    agree = total = differ = 0
    for size in SIZES:
        images = _batch(size)
        (labels,) = session.run(["labels"], {"image": images})
        for image, got in zip(images, labels, strict=True):
            # evaluate.py's PyTorch MSC follows the model's mapping too; the half-pixel one is another answer.
            expected = predict_probs(model, image, scales, fusion="max").argmax(0).numpy()
            model.upsample_align_corners = False
            centre = predict_probs(model, image, scales, fusion="max").argmax(0).numpy()
            model.upsample_align_corners = True
            agree += int((got == expected).sum())
            differ += int((expected != centre).sum())
            total += got.size
    assert agree / total >= 0.999, f"agreement {agree / total:.5f}"
    assert differ >= 0.01 * total, differ


@pytest.fixture(scope="module")
def tiny_voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_voc")
    write_dataset(root, train=4, val=1, seed=3, config=TINY_SCENES)
    return root


def test_model_fine_tuned_from_caffe_checkpoint_exports_half_pixel(caffe_export, tiny_voc: Path,
                                                                   tmp_path: Path) -> None:
    from model_export.train import train

    path, _ = caffe_export
    ckpt = tmp_path / "train2.pt"
    assert main(["convert-caffe", str(path), "--checkpoint", str(ckpt)]) == 0
    # The converted trained model itself is Caffe's, whichever file carries it.
    assert read_training_checkpoint(ckpt)["upsample_align_corners"] is True
    assert load_checkpoint_model(ckpt)[0].upsample_align_corners
    run = train(tiny_config(tiny_voc, tmp_path / "run", arch="deeplabv2_thin",
                            model_kwargs={"base_width": WIDTH, "layers": list(LAYERS)}, init=str(ckpt),
                            max_iter=1, batch_size=1, train_bn=False, crop_size=41, base_lr=2.5e-4))
    tuned, _ = load_checkpoint_model(run["checkpoint"])
    assert tuned.upsample_align_corners is False
    out = tmp_path / "tuned.onnx"
    assert main(["export", "--weights", str(run["checkpoint"]), "-o", str(out)]) == 0
    assert _logit_resize_modes(out) == ["half_pixel"]
    assert read_metadata(out).extra["upsampling"] == "half_pixel"


def test_initialisation_file_is_not_corner_aligned(tmp_path: Path) -> None:
    blobs, _ = make_weights(seed=4)
    blobs = {k: v for k, v in blobs.items() if not k.startswith("fc1_voc12")}
    blobs["fc1000"] = [np.zeros((10, WIDTH * 32, 1, 1), np.float32), np.zeros(10, np.float32)]
    path = write_caffemodel(tmp_path / "init.caffemodel", blobs, msc=False)
    ckpt = tmp_path / "init.pt"
    assert main(["convert-caffe", str(path), "--checkpoint", str(ckpt), "--num-classes", str(len(CLASSES))]) == 0
    # Its ASPP is new: whatever trains it learns our trainer's half-pixel centres.
    assert read_training_checkpoint(ckpt)["upsample_align_corners"] is False
    assert load_checkpoint_model(ckpt)[0].upsample_align_corners is False
