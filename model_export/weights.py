"""Load weights into our architectures: torchvision's published deeplabv3 `.pth` files, downloaded by their
well-known URL with torch.hub's downloader and sha256-prefix check into torch's hub cache, and the project's
own checkpoints.

Every failure a user can cause (no network, bad hash, truncated file, wrong keys) raises `WeightsError` with
one readable message; the CLI prints it without a traceback.

This module is the entry point (`load_weights`) and the table of published names; the steps live beside it and
their public names are importable from here too: `weights_download` (fetch into the cache, hash checks),
`weights_files` (reading a file from outside, strict loading) and `weights_torchvision` (torchvision's layouts).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .architectures import build_model

# PUBLISHED (name -> file) is the downloader's view of the table that its callers and tests read from here.
from .catalog import BASE_URL_ENV, CACHE_ENV, DEFAULT_BASE_URL, PUBLISHED, WEIGHT_SOURCES
from .checkpoint import CheckpointError, checkpoint_model, checkpoint_model_kwargs, read_training_checkpoint
from .errors import OPTION, WeightsError
from .models import SegmentationModel, output_classes
from .torch_io import UnsafeFileError, sha256_file
from .weights_download import CONNECT_TIMEOUT_S, cache_dir, fetch, hash_prefix, verify_hash
from .weights_files import (
    extract_state_dict,
    is_project_checkpoint,
    load_state_dict_checked,
    read_torchvision_file,
    read_weights_file,
)
from .weights_torchvision import infer_torchvision_arch, load_torchvision_state_dict

# Importable from here as before the split (the CLI, tests and bench/ import them from this module).
__all__ = [
    "BASE_URL_ENV", "CACHE_ENV", "CONNECT_TIMEOUT_S", "DEFAULT_BASE_URL", "PUBLISHED", "WEIGHT_SOURCES", "WeightsError",
    "cache_dir", "extract_state_dict", "fetch", "hash_prefix", "infer_torchvision_arch", "is_project_checkpoint",
    "load_state_dict_checked", "load_torchvision_state_dict", "load_weights", "published_url", "read_torchvision_file",
    "read_weights_file", "verify_hash",
]


def published_url(name: str, base_url: str | None = None) -> str:
    """The download URL of a published model name; the base URL can be overridden (mirrors, tests)."""
    if name not in WEIGHT_SOURCES:
        raise WeightsError(f"no published weights named {name!r}; choose one of {sorted(WEIGHT_SOURCES)}")
    return WEIGHT_SOURCES[name].url(base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL)


def _load_project(path: Path, arch: str | None = None) -> tuple[SegmentationModel, dict[str, Any]]:
    """A training checkpoint, through model_export.checkpoint (the training side owns that format). The
    checkpoint names its network: an `arch` given besides must be that one."""
    try:
        ckpt = read_training_checkpoint(path)
    except CheckpointError as exc:
        raise WeightsError(str(exc).strip().splitlines()[0]) from None
    if arch and arch != ckpt["arch"]:
        raise WeightsError(f"{path} is a {ckpt['arch']} checkpoint, not {arch}: a checkpoint names its own network, "
                           f"so leave {OPTION} out or give {ckpt['arch']}", option="arch")
    try:
        model, meta = checkpoint_model(ckpt)
    except RuntimeError:
        # A strict load_state_dict mismatch: explain it key by key instead of torch's wall of text.
        model = build_model(ckpt["arch"], ckpt["num_classes"], **checkpoint_model_kwargs(ckpt))
        load_state_dict_checked(model, ckpt["state_dict"], f"checkpoint {path.name}")
        raise
    info = {**meta, "kind": "project", "sha256": sha256_file(path),
            "source": meta.get("source") or f"checkpoint {path.name}"}
    return model, info


def load_weights(path_or_name: str | Path, arch: str | None = None, *, keep_aux: bool = True,
                 cache: str | Path | None = None, base_url: str | None = None
                 ) -> tuple[SegmentationModel, dict[str, Any]]:
    """Load any weights we understand into an eval-mode model; returns (model, info).

    `path_or_name` is a file (a torchvision deeplabv3 state_dict, or a project training checkpoint) or the
    name of a published torchvision model (`deeplabv3_resnet101`), which is fetched through the cache.
    `info` always has kind ("torchvision" | "project"), arch, num_classes, source, sha256, classes (or None)
    and input_size; a training checkpoint adds its own fields (palette, iteration, args, ...).
    """
    # A published name (unless a file of that name is here): its row says where it is and what it fills.
    source = None if Path(path_or_name).exists() else WEIGHT_SOURCES.get(str(path_or_name))
    source_url = None
    if source is not None:
        source_url = published_url(source.name, base_url)
        path, digest = fetch(source_url, cache=cache)
        arch = arch or source.arch
    else:
        path, digest = Path(path_or_name), ""
    try:
        obj = read_weights_file(path)
    except UnsafeFileError:  # more than tensors: refused unloaded unless one of our checkpoints (its RNG state)
        return _load_project(path, arch)  # says clearly if it is not one of ours either
    if obj.get("format") is not None or is_project_checkpoint(obj):
        return _load_project(path, arch)
    model = load_torchvision_state_dict(extract_state_dict(obj), arch, keep_aux=keep_aux,
                                        what=f"weights file {path.name}")
    info = {
        "kind": "torchvision", "arch": model.arch, "num_classes": output_classes(model),
        "source": source_url or f"file {path.name}", "sha256": digest or sha256_file(path), "classes": None,
        "input_size": source.input_size if source is not None else None,
    }
    return model, info
