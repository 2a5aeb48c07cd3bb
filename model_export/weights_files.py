"""Reading weight files from outside (tensors only, no code runs) and fitting a state_dict to a model, with one
readable `WeightsError` per failure."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import torch

from .errors import WeightsError
from .torch_io import (
    NotTorchFileError,
    UnsafeFileError,
    compare_state_dicts,
    error_line,
    listing,
    load_torch_file,
)


def _raise_unreadable(path: Path, exc: Exception) -> NoReturn:
    raise WeightsError(
        f"{path} is not a readable PyTorch checkpoint (truncated or corrupt download?): {error_line(exc)}"
    ) from None


def read_weights_file(path: str | Path) -> Mapping[str, Any]:
    """A weights file's dict (tensors and plain containers only: nothing the file names is called), turning
    failures into WeightsError.

    Raises `torch_io.UnsafeFileError` for a complete pickle that names more than tensors, unloaded: the caller
    decides whether it may be one of our training checkpoints (`checkpoint.read_training_checkpoint`)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        obj = load_torch_file(path)
    except UnsafeFileError:
        raise  # e.g. a training checkpoint's numpy RNG state
    except NotTorchFileError as exc:  # its own line: torch's would advise an unsafe retry
        raise WeightsError(str(exc)) from None
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError... for bad files
        _raise_unreadable(path, exc)
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state_dict or checkpoint dict")
    return obj


def read_torchvision_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a torchvision-layout weights file (`extract_state_dict`); WeightsError for one of our
    training checkpoints, which name their own network: one holding an RNG state is refused unloaded."""
    try:
        obj = read_weights_file(path)
    except UnsafeFileError as exc:
        raise WeightsError(f"{path} is not a torchvision state_dict: it names {listing(exc.names)} besides "
                           "tensors (a training checkpoint names numpy's RNG state); refused unloaded") from None
    if obj.get("format") is not None or is_project_checkpoint(obj):
        raise WeightsError(f"{path} is not a torchvision state_dict: it is a training checkpoint "
                           f"({obj.get('format') or 'arch and state_dict'})")
    return extract_state_dict(obj)


def is_project_checkpoint(obj: Mapping[str, Any]) -> bool:
    """The project's training checkpoints are dicts that name their arch next to the state_dict."""
    return "state_dict" in obj and "arch" in obj


def extract_state_dict(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a checkpoint: a bare state_dict, or one under `state_dict`/`model`
    (torchvision's reference scripts use `model`). A DataParallel `module.` prefix is stripped."""
    for key in ("state_dict", "model"):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError("the file holds no tensors: it is not a state_dict")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def load_state_dict_checked(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor],
                            what: str = "checkpoint") -> None:
    """`load_state_dict(strict=True)`, but a mismatch raises one WeightsError listing missing keys,
    unexpected keys and shape mismatches (long lists summarised)."""
    expected = model.state_dict()
    state = dict(state_dict)
    # Files saved before BatchNorm counted batches lack these buffers; they do not affect inference.
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    mismatch = compare_state_dicts(expected, state)
    if mismatch:
        arch = getattr(model, "arch", type(model).__name__)
        raise WeightsError(f"{what} does not fit {arch}: {mismatch.describe()}")
    model.load_state_dict(state, strict=True)
