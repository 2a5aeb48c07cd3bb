"""The trainer: loss goes down, resume is bit-identical, LR schedule, parameter groups, multi-scale loss."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from model_export.architectures import build_model
from model_export.checkpoint import load_checkpoint_model, read_training_checkpoint
from model_export.cli import main
from model_export.data import Augment, TrainStream, VOCSegmentation
from model_export.init_weights import init_from_file
from model_export.loss import multiscale_loss, seg_cross_entropy
from model_export.schedule import freeze_bn, param_groups, poly_lr, set_lr
from model_export.synthetic import CLASSES
from model_export.train import train
from model_export.wrapper import normalize_nchw

from .conftest import TINY_MODEL, tiny_config


def _fixed_batch_loss(model: nn.Module, data: Path) -> float:
    """Loss of a model on a fixed batch of training crops (eval mode: BN statistics are the learnt ones)."""
    stream = TrainStream(VOCSegmentation(data, "train"), Augment(crop_size=40), seed=99)
    images, labels = zip(*(stream[k] for k in range(8)), strict=True)
    x = normalize_nchw(torch.stack(images), model.preprocessing)
    with torch.no_grad():
        return float(seg_cross_entropy(model.eval()(x), torch.stack(labels)))


def test_a_few_iterations_reduce_the_loss(tiny_voc: Path, tmp_path: Path) -> None:
    torch.manual_seed(5)  # same init as train() uses with seed=5
    before = _fixed_batch_loss(build_model("deeplabv3_thin", len(CLASSES), **TINY_MODEL), tiny_voc)
    summary = train(tiny_config(tiny_voc, tmp_path, max_iter=25, base_lr=0.02))
    model, info = load_checkpoint_model(summary["checkpoint"])
    after = _fixed_batch_loss(model, tiny_voc)
    assert after < 0.7 * before, (before, after)
    assert info["iteration"] == 25 and info["classes"] == list(CLASSES)
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0] == "iteration,loss,lr,seconds" and len(rows) == 26


def _params(path: Path) -> dict[str, torch.Tensor]:
    return read_training_checkpoint(path)["state_dict"]


def test_resume_continues_bit_identically(tiny_voc: Path, tmp_path: Path) -> None:
    opts = dict(max_iter=6, scales=[1.0, 0.75], accumulate=2)
    straight = train(tiny_config(tiny_voc, tmp_path / "a", **opts))
    first_half = train(tiny_config(tiny_voc, tmp_path / "b", stop_at=3, **opts))
    ckpt3 = read_training_checkpoint(first_half["checkpoint"])
    assert ckpt3["iteration"] == 3 and first_half["iterations"] == 3
    # A fresh call (fresh model init, fresh RNG) resumes from the file alone.
    torch.manual_seed(12345)
    resumed = train(tiny_config(tiny_voc, tmp_path / "c", resume=str(first_half["checkpoint"]), **opts))
    a, b = _params(straight["checkpoint"]), _params(resumed["checkpoint"])
    assert read_training_checkpoint(resumed["checkpoint"])["iteration"] == 6 and resumed["iterations"] == 3
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # The second half really moved the weights, so equality is not trivial.
    assert not all(torch.equal(a[k], ckpt3["state_dict"][k]) for k in a)
    opt_a = read_training_checkpoint(straight["checkpoint"])["optimizer"]["state"]
    opt_b = read_training_checkpoint(resumed["checkpoint"])["optimizer"]["state"]
    assert all(torch.equal(opt_a[k]["momentum_buffer"], opt_b[k]["momentum_buffer"]) for k in opt_a)


def test_poly_lr_schedule() -> None:
    assert poly_lr(2.5e-4, 0, 100) == 2.5e-4
    assert poly_lr(2.5e-4, 50, 100) == pytest.approx(2.5e-4 * 0.5**0.9, rel=1e-12)
    assert poly_lr(1.0, 99, 100) == pytest.approx(0.01**0.9, rel=1e-12)
    assert poly_lr(1.0, 100, 100) == 0.0
    values = [poly_lr(1.0, i, 20) for i in range(21)]
    assert all(a > b for a, b in itertools.pairwise(values))


def _group(opt: torch.optim.Optimizer, name: str) -> dict:
    return next(g for g in opt.param_groups if g["name"] == name)


def test_param_groups_and_their_learning_rates() -> None:
    model = build_model("deeplabv3_thin", 7, **TINY_MODEL)
    freeze_bn(model)
    opt = torch.optim.SGD(param_groups(model, weight_decay=5e-4), lr=1.0, momentum=0.9)
    head = {id(p) for m in model.head_modules() for p in m.parameters()}
    named = dict(model.named_parameters())
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(grouped) == len(set(grouped))  # no parameter twice
    # Frozen BN: exactly the BN affine parameters are left out.
    left_out = {n for n, p in named.items() if id(p) not in set(grouped)}
    bn_params = {f"{mn}.{pn}" for mn, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)
                 for pn, _ in m.named_parameters()}
    assert left_out == bn_params and left_out
    assert {g["name"] for g in opt.param_groups} == {"backbone_weight", "head_weight", "head_bias"}
    for p in _group(opt, "backbone_weight")["params"]:
        assert id(p) not in head and p.ndim > 1
    assert all(id(p) in head and p.ndim > 1 for p in _group(opt, "head_weight")["params"])
    assert all(id(p) in head and p.ndim == 1 for p in _group(opt, "head_bias")["params"])
    final_conv = model.classifier[-1]
    assert any(p is final_conv.bias for p in _group(opt, "head_bias")["params"])
    assert any(p is final_conv.weight for p in _group(opt, "head_weight")["params"])

    base = set_lr(opt, 2.5e-4, 30, 100)
    assert base == pytest.approx(2.5e-4 * 0.7**0.9)
    assert _group(opt, "backbone_weight")["lr"] == pytest.approx(base)
    assert _group(opt, "head_weight")["lr"] == pytest.approx(10 * base)
    assert _group(opt, "head_bias")["lr"] == pytest.approx(20 * base)
    assert _group(opt, "head_bias")["weight_decay"] == 0.0
    assert _group(opt, "head_weight")["weight_decay"] == 5e-4


def test_train_bn_adds_norm_groups() -> None:
    model = build_model("deeplabv3_thin", 7, **TINY_MODEL)
    names = {g["name"] for g in param_groups(model)}
    assert names == {"backbone_weight", "backbone_norm_bias", "head_weight", "head_norm", "head_bias"}
    total = sum(len(g["params"]) for g in param_groups(model))
    assert total == len(list(model.parameters()))


def test_frozen_bn_keeps_statistics_and_affine(tiny_voc: Path, tmp_path: Path) -> None:
    torch.manual_seed(5)
    init = build_model("deeplabv3_thin", len(CLASSES), **TINY_MODEL).state_dict()
    run = train(tiny_config(tiny_voc, tmp_path, max_iter=2, train_bn=False))
    after = _params(run["checkpoint"])
    bn_keys = [k for k in after if ".bn" in k or "running_" in k]
    assert bn_keys and all(torch.equal(after[k], init[k]) for k in bn_keys)
    conv = "backbone.conv1.weight"
    assert not torch.equal(after[conv], init[conv])


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=0, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=0, keepdims=True))


def _ce_by_hand(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean CE over non-255 pixels, labels nearest-downsampled to the logits at each cell's block centre
    (floor((i + 0.5) * in / out)), where the export's align_corners=False upsampling puts the cell."""
    _, h, w = logits.shape
    rows = ((np.arange(h) + 0.5) * labels.shape[0] / h).astype(int)
    cols = ((np.arange(w) + 0.5) * labels.shape[1] / w).astype(int)
    small = labels[np.ix_(rows, cols)]
    logp = _log_softmax(logits)
    terms = [-logp[small[y, x], y, x] for y in range(h) for x in range(w) if small[y, x] != 255]
    return float(np.mean(terms))


def test_multiscale_loss_matches_a_hand_computation() -> None:
    rng = np.random.default_rng(0)
    l100 = rng.normal(size=(4, 8, 8)).astype(np.float32)
    l075 = rng.normal(size=(4, 6, 6)).astype(np.float32)
    l050 = rng.normal(size=(4, 4, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=(16, 16))
    labels[:3, :5] = 255
    # Upsampling by hand with OpenCV (half-pixel centres, the same convention as align_corners=False).
    up = [cv2.resize(lg.transpose(1, 2, 0), (8, 8), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
          for lg in (l075, l050)]
    fused = np.maximum(l100, np.maximum(up[0], up[1]))
    expected = sum(_ce_by_hand(lg, labels) for lg in (l100, l075, l050, fused))
    got = multiscale_loss([torch.from_numpy(lg)[None] for lg in (l100, l075, l050)],
                          torch.from_numpy(labels)[None])
    assert float(got) == pytest.approx(expected, rel=1e-5)
    single = multiscale_loss([torch.from_numpy(l100)[None]], torch.from_numpy(labels)[None])
    assert float(single) == pytest.approx(_ce_by_hand(l100, labels), rel=1e-5)
    assert float(seg_cross_entropy(torch.zeros(1, 3, 2, 2), torch.full((1, 2, 2), 255))) == 0.0


def test_accumulation_matches_the_larger_batch(tiny_voc: Path, tmp_path: Path) -> None:
    """Frozen BN, no padding (scale >= 1, crop within the image), no dropout: two batches of 1 accumulated
    give the same step as one batch of 2."""
    opts = dict(max_iter=1, train_bn=False, min_scale=1.0, max_scale=1.0, crop_size=32)
    big = train(tiny_config(tiny_voc, tmp_path / "a", batch_size=2, **opts))
    acc = train(tiny_config(tiny_voc, tmp_path / "b", batch_size=1, accumulate=2, **opts))
    a, b = _params(big["checkpoint"]), _params(acc["checkpoint"])
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=1e-5) for k in a)
    torch.manual_seed(5)
    init = build_model("deeplabv3_thin", len(CLASSES), **TINY_MODEL).state_dict()
    assert not torch.equal(a["classifier.4.weight"], init["classifier.4.weight"])


def test_init_from_a_torchvision_style_backbone_file(tmp_path: Path) -> None:
    donor = build_model("deeplabv3_thin", 7, **TINY_MODEL)
    # torchvision ImageNet ResNet files have plain `conv1.weight`, `layer1...`, plus `fc.*`.
    state = {k.removeprefix("backbone."): v for k, v in donor.state_dict().items() if k.startswith("backbone.")}
    state["fc.weight"] = torch.zeros(1000, 8)
    torch.save(state, tmp_path / "resnet.pth")
    model = build_model("deeplabv3_thin", 7, **TINY_MODEL)
    assert len(init_from_file(model, tmp_path / "resnet.pth")) == len(state) - 1
    assert torch.equal(model.state_dict()["backbone.layer4.0.conv2.weight"],
                       donor.state_dict()["backbone.layer4.0.conv2.weight"])
    torch.save({"something": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="no tensor in"):
        init_from_file(model, tmp_path / "other.pth")


def test_train_cli_runs_and_reports_bad_input_in_one_line(tiny_voc: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    common = ["train", "--arch", "deeplabv3_thin", "--classes", "synthetic", "--base-width", "4",
              "--head-channels", "8", "--output-stride", "16", "--crop-size", "32", "--batch-size", "2",
              "--no-progress", "--train-bn"]
    assert main([*common, "--data", str(tiny_voc), "--out", str(tmp_path / "r"), "--iters", "2",
                 "--input-size", "48"]) == 0
    model, info = load_checkpoint_model(tmp_path / "r" / "checkpoint.pt")
    assert info["iteration"] == 2 and info["arch"] == "deeplabv3_thin" and not model.training
    assert info["input_size"] == 48 and info["classes"] == list(CLASSES)
    capsys.readouterr()
    assert main([*common, "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("segment-export train: error: no VOC layout") and "\n" not in err
    assert main([*common, "--data", str(tiny_voc), "--out", str(tmp_path / "s"),
                 "--resume", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main([*common, "--data", str(tiny_voc), "--out", str(tmp_path / "s"), "--scales", "0.5,1"]) == 2
    assert "--scales must start with 1" in capsys.readouterr().err


def test_train_options_default_to_the_config_fields() -> None:
    """The CLI writes no default of its own: bare options give TrainConfig's defaults, typed as its fields."""
    from dataclasses import replace

    from model_export.cli import build_parser
    from model_export.train_cli import config_from_args
    from model_export.train_config import TrainConfig

    parse = build_parser("train").parse_args
    assert config_from_args(parse(["train", "--data", "d", "--out", "o"])) == TrainConfig(data="d", out="o")
    given = config_from_args(parse(["train", "--data", "d", "--out", "o", "--workers", "3", "--lr", "0.1",
                                    "--iters", "7", "--stop-at", "5", "--no-mirror", "--train-bn", "stats",
                                    "--scales", "1,0.5", "--classes", "synthetic", "--input-size", "64"]))
    assert given == replace(TrainConfig(data="d", out="o"), workers=3, base_lr=0.1, max_iter=7, stop_at=5,
                            mirror=False, train_bn=True, bn_affine=False, scales=[1.0, 0.5],
                            classes=list(CLASSES), input_size=64)
    assert isinstance(given.workers, int) and isinstance(given.base_lr, float) and isinstance(given.stop_at, int)
