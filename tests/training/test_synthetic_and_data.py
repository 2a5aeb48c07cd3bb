"""Synthetic scenes, the VOC loader and the training augmentation."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_export.cli import main
from model_export.data import IGNORE_INDEX, Augment, DatasetError, TrainStream, VOCSegmentation
from model_export.synthetic import CLASSES, SceneConfig, render_scene, save_label_png

from .conftest import TINY_SCENES


def test_scenes_are_deterministic_and_labelled_with_known_classes() -> None:
    a_img, a_lab = render_scene(11, 5, TINY_SCENES)
    b_img, b_lab = render_scene(11, 5, TINY_SCENES)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    c_img, _ = render_scene(11, 6, TINY_SCENES)
    assert not np.array_equal(a_img[:48, :48], c_img[:48, :48])
    seen = set()
    for i in range(40):
        img, lab = render_scene(0, i)
        assert img.shape[:2] == lab.shape and img.dtype == np.uint8
        assert set(np.unique(lab)) <= set(range(len(CLASSES)))
        seen |= set(np.unique(lab).tolist())
    assert seen == set(range(len(CLASSES)))  # every class shows up in a few dozen scenes


def test_each_class_has_its_own_colour_family() -> None:
    """Objects are distinguishable: per-class mean hue differs between classes (shape is not all there is)."""
    import cv2

    hues: dict[int, list[float]] = {}
    for i in range(60):
        img, lab = render_scene(1, i)
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        for c in range(1, len(CLASSES)):
            if (lab == c).sum() > 200:
                hues.setdefault(c, []).extend(hsv[..., 0][lab == c].astype(float).tolist())
    assert len(hues) == len(CLASSES) - 1
    # OpenCV hue is an angle in 0..180 (red wraps around), so take the circular mean.
    angle = {c: np.deg2rad(np.array(v) * 2) for c, v in hues.items()}
    centre = {c: float(np.rad2deg(np.arctan2(np.sin(a).mean(), np.cos(a).mean())) / 2 % 180)
              for c, a in angle.items()}
    for a in centre:
        for b in centre:
            if a < b:
                gap = abs(centre[a] - centre[b])
                assert min(gap, 180 - gap) > 12, (CLASSES[a], CLASSES[b], centre)


def test_ignore_border_marks_object_edges_only() -> None:
    _, exact = render_scene(2, 0, SceneConfig(ignore_border=0))
    _, banded = render_scene(2, 0, SceneConfig(ignore_border=2))
    band = banded == IGNORE_INDEX
    assert band.any() and not (exact == IGNORE_INDEX).any()
    assert np.array_equal(banded[~band], exact[~band])


def test_synth_cli_writes_voc_layout_the_loader_reads(tmp_path: Path) -> None:
    assert main(["synth", "--out", str(tmp_path), "--train", "3", "--val", "2", "--seed", "4",
                 "--min-side", "40", "--max-side", "50"]) == 0
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    assert (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().count("\n") == 3
    ds = VOCSegmentation(tmp_path, "val")
    assert len(ds) == 2
    image, label, name = ds[0]
    assert image.shape[0] == 3 and image.dtype.is_floating_point and float(image.max()) <= 255
    with Image.open(ds.label_path(0)) as im:
        assert im.mode == "P"  # palette PNG, like VOC
    # The loader reads palette *indices*: the ids the generator drew, not colours.
    _, expected = render_scene(4, 3, SceneConfig(min_side=40, max_side=50))
    assert name.endswith("000003") and np.array_equal(label.numpy(), expected)


@pytest.fixture()
def voc_copy(tiny_voc: Path, tmp_path: Path) -> VOCSegmentation:
    shutil.copytree(tiny_voc, tmp_path / "d")
    return VOCSegmentation(tmp_path / "d", "train")


def test_missing_image_names_the_file(voc_copy: VOCSegmentation) -> None:
    path = voc_copy.image_path(1)
    path.unlink()
    with pytest.raises(DatasetError, match=re.escape(str(path))):
        voc_copy[1]


def test_corrupt_image_names_the_file(voc_copy: VOCSegmentation) -> None:
    path = voc_copy.image_path(0)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DatasetError, match=re.escape(f"cannot decode image file {path}")):
        voc_copy[0]


def test_missing_and_corrupt_labels_name_the_file(voc_copy: VOCSegmentation) -> None:
    missing = voc_copy.label_path(2)
    missing.unlink()
    with pytest.raises(DatasetError, match=re.escape(f"label file not found: {missing}")):
        voc_copy[2]
    corrupt = voc_copy.label_path(3)
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DatasetError, match=re.escape(str(corrupt))):
        voc_copy[3]
    rgb = voc_copy.label_path(4)
    Image.new("RGB", (8, 8)).save(rgb)
    with pytest.raises(DatasetError, match=re.escape(f"label file {rgb} is mode RGB")):
        voc_copy[4]


def test_size_mismatch_and_missing_split_are_clear(voc_copy: VOCSegmentation, tmp_path: Path) -> None:
    save_label_png(np.zeros((5, 5), np.uint8), voc_copy.label_path(5))
    with pytest.raises(DatasetError, match="size mismatch"):
        voc_copy[5]
    with pytest.raises(DatasetError, match=r"split list not found: .*nosuch\.txt"):
        VOCSegmentation(voc_copy.voc_dir, "nosuch")
    with pytest.raises(DatasetError, match="no VOC layout"):
        VOCSegmentation(tmp_path / "empty")


def test_augment_keeps_image_and_label_aligned_and_pads_with_mean_and_ignore() -> None:
    # Image colour encodes the label, so any misalignment of mirror/crop would show.
    rng = np.random.default_rng(0)
    label = rng.integers(0, 7, size=(30, 50)).astype(np.uint8)
    image = np.stack([label * 30, label * 20, 255 - label * 10], axis=-1).astype(np.uint8)
    aug = Augment(crop_size=64, min_scale=1.0, max_scale=1.0, pad_rgb=(10.0, 20.0, 30.0))
    flipped = 0
    for seed in range(8):
        img, lab = aug(image, label, np.random.default_rng(seed))
        assert img.shape == (64, 64, 3) and lab.shape == (64, 64)
        real = lab != IGNORE_INDEX
        assert real.sum() == 30 * 50
        assert np.array_equal(img[real][:, 0], lab[real].astype(np.float32) * 30)
        assert np.all(img[~real] == [10.0, 20.0, 30.0])
        flipped += int(not np.array_equal(lab[:30, :50], label))
    assert 0 < flipped < 8  # mirroring happens, but not always


def test_augment_scales_within_range_and_crops() -> None:
    label = np.ones((100, 100), np.uint8)
    image = np.full((100, 100, 3), 200, np.uint8)
    aug = Augment(crop_size=60, min_scale=0.5, max_scale=1.5)
    real = [int((aug(image, label, np.random.default_rng(s))[1] == 1).sum()) for s in range(30)]
    assert min(real) >= 50 * 50 - 200 and max(real) == 60 * 60
    assert any(r < 60 * 60 for r in real)  # some draws scale below the crop, which is then padded


def test_train_stream_is_a_pure_function_of_the_sample_counter(tiny_voc: Path) -> None:
    ds = VOCSegmentation(tiny_voc, "train")
    stream = TrainStream(ds, Augment(crop_size=32), seed=9)
    first = [stream[k] for k in (0, 13, 5)]
    fresh = TrainStream(ds, Augment(crop_size=32), seed=9)
    for k, (img, lab) in zip((0, 13, 5), first, strict=True):
        img2, lab2 = fresh[k]
        assert np.array_equal(img.numpy(), img2.numpy()) and np.array_equal(lab.numpy(), lab2.numpy())
    # each epoch visits every image once
    assert sorted(stream.index_of(k) for k in range(12, 24)) == list(range(12))
