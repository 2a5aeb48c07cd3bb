"""`segment-export train`'s command line, built from `model_export.train_config.TrainConfig`: each setting's
option takes its default (and type) from the dataclass field, so a default is written once. torch is imported
only when the command runs, so `--help` is instant."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields, replace
from pathlib import Path
from typing import Any

from .catalog import ARCH_NAMES
from .cli import CliError, flag_of
from .errors import ModelExportError
from .train_config import CHANGEABLE, PER_RUN, TrainConfig

DESCRIPTION = "`segment-export train`: DeepLab training as in the seed (train.py / train_msc.py)."
# Each field's default; fields without one (data, out) are required options.
_DEFAULTS: dict[str, Any] = {
    f.name: f.default if f.default is not MISSING else f.default_factory()
    for f in fields(TrainConfig) if f.default is not MISSING or f.default_factory is not MISSING
}
_FIELDS = frozenset(f.name for f in fields(TrainConfig))
# The namespace attribute listing the options given on the command line (dest -> the flag as spelt), so a resume
# can tell "not given" (take the checkpoint's value) from "given" (must agree with it).
GIVEN = "given_flags"
# Options whose dest is not the TrainConfig field they set.
_OPTION_FIELDS = {"no_mirror": ("mirror",), "train_bn": ("train_bn", "bn_affine"), "no_progress": ("progress",)}
_MODEL_OPTIONS = frozenset({"output_stride", "base_width", "head_channels", "legacy_dilation"})
# How a diverged run's message (model_export.train.TrainingDiverged) spells the settings it suggests changing.
_HINT_FLAGS = {"init": "--init", "base_lr": "--lr", "train_bn": "--train-bn"}
# Settings whose flag is not `flag_of(field)`, for errors that name the setting at fault.
_FLAGS = {"max_iter": "--iters", "base_lr": "--lr"}


def _recording(action: type[argparse.Action]) -> type[argparse.Action]:
    """`action`, also noting its dest and flag in the namespace's GIVEN dict when the option is given."""

    class Recording(action):  # type: ignore[valid-type,misc]
        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                     option_string: str | None = None) -> None:
            super().__call__(parser, namespace, values, option_string)
            setattr(namespace, GIVEN, {**getattr(namespace, GIVEN, {}), self.dest: option_string})

    return Recording


def _setting(p: argparse.ArgumentParser, flag: str, name: str, value_type: type | None = None,
             **kwargs: Any) -> None:
    """The option `flag` for the TrainConfig field `name`: its default and type are the field's. The metavar stays
    the flag's own (`--iters ITERS`, not `MAX_ITER`)."""
    if name in _DEFAULTS:
        kwargs["default"] = _DEFAULTS[name]
    else:
        kwargs["required"] = True
    default = kwargs.get("default")
    value_type = value_type or (str if default is None else type(default))
    if value_type is not str:
        kwargs["type"] = value_type
    p.add_argument(flag, dest=name, metavar=flag.lstrip("-").replace("-", "_").upper(), **kwargs)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `segment-export train`."""
    p = subparsers.add_parser("train", help="train a DeepLab model on a VOC-layout dataset",
                              description=DESCRIPTION)
    # Every option of this parser records that it was given (the defaults stay real values, shown by --help).
    p.register("action", None, _recording(argparse._StoreAction))
    p.register("action", "store_true", _recording(argparse._StoreTrueAction))
    _setting(p, "--data", "data", help="dataset root holding VOCdevkit/VOC2012")
    _setting(p, "--out", "out", help="output directory (checkpoint.pt, metrics.csv)")
    _setting(p, "--split", "split", help="split list name, or a path to a .txt list")
    _setting(p, "--labels-dir", "labels_dir", help="label folder, e.g. SegmentationClassAug with --split train_aug")
    p.add_argument("--arch", default=_DEFAULTS["arch"], choices=sorted(ARCH_NAMES))
    p.add_argument("--classes", default="voc", help="'voc', 'synthetic' or comma-separated names")
    p.add_argument("--output-stride", type=int, choices=(8, 16))
    p.add_argument("--base-width", type=int, help="thin archs: width of the first ResNet stage")
    p.add_argument("--head-channels", type=int, help="deeplabv3_thin: ASPP width")
    p.add_argument("--legacy-dilation", action="store_true",
                   help="thin archs: the geometry of models trained before single-block dilated stages took "
                        "their rate (layer3/layer4 rates 1/2 instead of 2/4 at stride 8), e.g. the demo model")
    _setting(p, "--init", "init", help="weights file (torchvision ResNet .pth, converted DeepLab weights, or a "
                                       "checkpoint) or 'imagenet' for torchvision's ImageNet backbone")
    _setting(p, "--iters", "max_iter", help="max iterations (poly schedule length)")
    _setting(p, "--batch-size", "batch_size")
    _setting(p, "--accumulate", "accumulate", help="gradient accumulation steps per iteration")
    _setting(p, "--lr", "base_lr", help="base learning rate")
    _setting(p, "--weight-decay", "weight_decay")
    _setting(p, "--crop-size", "crop_size")
    _setting(p, "--input-size", "input_size", int,
             help="long side to serve/evaluate at, recorded in the checkpoint (default: the crop size)")
    _setting(p, "--min-scale", "min_scale")
    _setting(p, "--max-scale", "max_scale")
    p.add_argument("--no-mirror", action="store_true")
    p.add_argument("--scales", default=",".join(f"{s:g}" for s in _DEFAULTS["scales"]),
                   help="multi-scale training, e.g. 1,0.75,0.5")
    p.add_argument("--train-bn", "--is-training", nargs="?", const="all", choices=("all", "stats", "off"),
                   help="train BN: 'all' (the default when given) updates statistics and gamma/beta; 'stats' "
                        "updates statistics only, as DrSleep's --is-training does; 'off' freezes BN. Without it "
                        "BN is frozen when starting from --init weights (as the seed fine-tunes) and trained "
                        "('all') from random weights, whose BN statistics mean nothing; frozen, the BN layers of a "
                        "head the weights do not supply still train; --resume keeps the recorded mode")
    _setting(p, "--seed", "seed")
    _setting(p, "--save-every", "save_every")
    _setting(p, "--log-every", "log_every")
    _setting(p, "--workers", "workers", help="data loader worker processes")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    _setting(p, "--device", "device", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    _setting(p, "--resume", "resume",
             help="checkpoint to continue from: model, optimiser, iteration, RNG and the run's settings (options "
                  "not given take the recorded values; given ones must agree, except data/out/stop-at, saving, "
                  "logging, workers and device)")
    _setting(p, "--stop-at", "stop_at", int, help="stop after this iteration (resumable; schedule unchanged)")
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


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the parsed options describe; ValueError for a bad --scales or --classes."""
    scales = parse_floats(args.scales)
    if scales[0] != 1.0:
        raise ValueError("--scales must start with 1 (the scale the fused max is computed at)")
    # Options named after a field carry its value as is; the rest are parsed or inverted here.
    given = {name: value for name, value in vars(args).items() if name in _FIELDS}
    return TrainConfig(**{
        **given, "classes": parse_classes(args.classes), "model_kwargs": model_kwargs(args), "scales": scales,
        # Not given: None, which model_export.train resolves from where training starts.
        "mirror": not args.no_mirror, "train_bn": None if args.train_bn is None else args.train_bn != "off",
        "bn_affine": args.train_bn != "stats",
        "progress": not args.no_progress,
    })


def _flag_value(cfg: TrainConfig, dest: str, recorded: dict[str, Any]) -> tuple[Any, Any]:
    """(the given value, the recorded one) of option `dest`, in the terms of the TrainConfig field(s) it sets."""
    if dest in _MODEL_OPTIONS:
        return cfg.model_kwargs.get(dest), recorded.get("model_kwargs", {}).get(dest)
    names = [n for n in _OPTION_FIELDS.get(dest, (dest,)) if n in recorded]
    if len(names) == 1:
        return getattr(cfg, names[0]), recorded[names[0]]
    return tuple(getattr(cfg, n) for n in names), tuple(recorded[n] for n in names)


def resumed_config(args: argparse.Namespace, cfg: TrainConfig, recorded: dict[str, Any] | None) -> TrainConfig:
    """The config that continues a checkpoint's run: its recorded settings (`args` in the file), the options of
    this invocation (PER_RUN), and those given that may change (CHANGEABLE). ValueError names a given option
    that differs from the recorded run. Without a record (older checkpoints) the options are used as given, and
    model_export.train warns."""
    if recorded is None:
        return cfg
    given: dict[str, str] = getattr(args, GIVEN, {})
    keep = set(PER_RUN)
    for dest, flag in given.items():
        names = set(_OPTION_FIELDS.get(dest, (dest,)))
        if names <= PER_RUN | CHANGEABLE:
            keep |= names
            continue
        if dest == "threads":  # not a setting of the run
            continue
        value, was = _flag_value(cfg, dest, recorded)
        if value != was:
            raise ValueError(f"{flag} differs from the checkpoint's run ({value} vs recorded {was}): a resumed run "
                             f"keeps its recorded settings; drop {flag}, or start a new run without --resume")
    return replace(cfg, **{k: v for k, v in recorded.items() if k in _FIELDS and k not in keep})


def _check_out(out: Path) -> None:
    """CliError for an --out that names a file: the run makes it a folder of checkpoint.pt and metrics.csv."""
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file, not a directory: training writes checkpoint.pt and metrics.csv "
                       "into a directory (an existing one is fine)")


def _run(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import CheckpointError, read_training_checkpoint
    from .data import DatasetError
    from .train import TrainingDiverged, train

    _check_out(Path(args.out))
    try:
        cfg = config_from_args(args)
        if cfg.resume:
            cfg = resumed_config(args, cfg, read_training_checkpoint(cfg.resume).get("args"))
        if args.threads:
            torch.set_num_threads(args.threads)
        summary = train(cfg)
    except TrainingDiverged as exc:
        raise CliError(exc.naming(_HINT_FLAGS)) from None
    except ModelExportError as exc:  # a setting out of range, a checkpoint that cannot resume
        option = exc.option
        raise CliError(exc.naming_option_as(_FLAGS.get(option, flag_of(option))) if option else str(exc)) from None
    # OSError: an --out below a file, a folder it may not write...
    except (DatasetError, CheckpointError, OSError, ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None
    print(f"trained {summary['iterations']} iterations in {summary['seconds']:.0f}s, last loss "
          f"{summary['loss']:.4f}; checkpoint: {summary['checkpoint']}")
    return 0
