"""The training settings as one dataclass. No torch here: `segment-export train --help` builds its options and
their defaults from these fields (model_export.train_cli) without importing the training loop."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from service.core.contract import VOC_CLASSES

from .errors import OPTION, ModelExportError


@dataclass
class TrainConfig:
    """All training settings. `segment-export train` builds its options and their defaults from these fields."""

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
    # None: trained when starting from random weights, frozen when starting from given ones (init); a resumed
    # run keeps its recorded mode.
    # Frozen BN is DeepLab-v2's fine-tuning choice; on random weights its layers are identities (mean 0, var 1)
    # and a deep ResNet's activations grow block after block until the loss overflows (model_export.train).
    train_bn: bool | None = None
    bn_affine: bool = True  # with train_bn: also train gamma/beta (False: statistics only, as DrSleep)
    seed: int = 1234
    save_every: int = 1000
    log_every: int = 10
    workers: int = 0
    device: str = "auto"
    resume: str | None = None
    stop_at: int | None = None  # stop (and save) after this iteration without changing the schedule length
    progress: bool = True


# On resume, settings of the invocation itself: where it reads and writes, which checkpoint, where it stops.
PER_RUN = frozenset({"data", "out", "resume", "stop_at"})
# On resume, settings that may change without changing what the run computes (saving, logging, where it runs).
CHANGEABLE = frozenset({"save_every", "log_every", "workers", "device", "progress"})
# Defined by the checkpoint's network whatever the config says (model_export.train takes them from the file).
NETWORK = frozenset({"arch", "classes", "model_kwargs", "init"})


# Settings that count something: zero or less would divide by zero (log_every, save_every), train nothing and
# report success (accumulate), or build no batch at all.
_AT_LEAST_ONE = ("max_iter", "batch_size", "accumulate", "crop_size", "save_every", "log_every")


def check_config(cfg: TrainConfig) -> None:
    """ModelExportError naming the first setting whose value cannot describe a run (its `option` is the field)."""

    def bad(name: str, rule: str) -> ModelExportError:
        return ModelExportError(f"{OPTION} must be {rule}, got {getattr(cfg, name)!r}", option=name)

    for name in _AT_LEAST_ONE:
        if getattr(cfg, name) < 1:
            raise bad(name, "at least 1")
    for name in ("input_size", "stop_at"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise bad(name, "at least 1")
    if cfg.workers < 0:
        raise bad("workers", "0 or more")
    if not cfg.base_lr > 0:
        raise bad("base_lr", "positive")
    if not cfg.weight_decay >= 0:
        raise bad("weight_decay", "0 or more")
    if not 0 < cfg.min_scale <= cfg.max_scale:
        raise bad("min_scale", f"positive and at most the largest scale ({cfg.max_scale})")
    if not cfg.scales or cfg.scales[0] != 1.0 or any(not s > 0 for s in cfg.scales):
        raise bad("scales", "positive numbers starting with 1 (the scale the fused max is computed at)")


def resume_conflicts(cfg: TrainConfig, recorded: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """name -> (cfg's value, recorded value) for each setting that differs from a checkpoint's recorded `args`
    and that a resumed run may not change (the schedule, the data stream, the parameter groups...)."""
    fixed = (f.name for f in fields(TrainConfig) if f.name not in PER_RUN | CHANGEABLE and f.name in recorded)
    return {name: (getattr(cfg, name), recorded[name]) for name in fixed if getattr(cfg, name) != recorded[name]}
