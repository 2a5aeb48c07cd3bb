"""Load weights into our architectures: torchvision's published deeplabv3 `.pth` files, downloaded by their
well-known URL with torch.hub's downloader and sha256-prefix check into torch's hub cache, and the project's
own checkpoints.

Every failure a user can cause (no network, bad hash, truncated file, wrong keys) raises `WeightsError` with
one readable message; the CLI prints it without a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import socket
import urllib.error
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import torch

from .architectures import build_model

# PUBLISHED (name -> file) is the downloader's view of the table that its callers and tests read from here.
from .catalog import BASE_URL_ENV, CACHE_ENV, DEFAULT_BASE_URL, PUBLISHED, WEIGHT_SOURCES  # noqa: F401
from .checkpoint import CheckpointError, load_checkpoint_model, read_training_checkpoint
from .errors import ModelExportError
from .models import SegmentationModel, output_classes
from .torch_io import compare_state_dicts, listing, load_torch_file, sha256_file

log = logging.getLogger(__name__)

# The main head's last conv in each torchvision layout: its first dimension is the number of classes.
_HEAD_KEYS = {"lraspp_mobilenet_v3_large": "classifier.high_classifier.weight"}
# A short socket timeout: with no network we want to fail in seconds, not minutes.
CONNECT_TIMEOUT_S = 10.0
# torch.hub's convention: the sha256 prefix sits between the last '-' and the extension.
_HASH_RE = re.compile(r"-([0-9a-f]{8,64})\.[^.]+$")


class WeightsError(ModelExportError):
    """A weights file cannot be fetched, read or loaded; the message says what to do (the CLI prints it as one
    clean line)."""


# ---------------------------------------------------------------------------------------------- download

def cache_dir(override: str | Path | None = None) -> Path:
    """The weights cache: `override`, else $SEGMENT_CACHE_DIR, else torch's hub cache
    (`$TORCH_HOME/hub/checkpoints`, by default ~/.cache/torch/hub/checkpoints), which torchvision's own weights
    API (`train --init imagenet`) and `torch.hub.load_state_dict_from_url` use too: one cache, not two."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path(torch.hub.get_dir()) / "checkpoints"


def hash_prefix(file_name: str) -> str | None:
    """The sha256 prefix embedded in a torchvision-style file name (`name-<hex>.pth`), or None."""
    match = _HASH_RE.search(file_name)
    return match.group(1) if match else None


def published_url(name: str, base_url: str | None = None) -> str:
    """The download URL of a published model name; the base URL can be overridden (mirrors, tests)."""
    if name not in WEIGHT_SOURCES:
        raise WeightsError(f"no published weights named {name!r}; choose one of {sorted(WEIGHT_SOURCES)}")
    return WEIGHT_SOURCES[name].url(base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL)


def verify_hash(path: Path, expected_prefix: str | None) -> str:
    """Full sha256 of `path`; if it does not start with `expected_prefix` the file is deleted and we raise."""
    digest = sha256_file(path)
    if expected_prefix and not digest.startswith(expected_prefix):
        path.unlink(missing_ok=True)
        raise WeightsError(
            f"sha256 of {path.name} is {digest[:16]}..., expected it to start with {expected_prefix}; "
            f"the file is corrupt or not the published one and was removed from the cache ({path})"
        )
    return digest


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """torch.hub's downloader opens the URL without a timeout; with no network we want to fail in seconds."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def fetch(url: str, *, cache: str | Path | None = None, timeout: float = CONNECT_TIMEOUT_S,
          progress: bool = True) -> tuple[Path, str]:
    """Return (local path, sha256) for `url`, downloading into the cache unless a verified copy is there.

    The download is `torch.hub.download_url_to_file` with the file name's sha256 prefix: it writes a temporary
    file beside the target and moves it into place only after the hash check, so an interrupted or corrupt
    download never poisons the cache. A file already in the cache (put there by torch, torchvision or by hand)
    is checked against the same prefix and used without any network access. A file name without a sha256
    prefix is refused (WeightsError): nothing else would tell a download cut short from the whole file.
    """
    file_name = url.rstrip("/").rsplit("/", 1)[-1]
    prefix = hash_prefix(file_name)
    if prefix is None:
        # The hash is the only check a download gets: torch.hub's downloader keeps whatever arrived, so a
        # connection cut short would otherwise be cached (and reused) as the weights.
        raise WeightsError(f"{file_name} carries no sha256 prefix ('<name>-<sha256 prefix>.pth', as torchvision "
                           f"names its files), so a download from {url} could not be verified; publish or rename "
                           "it under that convention")
    folder = cache_dir(cache)
    target = folder / file_name
    if target.exists():
        log.info("using cached %s", target)
        return target, verify_hash(target, prefix)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(f"cannot create the weights cache {folder}: {exc.strerror or exc}") from None
    manual = (f"download it by other means from {url} and save it as {target} "
              "(the sha256 must start with the hex after the last '-'); a re-run then uses it")
    try:
        with _socket_timeout(timeout):
            torch.hub.download_url_to_file(url, str(target), hash_prefix=prefix, progress=progress)
    except urllib.error.HTTPError as exc:
        raise WeightsError(f"cannot download {url}: HTTP {exc.code} {exc.reason}; {manual}") from None
    except OSError as exc:  # URLError, timeouts and refused connections are all OSErrors
        reason = getattr(exc, "reason", exc)
        raise WeightsError(f"cannot download {url} ({reason}); no network? {manual}") from None
    except RuntimeError as exc:  # torch.hub's hash check: 'invalid hash value (expected ..., got ...)'
        raise WeightsError(
            f"the download of {file_name} does not match its name: {exc}; expected it to start with {prefix}; "
            f"it was removed and nothing was cached; retry, or {manual}") from None
    digest = sha256_file(target)  # the full digest goes into the ONNX metadata
    log.info("saved %s (sha256 %s)", target, digest)
    return target, digest


# ---------------------------------------------------------------------------------------------- reading

def _raise_unreadable(path: Path, exc: Exception) -> NoReturn:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    raise WeightsError(
        f"{path} is not a readable PyTorch checkpoint (truncated or corrupt download?): {first_line[:300]}"
    ) from None


def read_weights_file(path: str | Path) -> Mapping[str, Any]:
    """An untrusted weights file's dict (tensors and plain containers only), turning failures into WeightsError.

    Raises `pickle.UnpicklingError` (with "can still be loaded") for a complete pickle that holds more than
    tensors: the caller decides whether it may be one of our training checkpoints."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        obj = load_torch_file(path, trusted=False)
    except pickle.UnpicklingError as exc:
        if "can still be loaded" in str(exc):
            raise  # a complete pickle holding more than tensors (e.g. a training checkpoint's RNG state)
        _raise_unreadable(path, exc)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError... for bad files
        _raise_unreadable(path, exc)
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state_dict or checkpoint dict")
    return obj


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


# ---------------------------------------------------------------------------------------------- torchvision

def infer_torchvision_arch(state_dict: Mapping[str, torch.Tensor]) -> str:
    """deeplabv3_resnet50 or _resnet101 from the depth of layer3 (6 or 23 blocks) in a torchvision file;
    the MobileNetV3 models from their head (LR-ASPP's two classifiers) and their features' keys."""
    if "classifier.high_classifier.weight" in state_dict:
        return "lraspp_mobilenet_v3_large"
    if "backbone.0.0.weight" in state_dict and "classifier.4.weight" in state_dict:
        return "deeplabv3_mobilenet_v3_large"
    blocks = {k.split(".")[2] for k in state_dict if k.startswith("backbone.layer3.")}
    depth = {6: "deeplabv3_resnet50", 23: "deeplabv3_resnet101"}.get(len(blocks))
    if depth is None:
        raise WeightsError(
            f"cannot tell the architecture of this state_dict (backbone.layer3 has {len(blocks)} blocks); "
            "pass arch explicitly"
        )
    return depth


def load_torchvision_state_dict(state_dict: Mapping[str, torch.Tensor], arch: str | None = None, *,
                                keep_aux: bool = True, what: str = "state_dict") -> SegmentationModel:
    """Build `arch` with the file's class count and aux head (if any) and load it with strict checking.

    With keep_aux=False the aux head's keys are dropped and the model is built without it, which is what
    inference and export want.
    """
    arch = arch or infer_torchvision_arch(state_dict)
    head = _HEAD_KEYS.get(arch, "classifier.4.weight")
    if head not in state_dict:
        raise WeightsError(f"{what} has no {head}: not a torchvision deeplabv3 layout "
                           f"(first keys: {listing(sorted(state_dict))})")
    num_classes = int(state_dict[head].shape[0])
    has_aux = any(k.startswith("aux_classifier.") for k in state_dict)
    if not keep_aux:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("aux_classifier.")}
    try:
        model = build_model(arch, num_classes, aux_loss=has_aux and keep_aux)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"cannot build {arch}: {exc}") from None
    load_state_dict_checked(model, state_dict, what)
    return model.eval()


# ---------------------------------------------------------------------------------------------- project

def _load_project(path: Path) -> tuple[SegmentationModel, dict[str, Any]]:
    """A training checkpoint, through model_export.checkpoint (the training side owns that format)."""
    try:
        model, meta = load_checkpoint_model(path)
    except CheckpointError as exc:
        raise WeightsError(str(exc).strip().splitlines()[0]) from None
    except RuntimeError:
        # A strict load_state_dict mismatch: explain it key by key instead of torch's wall of text.
        ckpt = read_training_checkpoint(path)
        model = build_model(ckpt["arch"], ckpt["num_classes"], **ckpt.get("model_kwargs", {}))
        load_state_dict_checked(model, ckpt["state_dict"], f"checkpoint {path.name}")
        raise
    info = {**meta, "kind": "project", "sha256": sha256_file(path),
            "source": meta.get("source") or f"checkpoint {path.name}"}
    return model, info


# ---------------------------------------------------------------------------------------------- entry point

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
    except pickle.UnpicklingError:
        return _load_project(path)  # says clearly if it is not one of ours either
    if obj.get("format") is not None or is_project_checkpoint(obj):
        return _load_project(path)
    model = load_torchvision_state_dict(extract_state_dict(obj), arch, keep_aux=keep_aux,
                                        what=f"weights file {path.name}")
    info = {
        "kind": "torchvision", "arch": model.arch, "num_classes": output_classes(model),
        "source": source_url or f"file {path.name}", "sha256": digest or sha256_file(path), "classes": None,
        "input_size": source.input_size if source is not None else None,
    }
    return model, info
