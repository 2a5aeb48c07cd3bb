"""Where training starts from: a weights file (torchvision ImageNet ResNet, a segmentation state_dict, or one of
our checkpoints) or torchvision's ImageNet backbone."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .checkpoint import checkpoint_model_kwargs, is_training_checkpoint, read_training_checkpoint, trained_geometry
from .models import CAFFE_STYLE_ARCHS, SegmentationModel
from .schedule import head_norms
from .torch_io import NotTorchFileError, UnsafeFileError, compare_state_dicts, error_line, load_torch_file
from .weights_download import fetch
from .weights_files import read_torchvision_file
from .wrapper import preprocessing_constants

log = logging.getLogger(__name__)


def read_init_file(path: str | Path) -> Any:
    """The contents of a weights file for `init_from_file`: tensors only, or one of our training checkpoints
    (tensors and their RNG states). Neither load calls anything else a file names: a file naming more is refused
    (CheckpointError), as is an unreadable one (ValueError), each in one line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"init weights not found: {path}")
    try:  # a state_dict from outside: tensors only
        return load_torch_file(path)
    except UnsafeFileError:
        pass  # more than tensors: only one of our checkpoints is accepted
    except NotTorchFileError as exc:  # its message names the file already
        raise ValueError(str(exc)) from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError... for truncated or corrupt files
        raise ValueError(f"{path} is not a readable PyTorch file (truncated or corrupt?): {error_line(exc)}") from None
    return read_training_checkpoint(path)


def init_geometry(blob: Any, path: str | Path, arch: str) -> dict[str, bool]:
    """The `build_model` geometry settings a run of `arch` initialised from `blob` (`read_init_file`) must keep:
    a checkpoint of that arch whose weights were trained in an older geometry computes what it was trained to
    only in that one (model_export.checkpoint.trained_geometry). Other files record no geometry: none. A
    checkpoint of another arch (`--arch` chosen over the file's) gives none either: its geometry settings belong to
    its own network, so the run builds `arch`'s current one, and says so when the weights were trained otherwise."""
    if not is_training_checkpoint(blob, path):
        return {}
    trained = trained_geometry(blob)
    if blob.get("arch") == arch:
        return trained
    if trained:
        log.warning("%s was trained as %s in an older geometry (%s); this %s run builds the current geometry, so "
                    "its backbone starts from weights trained in another network", path, blob.get("arch"),
                    ", ".join(sorted(trained)), arch)
    return {}


def backbone_geometry(init: str | Path, blob: Any, arch: str) -> dict[str, bool]:
    """`{"caffe_style": False}` when a Caffe-style `arch` (DeepLab-v2's) starts from a backbone trained in
    torchvision's geometry: `init` is "imagenet", `blob` a plain ResNet state dict (`layer1...` names, no
    `backbone.`), or one of our checkpoints of a network in that geometry (DeepLab-v3, or DeepLab-v2 built so).
    Those weights were trained with the stride on each downsampling block's 3x3 and a floor-mode max pool; in the
    Caffe geometry (stride on the 1x1, ceil-mode pool, as MSRA's weights were trained) the same weights compute other
    features, and their frozen BN statistics no longer fit them. A run builds the geometry its weights were
    trained in; else none."""
    if arch not in CAFFE_STYLE_ARCHS:
        return {}
    if init == "imagenet":
        return {"caffe_style": False}
    if not isinstance(blob, dict):
        return {}
    if is_training_checkpoint(blob, init):
        caffe = blob.get("arch") in CAFFE_STYLE_ARCHS and checkpoint_model_kwargs(blob).get("caffe_style", True)
        return {} if caffe else {"caffe_style": False}
    state = blob.get("state_dict", blob)
    names = [k.removeprefix("module.") for k in state] if isinstance(state, dict) else []
    plain_resnet = bool(names) and not any(k.startswith(("backbone.", "classifier.")) for k in names)
    return {"caffe_style": False} if plain_resnet else {}


def init_from_file(model: SegmentationModel, path: str | Path, blob: Any = None) -> set[str]:
    """Initialise from a weights file: a torchvision ImageNet ResNet state dict (loaded into the backbone,
    `fc.*` dropped), a full segmentation state dict (`backbone.*`/`classifier.*`) or one of our checkpoints
    (`convert-caffe --checkpoint` writes one from DeepLab-v2's init.caffemodel); a checkpoint's
    preprocessing (Caffe's BGR mean for converted weights) comes along, since it belongs to the weights.
    The backbone must be there whole (ValueError otherwise); of the heads, tensors whose names and shapes match
    are copied and the rest keep their initialisation (a new class count). `blob`: the file's contents when
    already read (`read_init_file`). Returns the names of the tensors copied."""
    path = Path(path)
    if blob is None:
        blob = read_init_file(path)
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
    _check_backbone(model, own, state, path)
    model.load_state_dict(matched, strict=False)
    log.info("initialised %d/%d tensors from %s", len(matched), len(own), path)
    return set(matched)


def _check_backbone(model: SegmentationModel, own: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
                    path: Path) -> None:
    """ValueError unless `state` holds every backbone tensor of the model, shaped alike. Only the heads may differ
    (a new class count: the seed re-initialises its classifier); a backbone left partly at random init (another
    depth or width, another arch) would train on, with BN frozen, from weights nobody chose."""
    # Files saved before BatchNorm counted batches lack these buffers; they do not affect training.
    backbone = {k: v for k, v in own.items() if k.startswith("backbone.") and not k.endswith("num_batches_tracked")}
    mismatch = compare_state_dicts(backbone, {k: v for k, v in state.items() if k in backbone})
    if mismatch:
        raise ValueError(f"{path} does not fit the backbone of {model.arch}: {mismatch.describe()}; only the "
                         "classifier may differ from the model")


def init_from_imagenet(model: SegmentationModel) -> int:
    """torchvision's ImageNet ResNet weights for the backbone (downloads into the weights cache unless there)."""
    import torchvision

    names = {"deeplabv3_resnet50": "ResNet50_Weights.IMAGENET1K_V1",
             "deeplabv3_resnet101": "ResNet101_Weights.IMAGENET1K_V1",
             "deeplabv2_resnet101": "ResNet101_Weights.IMAGENET1K_V1"}
    if model.arch not in names:
        raise ValueError(f"no ImageNet backbone weights for {model.arch}")
    # Our downloader and loader, not torchvision's `get_state_dict`: that fully unpickles whatever file of the name
    # sits in torch's hub cache. `fetch` checks a cached file's sha256 against the prefix in its name, and
    # `read_torchvision_file` reads tensors only; each failure is one WeightsError line.
    path, _ = fetch(torchvision.models.get_weight(names[model.arch]).url)
    state = read_torchvision_file(path)
    state = {f"backbone.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    missing, _ = model.load_state_dict(state, strict=False)
    return len(state) - len([k for k in missing if k.startswith("backbone.")])


def initialise(model: SegmentationModel, init: str | None, blob: Any = None) -> list[str]:
    """Load the initial weights `init` (a file, `blob` its contents when read, or "imagenet"); return the names of
    the head BN layers they do not supply, which a run with frozen BN trains all the same (statistics and
    gamma/beta).

    Frozen BN keeps statistics that mean something: DeepLab fine-tunes ImageNet (or COCO) statistics it cannot
    re-estimate from small batches, and DeepLab-v3 freezes BN for its final fine-tuning once it has trained them
    all, its ASPP's included. A new head's BN has none: frozen at its initialisation (mean 0, var 1, gamma 1,
    beta 0) it is an identity, and the ASPP branches, whose convs have no bias, train unnormalised and without
    one. So a head BN trains unless the weights supply it: ImageNet and ResNet files supply none; a full
    segmentation checkpoint supplies the ones whose names and shapes match (a new class count changes only the
    last conv), and those stay frozen as the rest of the network. Random weights supply nothing and BN trains
    on them unless frozen on request (warned about): then all of it stays frozen, as asked."""
    if not init:
        return []
    new = head_norms(model)
    if init == "imagenet":
        init_from_imagenet(model)  # the backbone only
        return sorted(new)
    loaded = init_from_file(model, init, blob)
    return sorted(name for name in new if f"{name}.running_mean" not in loaded)
