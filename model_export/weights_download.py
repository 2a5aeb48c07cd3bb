"""Downloading published weights: torch.hub's downloader with the sha256 prefix of the file name checked, into
torch's hub cache, with a short connect timeout and one readable `WeightsError` per failure."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import torch

from .catalog import CACHE_ENV
from .errors import WeightsError
from .torch_io import sha256_file

log = logging.getLogger(__name__)

# A short socket timeout: with no network we want to fail in seconds, not minutes.
CONNECT_TIMEOUT_S = 10.0
# torch.hub's convention: the sha256 prefix sits between the last '-' and the extension.
_HASH_RE = re.compile(r"-([0-9a-f]{8,64})\.[^.]+$")


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
