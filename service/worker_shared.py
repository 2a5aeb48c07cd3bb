"""The folder the workers of one supervisor share (metric files, results, slots and census), and the sweep of the
folders that servers killed outright left behind.

A supervisor removes its folder when it exits, but one killed with SIGKILL (or by the out-of-memory killer) runs
no cleanup, and its folder, in memory under /dev/shm where it had room, stayed until a reboot: results up to
`SEGMENT_RESULT_CACHE_BYTES` each time. Each folder has a lock file that the supervisor and each of its workers
hold (a shared `flock`) for their whole life; the kernel drops a lock when its holder dies, however it dies. A
server that starts removes the folders nobody holds: never one in use, by a server running beside it or by
workers whose supervisor was killed and which still serve.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

PREFIX = "segment-workers-"
HOLD = "in-use.lock"
METRICS_ROOM = 64 * 1024 * 1024  # prometheus-client's files: a few MB per worker at most
SHM = Path("/dev/shm")


def shared_parent(room: int) -> str | None:
    """Where the workers' shared files go: /dev/shm (memory; every /segment writes its result there) when it has
    `room` free, else the temporary directory (None). A container's /dev/shm is often 64 MB, too small for the
    default result cache."""
    try:
        if os.access(SHM, os.W_OK) and shutil.disk_usage(SHM).free >= room:
            return str(SHM)
    except OSError:
        pass
    return None


def hold(folder: Path) -> IO[bytes]:
    """Hold `folder` in use for as long as the handle stays open (a supervisor's, or one of its workers')."""
    handle = open(folder / HOLD, "rb")  # noqa: SIM115 - held open on purpose
    fcntl.flock(handle, fcntl.LOCK_SH)  # shared: never blocks, only a sweep's exclusive try would
    return handle


@contextlib.contextmanager
def shared_folder(room: int) -> Iterator[Path]:
    """A new private folder (0700) for one server's shared files, held while the context runs and removed after
    it; the folders of servers that are gone are swept first, from both places a folder may be."""
    for parent in {str(SHM), tempfile.gettempdir()}:
        sweep(Path(parent))
    folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir=shared_parent(room)))
    # Locked before it has its name: a sweep never finds the lock file of a live folder unlocked.
    with open(folder / f".{HOLD}.new", "wb") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)
        os.rename(folder / f".{HOLD}.new", folder / HOLD)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def sweep(parent: Path) -> list[Path]:
    """Remove the folders in `parent` that no live process holds; those removed."""
    removed = []
    for folder in parent.glob(f"{PREFIX}*"):
        try:
            handle = open(folder / HOLD, "rb")  # noqa: SIM115 - closed below
        except OSError:  # still being made (not named yet), or another user's
            continue
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # in use
                continue
            shutil.rmtree(folder, ignore_errors=True)
        log.warning("removed %s, left by a server that is gone", folder)
        removed.append(folder)
    return removed
