"""Training checkpoints: one `torch.save`d dict that both resumes training and rebuilds the model for export.

Format (`format == "model_export.train/3"`):

| key | what |
|---|---|
| `format` | the string above; its version says which network geometry the weights were trained in (below) |
| `arch`, `num_classes`, `model_kwargs` | `build_model(arch, num_classes, **model_kwargs)` rebuilds the network |
| `preprocessing` | "imagenet" or "caffe" (how inputs are normalised; belongs to the weights) |
| `classes`, `palette` | class names and [r, g, b] colours, carried into the ONNX metadata |
| `input_size` | the crop size it was trained at (the metadata's `input_size`) |
| `state_dict` | the model's parameters and buffers |
| `optimizer` | the SGD state (momentum buffers), for resuming |
| `iteration`, `max_iter` | iterations done, and the length of the poly schedule |
| `rng` | python / numpy / torch (and CUDA) generator states |
| `args` | the training settings, for the record and for resuming |
| `source` | provenance of the initial weights |
| `single_block_dilation` | True since single-block dilated stages take their rate (model_export.models) |
| `head_norms_trained` | names of the head BN layers a run with frozen BN trains (model_export.train); absent: none |
| `upsample_align_corners` | True: the logits upsample corner-aligned (model_export.models); absent: False |

`upsample_align_corners` is True only in `convert-caffe --checkpoint`'s file of a trained Caffe model (its weights
are Caffe's, trained and tested with corner-aligned upsampling). `train` never writes it, `--init` included: the
trainer teaches half-pixel centres (model_export.loss), so a model it trains exports with False.

Older files rebuild the geometry they were trained in, so they compute what they were trained to:
- without `single_block_dilation`: `legacy_dilation=True`;
- version 1 of a Caffe-style architecture (`models.CAFFE_STYLE_ARCHS`): `legacy_caffe_stride=True`. Version 2
  strides every downsampling block of Caffe-style geometry in its 1x1 conv; version 1 did so in layer2 only, so at
  output stride 16 its layer3 strided the 3x3.
- version 1 or 2 of a DeepLab-v3 ResNet architecture (`models.DEEPLABV3_ASPP_ARCHS`): `legacy_aspp_rates=True`.
  Version 3 builds the ASPP at rates 6/12/18 at output stride 16 (`models.aspp_rates`); earlier versions used
  12/24/36 at every stride. At output stride 8 (torchvision's models) both build the same network.

A run that `train --init` starts from a checkpoint keeps the older geometry its weights were trained in
(`trained_geometry`) and records it in `model_kwargs`, as a resumed run does.

`load_checkpoint_model(path)` returns `(model, info)`; `info` is the dict without `state_dict`/`optimizer`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .architectures import build_model
from .atomic import atomic_path
from .errors import ModelExportError
from .models import CAFFE_STYLE_ARCHS, DEEPLABV3_ASPP_ARCHS, SegmentationModel
from .torch_io import NotTorchFileError, SafeGlobal, UnsafeFileError, error_line, load_torch_file

FORMAT_NAME = "model_export.train"
# 2: Caffe-style geometry strides the 1x1 conv in every downsampling stage; 3: DeepLab-v3 ASPP rates 6/12/18 at
# output stride 16
VERSION = 3
FORMAT = f"{FORMAT_NAME}/{VERSION}"
# build_model settings that rebuild an earlier geometry: they change what weights compute, not their shapes.
GEOMETRY_FLAGS = ("legacy_dilation", "legacy_caffe_stride", "legacy_aspp_rates")
# Every version this code rebuilds faithfully (checkpoint_model_kwargs); a newer one is refused.
READABLE = {f"{FORMAT_NAME}/{v}": v for v in range(1, VERSION + 1)}


class CheckpointError(ModelExportError):
    """The file is not a readable training checkpoint; the message names it."""


def rng_state() -> dict[str, Any]:
    """Every generator state a training run may touch."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def nonfinite_tensors(state: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors in a state dict that hold a NaN or an infinity (in key order)."""
    return [name for name, t in state.items()
            if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def save_checkpoint(path: str | Path, ckpt: dict[str, Any]) -> Path:
    """Write atomically (temp file + rename), so an interrupted save never leaves a truncated checkpoint.

    The current format unless `ckpt` carries its own `format` (a dict read back from an older file keeps its
    version, and with it the geometry its weights belong to)."""
    path = Path(path)
    with atomic_path(path) as partial:
        torch.save({"format": FORMAT, "single_block_dilation": True, **ckpt}, partial)
    return path


def _numpy_rng_globals() -> list[SafeGlobal]:
    """What `np.random.get_state()` names when pickled, beyond plain values: its MT19937 key, a uint32 ndarray.
    Python's `random.getstate()` is tuples of ints, which torch's `weights_only` loader reads as they are."""
    reconstruct = np.ndarray.__reduce__(np.zeros(0))[0]  # the function numpy pickles arrays through
    # A file spells it by the module of the numpy that wrote it: numpy 2 moved numpy.core to numpy._core.
    return [np.ndarray, np.dtype, type(np.dtype(np.uint32)),
            *((reconstruct, f"{module}.multiarray._reconstruct") for module in ("numpy._core", "numpy.core"))]


# Everything a checkpoint holds beyond tensors and plain containers (`rng_state`); a file naming anything else is
# refused unloaded, since a pickle can call whatever it names.
CHECKPOINT_GLOBALS = _numpy_rng_globals()


def read_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint's dict (`save_checkpoint`'s format) on the CPU; clear errors for missing, corrupt
    or foreign files. Only tensors, plain containers and numpy's RNG state are rebuilt: a file naming anything
    else is refused before anything it names is called, so any file may be passed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = load_torch_file(path, allowed=CHECKPOINT_GLOBALS)
    except UnsafeFileError as exc:
        raise CheckpointError(f"{path} is not a {FORMAT_NAME} checkpoint: {exc.reason}") from None
    except NotTorchFileError as exc:  # its own line: torch's would advise an unsafe retry
        raise CheckpointError(str(exc)) from None
    except Exception as exc:  # torch raises many types for corrupt files
        raise CheckpointError(f"cannot read checkpoint {path}: {error_line(exc)}") from None
    if not is_training_checkpoint(ckpt, path):
        raise CheckpointError(f"{path} is not a {FORMAT_NAME} checkpoint (format {FORMAT!r})")
    return ckpt


def is_training_checkpoint(blob: Any, path: str | Path) -> bool:
    """Whether a loaded file's contents are a training checkpoint this version reads; CheckpointError for one of
    a newer format version (its geometry may be one this version cannot build)."""
    found = blob.get("format") if isinstance(blob, dict) else None
    if isinstance(found, str) and found.startswith(f"{FORMAT_NAME}/") and found not in READABLE:
        raise CheckpointError(f"{path} is a {found} checkpoint, newer than this version reads ({FORMAT})")
    return isinstance(found, str) and found in READABLE


def format_version(ckpt: Mapping[str, Any]) -> int:
    """The format version of a checkpoint dict that `read_training_checkpoint` accepted."""
    return READABLE[ckpt["format"]]


def checkpoint_model_kwargs(ckpt: dict[str, Any]) -> dict[str, Any]:
    """`build_model` kwargs that rebuild the network the checkpoint's weights were trained in."""
    kwargs = dict(ckpt.get("model_kwargs", {}))
    if not ckpt.get("single_block_dilation"):
        kwargs.setdefault("legacy_dilation", True)
    if format_version(ckpt) < 2 and ckpt.get("arch") in CAFFE_STYLE_ARCHS:
        # Recorded in model_kwargs by a resumed run, so its version-2 checkpoints keep this geometry too.
        kwargs.setdefault("legacy_caffe_stride", True)
    if format_version(ckpt) < 3 and ckpt.get("arch") in DEEPLABV3_ASPP_ARCHS:
        kwargs.setdefault("legacy_aspp_rates", True)  # recorded by a resumed run, as legacy_caffe_stride
    return kwargs


def trained_geometry(ckpt: dict[str, Any]) -> dict[str, bool]:
    """The legacy geometry settings (`GEOMETRY_FLAGS`) of the network the checkpoint's weights were trained in,
    where they make it compute otherwise than the current geometry: a run initialised from the weights keeps
    them. A setting that builds the same network (`legacy_caffe_stride` or `legacy_aspp_rates` at output stride 8) is
    left out, so the run's own output stride decides, in the current geometry."""
    kwargs = checkpoint_model_kwargs(ckpt)
    trained = _geometry(ckpt["arch"], kwargs)
    return {flag: True for flag in GEOMETRY_FLAGS
            if kwargs.get(flag) and _geometry(ckpt["arch"], {**kwargs, flag: False}) != trained}


def _geometry(arch: str, kwargs: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Every module's strides, dilations, padding and pooling mode: what the settings change, not the weights."""
    with torch.device("meta"):  # no memory and no initialisation: only the layout is read
        model = build_model(arch, 1, **kwargs)
    attrs = ("stride", "dilation", "padding", "ceil_mode")
    return [(name, *(getattr(module, a, None) for a in attrs)) for name, module in model.named_modules()]


def load_checkpoint_model(path: str | Path) -> tuple[SegmentationModel, dict[str, Any]]:
    """Rebuild the trained model (eval mode, CPU) and return it with the checkpoint's other fields."""
    return checkpoint_model(read_training_checkpoint(path))


def checkpoint_model(ckpt: dict[str, Any]) -> tuple[SegmentationModel, dict[str, Any]]:
    """`load_checkpoint_model` of a dict `read_training_checkpoint` returned (RuntimeError when its state_dict
    does not fit the network it names)."""
    model = build_model(ckpt["arch"], ckpt["num_classes"], **checkpoint_model_kwargs(ckpt))
    model.preprocessing = ckpt.get("preprocessing", model.preprocessing)
    model.upsample_align_corners = bool(ckpt.get("upsample_align_corners", False))
    model.load_state_dict(ckpt["state_dict"], strict=True)
    info = {k: v for k, v in ckpt.items() if k not in ("state_dict", "optimizer")}
    return model.eval(), info
