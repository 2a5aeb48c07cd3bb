"""`segment-export train`: DeepLab training as in the seed (train.py / train_msc.py): the loop.

SGD (momentum 0.9, weight decay 5e-4 on weights) with poly LR `base·(1 − it/max)^0.9`; the head trains at
10× LR on weights and 20× on biases (model_export.schedule); BN is frozen when training starts from given weights
(the seed fine-tunes an ImageNet model), except the BN layers of a head the weights do not supply (`initialise`),
and trained when it starts from random ones, unless `train_bn` says otherwise (`--train-bn all|stats|off`); labels
are nearest-downsampled to the logits, and an id that is no class nor 255 stops the run with a DatasetError naming
the label file; cross entropy ignores 255. `--scales 1,0.75,0.5` adds the seed's multi-scale loss
(model_export.loss): the sum of per-scale CE terms plus the CE of the element-wise max over scales. `--accumulate N`
averages gradients over N batches (the seed's batch-1 + iter_size). Where training starts is
model_export.init_weights; the settings, model_export.train_config; the command line, model_export.train_cli.
Checkpoints (see model_export.checkpoint) resume bit-identically.

A non-finite loss, or non-finite weights about to be saved, stops the run with `TrainingDiverged`: the checkpoint
on disk stays the last finite one. Ctrl-C stops at the end of the iteration in progress, saves a checkpoint there and
exits 130 (model_export.train_interrupt). Before the first iteration every label map of the split is counted
(model_export.dataset_census): a split without a labelled pixel is refused, a class that never appears or labels
that are mostly the ignore label are warned about, as are images with an EXIF orientation (read as stored).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from service.core.contract import voc_colormap

from .architectures import build_model
from .checkpoint import (
    CheckpointError,
    checkpoint_model_kwargs,
    nonfinite_tensors,
    read_training_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .data import Augment, TrainStream, VOCSegmentation, next_batch
from .dataset_census import split_census, warn_exif_oriented
from .device import pick_device
from .errors import OPTION, ModelExportError
from .init_weights import backbone_geometry, init_geometry, initialise, read_init_file
from .loss import multiscale_logits, multiscale_loss
from .models import SegmentationModel
from .schedule import MOMENTUM, freeze_bn, hold_pooled_statistics, param_groups, set_lr
from .train_config import NETWORK, TrainConfig, check_config, resume_conflicts
from .train_interrupt import StopOnSigint, ignore_sigint, interrupted
from .train_log import ScalarLog
from .wrapper import normalize_nchw, preprocessing_constants

log = logging.getLogger(__name__)

__all__ = ["TrainingDiverged", "train"]

# The settings a diverged run's message suggests changing; the CLI names them by their flags.
_HINTED = ("init", "base_lr", "train_bn")


class TrainingDiverged(ModelExportError):
    """The loss or the weights became NaN/inf. The message names the settings to change as `{init}`,
    `{base_lr}` and `{train_bn}`: their parameter names by default, `naming(...)` spells them otherwise."""

    def __init__(self, template: str) -> None:
        self.hint_template = template
        super().__init__(self.naming({}))

    def naming(self, spellings: dict[str, str]) -> str:
        """The message with each hinted setting spelt `spellings[name]` (default: its parameter name)."""
        text = self.hint_template
        for name in _HINTED:
            text = text.replace("{" + name + "}", spellings.get(name, name))
        return text


def _build(cfg: TrainConfig) -> tuple[SegmentationModel, list[str]]:
    """The network, initialised as `cfg.init` says, and the names of its head BN layers the initial weights do not
    supply (`init_weights.initialise`). Weights are trained on in the geometry they were trained in (a checkpoint's
    older geometry; torchvision's for its ResNet backbone in DeepLab-v2), which `cfg.model_kwargs` (and so the
    run's checkpoints) records: built in another, the same weights would compute something else, silently."""
    blob = read_init_file(cfg.init) if cfg.init and cfg.init != "imagenet" else None
    geometry = init_geometry(blob, cfg.init, cfg.arch) if blob is not None else {}
    if cfg.init:
        geometry |= backbone_geometry(cfg.init, blob, cfg.arch)
    for flag, value in geometry.items():
        if flag not in cfg.model_kwargs:  # a setting given explicitly stands
            log.info("the weights of %s were trained with %s=%s: the run keeps that geometry", cfg.init, flag, value)
            cfg.model_kwargs = {**cfg.model_kwargs, flag: value}
    model = build_model(cfg.arch, len(cfg.classes), **cfg.model_kwargs)
    return model, initialise(model, cfg.init, blob)


def _resolve_bn_mode(cfg: TrainConfig, resume: dict[str, Any] | None) -> None:
    """Fill in `cfg.train_bn` when it is None (auto). A resumed run keeps its recorded mode. Otherwise BN is frozen
    on given weights only: DeepLab-v2 freezes BN because it fine-tunes ImageNet statistics with small batches;
    random weights have none (running mean 0, var 1, gamma 1, beta 0 make every BN an identity), so frozen BN
    leaves a deep ResNet unnormalised and its loss overflows in the first iterations."""
    if cfg.train_bn is None:
        recorded = (resume or {}).get("args") or {}
        cfg.train_bn = bool(recorded.get("train_bn", False)) if resume is not None else cfg.init is None
    if not cfg.train_bn and resume is None and cfg.init is None:
        log.warning("BatchNorm is frozen on randomly initialised weights: frozen at their initial statistics the "
                    "BN layers normalise nothing, and a deep network's loss diverges at once; start from pretrained "
                    "weights or train BN")


def _divergence(what: str, iteration: int, cfg: TrainConfig, from_random: bool, saved: int | None,
                ckpt_path: Path) -> TrainingDiverged:
    """The error for a run that went non-finite at `iteration`: what was kept, and what to try."""
    kept = f"{ckpt_path} keeps iteration {saved}" if saved is not None else "this run saved no checkpoint"
    lower = f"lower the learning rate ({{base_lr}}, now {cfg.base_lr:g})"
    pretrained = "start from pretrained weights ({init} imagenet or a weights file)"
    if from_random and not cfg.train_bn:
        advice = f"frozen BN on random weights normalises nothing: {pretrained} or train BN ({{train_bn}}), or {lower}"
    elif from_random:
        advice = f"{lower}, or {pretrained}"
    else:
        advice = lower
    return TrainingDiverged(f"training diverged: {what} at iteration {iteration}; {kept}. Try: {advice}")


def _check_resume_settings(cfg: TrainConfig, resume: dict[str, Any]) -> None:
    """ValueError if `cfg` would continue the checkpoint's run with other settings (schedule, data stream, BN...):
    the run would silently diverge from the one it resumes. Checkpoints without recorded `args` are trusted."""
    recorded = resume.get("args")
    if recorded is None:
        log.warning("checkpoint records no settings: resuming with the given ones, which must match its run")
        return
    conflicts = {k: v for k, v in resume_conflicts(cfg, recorded).items() if k not in NETWORK}
    if conflicts:
        listed = ", ".join(f"{k}={given!r} (checkpoint: {was!r})" for k, (given, was) in conflicts.items())
        raise ValueError(f"resuming with settings that differ from the checkpoint's run: {listed}")


def _check_resumable(path: str, resume: dict[str, Any]) -> None:
    """CheckpointError for a checkpoint that holds weights but no run to continue (`convert-caffe --checkpoint`
    writes one at iteration 0, without optimiser or RNG state): it is where a new run starts."""
    missing = [key for key in ("optimizer", "rng", "iteration") if key not in resume]
    if missing:
        raise CheckpointError(f"{path} holds no training state to resume (no {', '.join(missing)}): it is initial "
                              f"weights, not a run; start a new run from it with {OPTION} {path}", option="init")


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) training; returns a summary with the final checkpoint path and last loss."""
    check_config(cfg)
    if len(cfg.classes) < 2:  # one output: its cross entropy is 0 whatever it says, and its export labels all 0
        raise ModelExportError(f"{OPTION} names {len(cfg.classes)} class(es): a model needs at least 2 (a binary "
                               "one: background and foreground)", option="classes")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    resume = read_training_checkpoint(cfg.resume) if cfg.resume else None
    if resume is not None:
        _check_resumable(cfg.resume, resume)
        # The network is defined by the checkpoint, whatever the flags say.
        cfg.arch, cfg.classes = resume["arch"], list(resume["classes"])
        cfg.model_kwargs = checkpoint_model_kwargs(resume)
    _resolve_bn_mode(cfg, resume)
    if resume is not None:
        cfg.init = None
        _check_resume_settings(cfg, resume)
    torch.manual_seed(cfg.seed)
    model, new_norms = _build(cfg)
    if resume is not None:
        model.load_state_dict(resume["state_dict"])
        model.preprocessing = resume.get("preprocessing", model.preprocessing)
        # The head BNs the run trained; older runs froze them all.
        new_norms = list(resume.get("head_norms_trained", []))
    model.to(device).train()
    trained_norms: list[str] = []
    if not cfg.train_bn:
        trained_norms = new_norms
        # One image per batch: the new head's BNs keep their initial statistics, and gamma/beta train.
        freeze_bn(model, trainable=trained_norms, trainable_statistics=cfg.batch_size > 1)
        if trained_norms:
            log.info("BN frozen, except the %d BN layers of the new head%s: %s", len(trained_norms),
                     "" if cfg.batch_size > 1 else " (gamma/beta only, at batch size 1)", ", ".join(trained_norms))
    elif not cfg.bn_affine:
        freeze_bn(model, statistics=False)
    if cfg.train_bn and cfg.batch_size == 1:
        held = hold_pooled_statistics(model)
        if held:
            log.info("BN trains, except the statistics of the image-pooling branch at batch size 1: %s",
                     ", ".join(held))
    optimizer = torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=cfg.base_lr, momentum=MOMENTUM)
    start = 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        start = int(resume["iteration"])
        set_rng_state(resume["rng"])
    if start >= cfg.max_iter:
        raise ValueError(f"checkpoint is at iteration {start}, max_iter is {cfg.max_iter}: nothing to do")
    if cfg.stop_at is not None and cfg.stop_at <= start:  # else it "trained" a negative number of iterations
        raise ModelExportError(f"{OPTION} {cfg.stop_at} is not after the checkpoint's iteration {start}: nothing "
                               "to do", option="stop_at")

    dataset = VOCSegmentation(cfg.data, cfg.split, cfg.labels_dir)
    # Before the first iteration: labels all ignored would train to a loss of 0 and "succeed".
    census = split_census(dataset, len(cfg.classes))
    what = f"split {cfg.split!r}"
    if census.labelled(len(cfg.classes)) == 0:
        raise census.no_labels(what)
    census.warn(cfg.classes, what)
    warn_exif_oriented([dataset.image_path(i) for i in range(len(dataset))])
    pad = preprocessing_constants(model.preprocessing)[0]
    augment = Augment(cfg.crop_size, cfg.min_scale, cfg.max_scale, cfg.mirror, tuple(pad))  # type: ignore[arg-type]
    per_iter = cfg.batch_size * cfg.accumulate
    # Sample k of the run is fixed by (seed, k); resuming just starts the counter further on.
    loader = DataLoader(TrainStream(dataset, augment, cfg.seed, len(cfg.classes)), batch_size=cfg.batch_size,
                        sampler=range(start * per_iter, cfg.max_iter * per_iter), num_workers=cfg.workers,
                        pin_memory=device.type == "cuda", worker_init_fn=ignore_sigint,
                        # Its own generator: creating the iterator must not draw from the global torch RNG,
                        # which dropout uses and which a resume restores.
                        generator=torch.Generator().manual_seed(cfg.seed))
    batches = iter(loader)
    scalars = ScalarLog(out, append=resume is not None)
    ckpt_path = out / "checkpoint.pt"
    meta = {"arch": cfg.arch, "num_classes": len(cfg.classes), "model_kwargs": cfg.model_kwargs,
            "preprocessing": model.preprocessing, "classes": list(cfg.classes),
            "palette": voc_colormap(len(cfg.classes)), "input_size": cfg.input_size or cfg.crop_size,
            "source": f"init={cfg.init or 'random'}", "head_norms_trained": trained_norms}
    if resume is not None:
        meta["source"] = resume.get("source", meta["source"])

    saved: int | None = None  # the iteration this run last saved
    saving: int | None = None  # the iteration being saved, while it is
    from_random = meta["source"] == "init=random"  # where the run (or the run it resumes) started

    def save(iteration: int) -> None:
        nonlocal saved, saving
        saving = iteration
        # A finite loss does not vouch for the weights the step after it produced: check them before they
        # replace the last good checkpoint.
        bad = nonfinite_tensors(model.state_dict())
        if bad:
            raise _divergence(f"{len(bad)} weight tensors became non-finite (e.g. {bad[0]})", iteration, cfg,
                              from_random, saved, ckpt_path)
        save_checkpoint(ckpt_path, {**meta, "state_dict": model.state_dict(),
                                    "optimizer": optimizer.state_dict(), "iteration": iteration,
                                    "max_iter": cfg.max_iter, "rng": rng_state(), "args": asdict(cfg)})
        saved, saving = iteration, None

    end = min(cfg.max_iter, cfg.stop_at) if cfg.stop_at else cfg.max_iter
    bar = tqdm(range(start, end), initial=start, total=cfg.max_iter, disable=not cfg.progress,
               desc="train", dynamic_ncols=True)
    t0 = time.perf_counter()
    loss_value = float("nan")
    done = start
    stop = StopOnSigint()  # Ctrl-C: stop at the end of the iteration and save there (model_export.train_interrupt)
    try:
        with stop:
            for it in bar:
                lr = set_lr(optimizer, cfg.base_lr, it, cfg.max_iter)
                optimizer.zero_grad(set_to_none=True)
                loss_value = 0.0
                for _ in range(cfg.accumulate):
                    images, labels = next_batch(batches)
                    x = normalize_nchw(images.to(device, non_blocking=True), model.preprocessing)
                    loss = multiscale_loss(multiscale_logits(model, x, cfg.scales), labels.to(device))
                    value = loss.item()
                    if not math.isfinite(value):  # before the step: the weights stay as they were
                        raise _divergence(f"loss is {value}", it + 1, cfg, from_random, saved, ckpt_path)
                    (loss / cfg.accumulate).backward()
                    loss_value += value / cfg.accumulate
                optimizer.step()
                done = it + 1
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
                if done % cfg.log_every == 0 or done == end or stop.requested:
                    scalars.write(done, loss_value, lr, time.perf_counter() - t0)
                if done % cfg.save_every == 0 or done == end or stop.requested:
                    save(done)
                if stop.requested and done < end:
                    raise interrupted(f"interrupted at iteration {done}", ckpt_path, saved)
    except KeyboardInterrupt:  # a second Ctrl-C: no wait for the iteration, nor for the save, to end
        what = f"while saving iteration {saving}" if saving is not None else f"during iteration {done + 1}"
        raise interrupted(f"interrupted again {what}", ckpt_path, saved) from None
    finally:
        scalars.close()
        bar.close()
    return {"checkpoint": ckpt_path, "loss": loss_value, "seconds": time.perf_counter() - t0,
            "iterations": end - start}
