"""`segment-export train`: DeepLab training as in the seed (train.py / train_msc.py).

SGD (momentum 0.9, weight decay 5e-4 on weights) with poly LR `base·(1 − it/max)^0.9`; the head trains at
10× LR on weights and 20× on biases; BN stays frozen unless `--train-bn` (alias `--is-training`; `stats` for
statistics only); labels are nearest-downsampled to the logits; cross entropy ignores 255. `--scales 1,0.75,0.5`
adds the seed's multi-scale loss: the sum of per-scale CE terms plus the CE of the element-wise max over scales.
`--accumulate N` averages gradients over N batches (the seed's batch-1 + iter_size).
Checkpoints (see model_export.checkpoint) resume bit-identically.
"""

from __future__ import annotations

import argparse
import csv
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from service.core.contract import VOC_CLASSES, voc_colormap

from .checkpoint import (
    CheckpointError,
    checkpoint_model_kwargs,
    load_checkpoint_model,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .data import IGNORE_INDEX, Augment, DatasetError, TrainStream, VOCSegmentation
from .models import SegmentationModel, build_model
from .wrapper import normalize_nchw, preprocessing_constants

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "load_checkpoint_model", "multiscale_loss", "param_groups", "poly_lr", "train"]

MOMENTUM = 0.9
POLY_POWER = 0.9


# ---------------------------------------------------------------------------------------------- schedule
def poly_lr(base_lr: float, iteration: int, max_iter: int, power: float = POLY_POWER) -> float:
    """The seed's poly schedule: base · (1 − it/max)^power."""
    return base_lr * (1.0 - iteration / max_iter) ** power


def param_groups(model: SegmentationModel, weight_decay: float = 5e-4) -> list[dict[str, Any]]:
    """SGD parameter groups, each tagged with `name` and `lr_mult`.

    backbone: conv weights 1× (decayed); norm affine params 1× (not decayed; only trainable with --train-bn).
    head (`model.head_modules()`): weights 10× (decayed), biases 20× (not decayed), norm weights 10×.
    As in the seed, biases and BN parameters carry no weight decay.
    """
    head_ids = {id(p) for m in model.head_modules() for p in m.parameters()}
    groups: dict[str, dict[str, Any]] = {
        "backbone_weight": {"lr_mult": 1.0, "weight_decay": weight_decay},
        "backbone_norm_bias": {"lr_mult": 1.0, "weight_decay": 0.0},
        "head_weight": {"lr_mult": 10.0, "weight_decay": weight_decay},
        "head_norm": {"lr_mult": 10.0, "weight_decay": 0.0},
        "head_bias": {"lr_mult": 20.0, "weight_decay": 0.0},
    }
    members: dict[str, list[nn.Parameter]] = {k: [] for k in groups}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        in_head = id(p) in head_ids
        if p.ndim > 1:
            key = "head_weight" if in_head else "backbone_weight"
        elif name.endswith("bias"):
            key = "head_bias" if in_head else "backbone_norm_bias"
        else:  # 1-D weights are normalisation scales
            key = "head_norm" if in_head else "backbone_norm_bias"
        members[key].append(p)
    return [{"name": k, "params": members[k], **groups[k]} for k in groups if members[k]]


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, iteration: int, max_iter: int) -> float:
    """Apply the poly LR (times each group's multiplier); returns the base LR of this iteration."""
    lr = poly_lr(base_lr, iteration, max_iter)
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]
    return lr


def freeze_bn(model: nn.Module, statistics: bool = True) -> None:
    """BN affine parameters (gamma/beta) untrainable, like the seed; with `statistics`, BN also in eval mode
    (running statistics stay). `statistics=False` is the seed's `--is-training`: statistics update, while
    gamma and beta stay as loaded (DrSleep's trainer excludes them from the trainable variables)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if statistics:
                m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


# ------------------------------------------------------------------------------------------------ losses
def downsample_labels(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of int label maps [N,H,W] to `size` (the logits' H, W)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    out = F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")
    return out[:, 0].long()


def seg_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE over non-ignored pixels, labels nearest-downsampled to the logits; 0 if all are ignored."""
    target = downsample_labels(labels, logits.shape[-2:])
    valid = (target != IGNORE_INDEX).sum()
    loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss / valid.clamp(min=1)


def multiscale_logits(model: nn.Module, x: torch.Tensor, scales: Sequence[float]) -> list[torch.Tensor]:
    """Logits of the model on `x` bilinearly resized by each scale (the first scale should be 1)."""
    h, w = x.shape[-2:]
    outs = []
    for s in scales:
        xs = x if s == 1 else F.interpolate(x, size=(int(h * s), int(w * s)), mode="bilinear",
                                            align_corners=False)
        outs.append(model(xs))
    return outs


def multiscale_loss(logits: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Seed's train_msc loss: Σ_s CE(logits_s) + CE(max_s logits_s), the smaller-scale logits bilinearly
    upsampled to the first (scale 1) logits' size before the max. One scale: plain CE."""
    loss = sum(seg_cross_entropy(lg, labels) for lg in logits)
    if len(logits) > 1:
        size = logits[0].shape[-2:]
        fused = logits[0]
        for lg in logits[1:]:
            up = F.interpolate(lg, size=size, mode="bilinear", align_corners=False)
            fused = torch.maximum(fused, up)
        loss = loss + seg_cross_entropy(fused, labels)
    return loss  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------- init
def init_from_file(model: SegmentationModel, path: str | Path) -> int:
    """Initialise from a weights file: a torchvision ImageNet ResNet state dict (loaded into the backbone,
    `fc.*` dropped), a full segmentation state dict (`backbone.*`/`classifier.*`) or one of our checkpoints
    (`convert-caffe --checkpoint` writes one from DeepLab-v2's init.caffemodel); a checkpoint's
    preprocessing (Caffe's BGR mean for converted weights) comes along, since it belongs to the weights.
    Only tensors whose names and shapes match are copied; returns how many were."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"init weights not found: {path}")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict")
    if isinstance(blob, dict) and blob.get("preprocessing"):
        preprocessing_constants(blob["preprocessing"])  # a clear error for an unknown convention
        model.preprocessing = blob["preprocessing"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not any(k.startswith("backbone.") for k in state):
        state = {f"backbone.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise ValueError(f"no tensor in {path} matches the model ({len(state)} keys, e.g. {next(iter(state))})")
    model.load_state_dict(matched, strict=False)
    log.info("initialised %d/%d tensors from %s", len(matched), len(own), path)
    return len(matched)


def init_from_imagenet(model: SegmentationModel) -> int:
    """torchvision's ImageNet ResNet weights for the backbone (downloads; needs the network)."""
    import torchvision

    names = {"deeplabv3_resnet50": "ResNet50_Weights.IMAGENET1K_V1",
             "deeplabv3_resnet101": "ResNet101_Weights.IMAGENET1K_V1",
             "deeplabv2_resnet101": "ResNet101_Weights.IMAGENET1K_V1"}
    if model.arch not in names:
        raise ValueError(f"no ImageNet backbone weights for {model.arch}")
    state = torchvision.models.get_weight(names[model.arch]).get_state_dict(progress=True)
    state = {f"backbone.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    missing, _ = model.load_state_dict(state, strict=False)
    return len(state) - len([k for k in missing if k.startswith("backbone.")])


# ------------------------------------------------------------------------------------------------ config
@dataclass
class TrainConfig:
    """All training settings; the CLI maps one flag to each field."""

    data: str
    out: str
    split: str = "train"
    labels_dir: str = "SegmentationClass"
    arch: str = "deeplabv2_resnet101"
    classes: list[str] = field(default_factory=lambda: list(VOC_CLASSES))
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    init: str | None = None  # a weights file, "imagenet", or None (random init)
    max_iter: int = 20000
    batch_size: int = 10
    accumulate: int = 1
    base_lr: float = 2.5e-4
    weight_decay: float = 5e-4
    crop_size: int = 321
    input_size: int | None = None  # the long side to serve at (checkpoint/metadata); default: crop_size
    min_scale: float = 0.5
    max_scale: float = 1.5
    mirror: bool = True
    scales: list[float] = field(default_factory=lambda: [1.0])
    train_bn: bool = False
    bn_affine: bool = True  # with train_bn: also train gamma/beta (False: statistics only, as DrSleep)
    seed: int = 1234
    save_every: int = 1000
    log_every: int = 10
    workers: int = 0
    device: str = "auto"
    resume: str | None = None
    stop_at: int | None = None  # stop (and save) after this iteration without changing the schedule length
    progress: bool = True


def pick_device(name: str) -> torch.device:
    """`auto`: CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class ScalarLog:
    """Scalars to `<out>/metrics.csv`, and to TensorBoard under `<out>/tb` when tensorboard is installed."""

    def __init__(self, out: Path, append: bool) -> None:
        self.path = out / "metrics.csv"
        new = not (append and self.path.exists())
        self._fh = open(self.path, "w" if new else "a", newline="")  # noqa: SIM115 (closed in close())
        self._csv = csv.writer(self._fh)
        if new:
            self._csv.writerow(["iteration", "loss", "lr", "seconds"])
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb: Any = SummaryWriter(str(out / "tb"))
        except ImportError:  # tensorboard is optional
            self._tb = None

    def write(self, iteration: int, loss: float, lr: float, seconds: float) -> None:
        self._csv.writerow([iteration, f"{loss:.6f}", f"{lr:.6g}", f"{seconds:.2f}"])
        self._fh.flush()
        if self._tb is not None:
            self._tb.add_scalar("train/loss", loss, iteration)
            self._tb.add_scalar("train/lr", lr, iteration)

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()


def _build(cfg: TrainConfig) -> SegmentationModel:
    model = build_model(cfg.arch, len(cfg.classes), **cfg.model_kwargs)
    if cfg.init == "imagenet":
        init_from_imagenet(model)
    elif cfg.init:
        init_from_file(model, cfg.init)
    return model


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) training; returns a summary with the final checkpoint path and last loss."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    resume = read_checkpoint(cfg.resume) if cfg.resume else None
    if resume is not None:
        # The network is defined by the checkpoint, whatever the flags say.
        cfg.arch, cfg.classes = resume["arch"], list(resume["classes"])
        cfg.model_kwargs = checkpoint_model_kwargs(resume)
        cfg.init = None
    torch.manual_seed(cfg.seed)
    model = _build(cfg)
    if resume is not None:
        model.load_state_dict(resume["state_dict"])
        model.preprocessing = resume.get("preprocessing", model.preprocessing)
    model.to(device).train()
    if not cfg.train_bn:
        freeze_bn(model)
    elif not cfg.bn_affine:
        freeze_bn(model, statistics=False)
    optimizer = torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=cfg.base_lr, momentum=MOMENTUM)
    start = 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        start = int(resume["iteration"])
        set_rng_state(resume["rng"])
    if start >= cfg.max_iter:
        raise ValueError(f"checkpoint is at iteration {start}, max_iter is {cfg.max_iter}: nothing to do")

    dataset = VOCSegmentation(cfg.data, cfg.split, cfg.labels_dir)
    pad = preprocessing_constants(model.preprocessing)[0]
    augment = Augment(cfg.crop_size, cfg.min_scale, cfg.max_scale, cfg.mirror, tuple(pad))  # type: ignore[arg-type]
    per_iter = cfg.batch_size * cfg.accumulate
    # Sample k of the run is fixed by (seed, k); resuming just starts the counter further on.
    loader = DataLoader(TrainStream(dataset, augment, cfg.seed), batch_size=cfg.batch_size,
                        sampler=range(start * per_iter, cfg.max_iter * per_iter), num_workers=cfg.workers,
                        pin_memory=device.type == "cuda",
                        # Its own generator: creating the iterator must not draw from the global torch RNG,
                        # which dropout uses and which a resume restores.
                        generator=torch.Generator().manual_seed(cfg.seed))
    batches = iter(loader)
    scalars = ScalarLog(out, append=resume is not None)
    ckpt_path = out / "checkpoint.pt"
    meta = {"arch": cfg.arch, "num_classes": len(cfg.classes), "model_kwargs": cfg.model_kwargs,
            "preprocessing": model.preprocessing, "classes": list(cfg.classes),
            "palette": voc_colormap(len(cfg.classes)), "input_size": cfg.input_size or cfg.crop_size,
            "source": f"init={cfg.init or 'random'}"}
    if resume is not None:
        meta["source"] = resume.get("source", meta["source"])

    def save(iteration: int) -> None:
        save_checkpoint(ckpt_path, {**meta, "state_dict": model.state_dict(),
                                    "optimizer": optimizer.state_dict(), "iteration": iteration,
                                    "max_iter": cfg.max_iter, "rng": rng_state(), "args": asdict(cfg)})

    end = min(cfg.max_iter, cfg.stop_at) if cfg.stop_at else cfg.max_iter
    bar = tqdm(range(start, end), initial=start, total=cfg.max_iter, disable=not cfg.progress,
               desc="train", dynamic_ncols=True)
    t0 = time.perf_counter()
    loss_value = float("nan")
    try:
        for it in bar:
            lr = set_lr(optimizer, cfg.base_lr, it, cfg.max_iter)
            optimizer.zero_grad(set_to_none=True)
            loss_value = 0.0
            for _ in range(cfg.accumulate):
                images, labels = next(batches)
                x = normalize_nchw(images.to(device, non_blocking=True), model.preprocessing)
                loss = multiscale_loss(multiscale_logits(model, x, cfg.scales), labels.to(device))
                (loss / cfg.accumulate).backward()
                loss_value += loss.item() / cfg.accumulate
            optimizer.step()
            done = it + 1
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
            if done % cfg.log_every == 0 or done == end:
                scalars.write(done, loss_value, lr, time.perf_counter() - t0)
            if done % cfg.save_every == 0 or done == end:
                save(done)
    finally:
        scalars.close()
        bar.close()
    return {"checkpoint": ckpt_path, "loss": loss_value, "seconds": time.perf_counter() - t0,
            "iterations": end - start}


# ---------------------------------------------------------------------------------------------------- CLI
def parse_classes(text: str) -> list[str]:
    """`voc`, `synthetic`, or a comma-separated list of names (background first)."""
    if text == "voc":
        return list(VOC_CLASSES)
    if text == "synthetic":
        from .synthetic import CLASSES

        return list(CLASSES)
    names = [n.strip() for n in text.split(",") if n.strip()]
    if len(names) < 2:
        raise ValueError(f"--classes needs 'voc', 'synthetic' or at least two names, got {text!r}")
    return names


def parse_floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"expected positive numbers, got {text!r}")
    return values


def _model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    for name in ("output_stride", "base_width", "head_channels"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    if args.legacy_dilation:
        kw["legacy_dilation"] = True
    return kw


def _run(args: argparse.Namespace) -> int:
    from .cli import CliError

    try:
        scales = parse_floats(args.scales)
        if scales[0] != 1.0:
            raise ValueError("--scales must start with 1 (the scale the fused max is computed at)")
        cfg = TrainConfig(
            data=args.data, out=args.out, split=args.split, labels_dir=args.labels_dir, arch=args.arch,
            classes=parse_classes(args.classes), model_kwargs=_model_kwargs(args), init=args.init,
            max_iter=args.iters, batch_size=args.batch_size, accumulate=args.accumulate, base_lr=args.lr,
            weight_decay=args.weight_decay, crop_size=args.crop_size, input_size=args.input_size,
            min_scale=args.min_scale, max_scale=args.max_scale, mirror=not args.no_mirror, scales=scales,
            train_bn=args.train_bn is not None, bn_affine=args.train_bn != "stats",
            seed=args.seed, save_every=args.save_every, log_every=args.log_every, workers=args.workers,
            device=args.device, resume=args.resume, stop_at=args.stop_at, progress=not args.no_progress,
        )
        if args.threads:
            torch.set_num_threads(args.threads)
        summary = train(cfg)
    except (DatasetError, CheckpointError, FileNotFoundError, ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    print(f"trained {summary['iterations']} iterations in {summary['seconds']:.0f}s, last loss "
          f"{summary['loss']:.4f}; checkpoint: {summary['checkpoint']}")
    return 0
