"""`segment-export train`'s command line: its arguments (without importing torch, so `--help` is instant) and
the mapping of those arguments onto `model_export.train.TrainConfig`; torch is imported only when it runs."""

from __future__ import annotations

import argparse
from typing import Any

from .catalog import ARCH_NAMES
from .cli import CliError

DESCRIPTION = '`segment-export train`: DeepLab training as in the seed (train.py / train_msc.py).'



def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `segment-export train`."""
    p = subparsers.add_parser("train", help="train a DeepLab model on a VOC-layout dataset",
                              description=DESCRIPTION)
    p.add_argument("--data", required=True, help="dataset root holding VOCdevkit/VOC2012")
    p.add_argument("--out", required=True, help="output directory (checkpoint.pt, metrics.csv)")
    p.add_argument("--split", default="train", help="split list name, or a path to a .txt list")
    p.add_argument("--labels-dir", default="SegmentationClass",
                   help="label folder, e.g. SegmentationClassAug with --split train_aug")
    p.add_argument("--arch", default="deeplabv2_resnet101", choices=sorted(ARCH_NAMES))
    p.add_argument("--classes", default="voc", help="'voc', 'synthetic' or comma-separated names")
    p.add_argument("--output-stride", type=int, choices=(8, 16))
    p.add_argument("--base-width", type=int, help="thin archs: width of the first ResNet stage")
    p.add_argument("--head-channels", type=int, help="deeplabv3_thin: ASPP width")
    p.add_argument("--legacy-dilation", action="store_true",
                   help="thin archs: the geometry of models trained before single-block dilated stages took "
                        "their rate (layer3/layer4 rates 1/2 instead of 2/4 at stride 8), e.g. the demo model")
    p.add_argument("--init", help="weights file (torchvision ResNet .pth, converted DeepLab weights, or a "
                                  "checkpoint) or 'imagenet' for torchvision's ImageNet backbone")
    p.add_argument("--iters", type=int, default=20000, help="max iterations (poly schedule length)")
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--accumulate", type=int, default=1, help="gradient accumulation steps per iteration")
    p.add_argument("--lr", type=float, default=2.5e-4, help="base learning rate")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--crop-size", type=int, default=321)
    p.add_argument("--input-size", type=int, help="long side to serve/evaluate at, recorded in the checkpoint "
                                                  "(default: the crop size)")
    p.add_argument("--min-scale", type=float, default=0.5)
    p.add_argument("--max-scale", type=float, default=1.5)
    p.add_argument("--no-mirror", action="store_true")
    p.add_argument("--scales", default="1", help="multi-scale training, e.g. 1,0.75,0.5")
    p.add_argument("--train-bn", "--is-training", nargs="?", const="all", choices=("all", "stats"),
                   help="train BN: 'all' (the default when given) updates statistics and gamma/beta; 'stats' "
                        "updates statistics only, as DrSleep's --is-training does. Without it BN is frozen")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--save-every", type=int, default=1000)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    p.add_argument("--resume", help="checkpoint to continue from (model, optimiser, iteration, RNG)")
    p.add_argument("--stop-at", type=int, help="stop after this iteration (resumable; schedule unchanged)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.set_defaults(func=_run)


def parse_classes(text: str) -> list[str]:
    """`voc`, `synthetic`, or a comma-separated list of names (background first)."""
    if text == "voc":
        from service.core.contract import VOC_CLASSES

        return list(VOC_CLASSES)
    if text == "synthetic":
        from .synthetic import CLASSES

        return list(CLASSES)
    names = [n.strip() for n in text.split(",") if n.strip()]
    if len(names) < 2:
        raise ValueError(f"--classes needs 'voc', 'synthetic' or at least two names, got {text!r}")
    return names


def parse_floats(text: str) -> list[float]:
    """Comma-separated positive numbers (`--scales 1,0.75,0.5`)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"expected positive numbers, got {text!r}")
    return values


def model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The architecture options given on the command line, as `build_model` keyword arguments."""
    kw: dict[str, Any] = {}
    for name in ("output_stride", "base_width", "head_channels"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    if args.legacy_dilation:
        kw["legacy_dilation"] = True
    return kw


def _run(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import CheckpointError
    from .data import DatasetError
    from .train import TrainConfig, train

    try:
        scales = parse_floats(args.scales)
        if scales[0] != 1.0:
            raise ValueError("--scales must start with 1 (the scale the fused max is computed at)")
        cfg = TrainConfig(
            data=args.data, out=args.out, split=args.split, labels_dir=args.labels_dir, arch=args.arch,
            classes=parse_classes(args.classes), model_kwargs=model_kwargs(args), init=args.init,
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
