"""Which model file an engine was built from, so that it is never built from two.

An engine opens its file more than once: the main session, its sha256, and (with fixed-shape buckets) one session
per bucket, built during warm-up, seconds to minutes after the first. A file replaced meanwhile (a rollout's
atomic rename, a copy over it) made an engine whose metadata, sha256 and bucket graphs came from different files:
one model's class names on another's labels, measured 7 starts in 8 while the file was flipped. The identity of the
file as first opened (device, inode, size, modification time) is checked at each later opening; a change refuses
the engine (`ModelFileChanged`) rather than mixing the two. Restarting (SIGHUP) loads the new file whole.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .engine_resolve import EngineError


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file, read in chunks (a model is hundreds of MB; about 0.1 s each). model_export hashes
    its weight files with it too (`model_export.torch_io.sha256_file`)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class ModelFileChanged(EngineError):
    """The model file was replaced after the engine first opened it."""


@dataclass(frozen=True)
class ModelFileIdentity:
    """What tells one file at a path from another written there since: an atomic rename changes the inode, a copy
    over it the size or the modification time."""

    device: int
    inode: int
    size: int
    modified_ns: int

    @classmethod
    def of(cls, path: str | Path) -> ModelFileIdentity:
        info = os.stat(path)
        return cls(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)

    def check(self, path: str | Path, step: str) -> None:
        """ModelFileChanged when the file at `path` is no longer this one; `step` says what was about to use it."""
        try:
            now = ModelFileIdentity.of(path)
        except OSError as exc:
            raise ModelFileChanged(f"the model file {path} went away while the engine was built ({step}): {exc}; "
                                   "restart the server (SIGHUP) once the new file is in place", "model_path") from None
        if now != self:
            raise ModelFileChanged(f"the model file {path} was replaced while the engine was built ({step}): an "
                                   "engine is made from one file; restart the server (SIGHUP) to load the new one",
                                   "model_path")
