"""Labels with a class id the model does not have (training 2 classes on 7-class data) stop `train` with one line
naming the label file and the class count, exit status 2, instead of cross entropy's IndexError traceback (a
device-side assert on CUDA). The ignore label (255) is no class id."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from model_export.cli import main
from model_export.data import Augment, DatasetError, TrainStream, VOCSegmentation, check_label_ids
from testkit.cli import one_line_error


def train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--arch", "deeplabv3_thin", "--base-width", "4",
            "--head-channels", "8", "--iters", "2", "--batch-size", "2", "--crop-size", "40", "--no-progress", *extra]


@pytest.mark.parametrize("workers", ["0", "1"])
def test_two_classes_on_seven_class_labels_is_one_line(tiny_voc: Path, tmp_path: Path, workers: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code = main(train_argv(tiny_voc, tmp_path / "run", "--classes", "bg,fg", "--workers", workers))
    err = one_line_error(code, capsys, "label file", "SegmentationClass", ".png", "2 classes", "255 ignored")
    # The id it names is one the named file holds.
    named = re.search(r"label file (\S+) holds class id (\d+)", err)
    assert named, err
    dataset = VOCSegmentation(tiny_voc, "train")
    ids = np.unique(dataset.read_label(dataset.ids.index(Path(named[1]).stem)))
    assert int(named[2]) in ids and int(named[2]) >= 2
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_the_dataset_classes_train(tiny_voc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(train_argv(tiny_voc, tmp_path / "run", "--classes", "synthetic")) == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_every_sample_of_a_run_is_checked(tiny_voc: Path) -> None:
    dataset = VOCSegmentation(tiny_voc, "train")
    largest = max(int(dataset.read_label(i)[dataset.read_label(i) != 255].max()) for i in range(len(dataset)))
    fits = TrainStream(dataset, Augment(crop_size=32), seed=1, num_classes=largest + 1)
    for k in range(len(dataset)):  # one epoch: every label map, none refused
        fits[k]
    short = TrainStream(dataset, Augment(crop_size=32), seed=1, num_classes=largest)
    with pytest.raises(DatasetError, match=f"holds class id {largest}, but the model has {largest} classes"):
        for k in range(len(dataset)):
            short[k]


def test_the_ignore_label_is_not_a_class() -> None:
    label = np.full((4, 5), 255, np.uint8)
    check_label_ids(label, 2, Path("all_ignored.png"))  # nothing but ignore: fine
    label[1, 2] = 1
    check_label_ids(label, 2, Path("ok.png"))
    label[3, 4] = 2
    with pytest.raises(DatasetError, match=r"bad\.png holds class id 2, but the model has 2 classes"):
        check_label_ids(label, 2, Path("bad.png"))
