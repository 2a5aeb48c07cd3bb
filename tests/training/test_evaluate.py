"""Metrics against torchmetrics, and evaluation of checkpoints and ONNX files through the service path."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from model_export.cli import main
from model_export.data import VOCSegmentation
from model_export.errors import ModelExportError
from model_export.evaluate import evaluate_model, evaluate_split
from model_export.metrics import ConfusionMatrix
from tests.training.conftest import checkpoint_as_onnx


def _torchmetrics(targets: list[np.ndarray], preds: list[np.ndarray], n: int, average: str | None) -> torch.Tensor:
    metric = MulticlassJaccardIndex(num_classes=n, ignore_index=255, average=average)
    for t, p in zip(targets, preds, strict=True):
        metric.update(torch.from_numpy(p.astype(np.int64)), torch.from_numpy(t.astype(np.int64)))
    return metric.compute()


def test_miou_equals_torchmetrics_including_absent_classes() -> None:
    rng = np.random.default_rng(0)
    n = 8
    targets, preds = [], []
    for _ in range(5):
        t = rng.choice([0, 1, 2, 3, 255], size=(20, 30), p=[0.4, 0.2, 0.2, 0.1, 0.1]).astype(np.uint8)
        p = np.where(rng.random((20, 30)) < 0.7, np.where(t == 255, 0, t), rng.integers(0, 6, (20, 30)))
        targets.append(t)
        preds.append(p.astype(np.uint8))
    # Classes 4 and 5 occur only as (wrong) predictions; 6 and 7 occur nowhere: undefined, left out.
    cm = ConfusionMatrix(n)
    for t, p in zip(targets, preds, strict=True):
        cm.update(t, p)
    ours = cm.compute()
    assert np.isnan(ours.per_class_iou[6]) and np.isnan(ours.per_class_iou[7])
    assert ours.per_class_iou[4] == 0.0
    assert abs(ours.miou - float(_torchmetrics(targets, preds, n, "macro"))) < 1e-6
    per_class = _torchmetrics(targets, preds, n, "none").numpy()
    defined = ~np.isnan(ours.per_class_iou)
    assert np.allclose(np.array(ours.per_class_iou)[defined], per_class[defined], atol=1e-6)
    valid = np.concatenate([t.ravel() for t in targets]) != 255
    correct = np.concatenate([(t == p).ravel() for t, p in zip(targets, preds, strict=True)])
    assert ours.pixel_accuracy == pytest.approx(correct[valid].mean(), abs=1e-12)


def test_perfect_and_ignored_predictions() -> None:
    cm = ConfusionMatrix(3)
    t = np.array([[0, 1, 255], [2, 2, 255]], np.uint8)
    cm.update(t, np.array([[0, 1, 2], [2, 2, 0]], np.uint8))  # errors only where ignored
    s = cm.compute()
    assert s.miou == 1.0 and s.pixel_accuracy == 1.0 and cm.matrix.sum() == 4


def test_ground_truth_ids_the_model_lacks_are_left_out_with_a_warning(tiny_voc: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A dataset with more classes than the model (the tiny set has 7) is scored on the classes the model has,
    as the VOC protocol does, and said so: it is most likely the wrong dataset."""
    dataset = VOCSegmentation(tiny_voc, "val")
    labels = [dataset.read_label(i) for i in range(len(dataset))]
    beyond = sum(int(((t >= 3) & (t != 255)).sum()) for t in labels)
    assert beyond > 0
    with caplog.at_level(logging.WARNING, logger="model_export.evaluate"):
        scores = evaluate_split(lambda paths: [np.zeros_like(t) for t in labels[:len(paths)]], dataset, 3,
                                batch_size=len(dataset), progress=False)
    assert f"{beyond} ground-truth pixels hold class ids the model does not have" in caplog.text, caplog.text
    kept = np.concatenate([t[t < 3].ravel() for t in labels])
    assert scores.pixel_accuracy == pytest.approx(float((kept == 0).mean()))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="model_export.evaluate"):
        evaluate_split(lambda paths: [np.zeros_like(t) for t in labels[:len(paths)]], dataset, 7,
                       batch_size=len(dataset), progress=False)
    assert "class ids the model does not have" not in caplog.text  # every id is a class of a 7-class model


@pytest.fixture(scope="module")
def tiny_onnx_from_checkpoint(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return checkpoint_as_onnx(tiny_checkpoint, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def test_onnx_evaluation_goes_through_the_service_and_matches_torchmetrics(
        tiny_voc: Path, tiny_checkpoint: Path, tiny_onnx_from_checkpoint: Path) -> None:
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    scores, classes = evaluate_model(tiny_onnx_from_checkpoint, tiny_voc, "val", progress=False,
                                     on_prediction=lambda i, t, p: pairs.__setitem__(i, (t, p)))
    assert len(pairs) == 4 and len(classes) == 7
    targets, preds = zip(*pairs.values(), strict=True)
    assert all(t.shape == p.shape for t, p in pairs.values())  # back at the original size
    assert abs(scores.miou - float(_torchmetrics(list(targets), list(preds), 7, "macro"))) < 1e-6
    # The checkpoint, letterboxed the same way in PyTorch, predicts (nearly) the same labels.
    ckpt_preds: dict[str, np.ndarray] = {}
    evaluate_model(tiny_checkpoint, tiny_voc, "val", progress=False,
                   on_prediction=lambda i, t, p: ckpt_preds.__setitem__(i, p))
    agree = np.mean(np.concatenate([(ckpt_preds[i] == p).ravel() for i, (_, p) in pairs.items()]))
    assert agree > 0.99


def test_multiscale_flip_is_for_checkpoints(tiny_voc: Path, tiny_checkpoint: Path,
                                            tiny_onnx_from_checkpoint: Path,
                                            capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    scores, _ = evaluate_model(tiny_checkpoint, tiny_voc, "val", scales=(0.75, 1.0, 1.25), flip=True,
                               progress=False)
    assert 0.0 <= scores.miou <= 1.0
    assert main(["evaluate", "--model", str(tiny_onnx_from_checkpoint), "--data", str(tiny_voc),
                 "--flip", "--no-progress"]) == 2
    assert "--flip needs a PyTorch checkpoint" in capsys.readouterr().err  # the flag, as typed
    with pytest.raises(ModelExportError, match=r"^input_size needs a PyTorch checkpoint") as err:
        evaluate_model(tiny_onnx_from_checkpoint, tiny_voc, "val", input_size=0, progress=False)
    assert err.value.option == "input_size"  # Python callers read the parameter's name
    assert main(["evaluate", "--model", str(tiny_checkpoint), "--data", str(tiny_voc), "--no-progress",
                 "--json", str(tmp_path / "s.json")]) == 0
    assert "mIoU" in capsys.readouterr().out and (tmp_path / "s.json").is_file()
    assert main(["evaluate", "--model", str(tmp_path / "none.onnx"), "--data", str(tiny_voc)]) == 2
    assert "model file not found" in capsys.readouterr().err


def test_the_command_line_defaults_are_the_functions_defaults() -> None:
    """`segment-export evaluate` writes its defaults in its parser (it must not import torch to show `--help`);
    they must stay those of `evaluate_model`, so the CLI and Python callers score the same way."""
    import argparse
    import inspect

    from model_export.evaluate_cli import register

    sub = argparse.ArgumentParser().add_subparsers()
    register(sub)
    parsed = vars(sub.choices["evaluate"].parse_args(["--model", "m", "--data", "d"]))
    defaults = {name: p.default for name, p in inspect.signature(evaluate_model).parameters.items()
                if p.default is not inspect.Parameter.empty}
    shared = sorted(set(parsed) & set(defaults) - {"scales", "crf"})  # spelled differently: checked below
    assert {"split", "labels_dir", "flip", "fusion", "protocol", "input_size", "batch_size", "limit", "threads",
            "device"} <= set(shared), shared
    assert {n: parsed[n] for n in shared} == {n: defaults[n] for n in shared}
    assert tuple(float(s) for s in parsed["scales"].split(",")) == tuple(defaults["scales"])  # "1" → (1.0,)
    assert parsed["crf"] is (defaults["crf"] is not None) and parsed["no_progress"] is not defaults["progress"]
