"""The folder the workers of one supervisor share (metric files, results, slots and census), and the sweep of the
folders that servers killed outright left behind.

A supervisor removes its folder when it exits, but one killed with SIGKILL (or by the out-of-memory killer) runs
no cleanup, and its folder, in memory under /dev/shm where it had room, stayed until a reboot: results up to
`SEGMENT_RESULT_CACHE_BYTES` each time. Each folder has a lock file that the supervisor and each of its workers
hold (a shared `flock`) for their whole life; the kernel drops a lock when its holder dies, however it dies. A
server that starts removes the folders nobody holds: never one in use, by a server running beside it or by
workers whose supervisor was killed and which still serve. Two kinds have no lock file to ask, and are removed once
untouched for `GRACE_S` and held by nobody: the folder of a supervisor killed in the moment between making it and
naming its lock file (it holds nothing else), and an earlier release's `segment-XXXXXXXX` folder (below).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

PREFIX = "segment-workers-"
HOLD = "in-use.lock"
METRICS_ROOM = 64 * 1024 * 1024  # prometheus-client's files: a few MB per worker at most
SHM = Path("/dev/shm")
# A folder is named and its lock file named within microseconds of each other; one without its lock this much later
# lost its supervisor in between (a supervisor stopped that long in that moment finds its folder gone, and fails).
GRACE_S = 60.0
MAKING = f".{HOLD}.new"  # the lock file before it has its name
# An earlier release's folders: tempfile's `segment-` and 8 of [a-z0-9_], holding `metrics` and `results` (and
# `slots`, later), and no lock file. Nothing but those is taken for one.
LEGACY = re.compile(r"segment-[a-z0-9_]{8}")
LEGACY_ENTRIES = frozenset({"metrics", "results", "slots"})


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
    with open(folder / MAKING, "wb") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)
        os.rename(folder / MAKING, folder / HOLD)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def sweep(parent: Path) -> list[Path]:
    """Remove the folders in `parent` that no live process holds; those removed."""
    removed = []
    for folder in parent.glob("segment-*"):
        if folder.name.startswith(PREFIX):
            gone = _sweep_held(folder)
        elif LEGACY.fullmatch(folder.name):
            gone = _sweep_legacy(folder)
        else:
            continue
        if gone:
            log.warning("removed %s, left by a server that is gone", folder)
            removed.append(folder)
    return removed


def _sweep_held(folder: Path) -> bool:
    """Remove `folder` if no live process holds its lock file, or if it has none and was left while being made."""
    try:
        handle = open(folder / HOLD, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:  # being made now (its lock not named yet), or its supervisor was killed then
        if not _untouched(folder, {MAKING}) or _locked(folder / MAKING):
            return False
        shutil.rmtree(folder, ignore_errors=True)
        return True
    except OSError:  # another user's
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # in use
            return False
        shutil.rmtree(folder, ignore_errors=True)
    return True


def _sweep_legacy(folder: Path) -> bool:
    """Remove an earlier release's `folder` (no lock file) once nothing in it has changed for `GRACE_S` and no
    process has a file of it open for writing."""
    if not (_untouched(folder, LEGACY_ENTRIES, needed={"metrics", "results"}) and _written_by_nobody(folder)):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True


def _locked(path: Path) -> bool:
    """Whether a live process holds `path` locked (False: there is no such file)."""
    try:
        with open(path, "rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except FileNotFoundError:
        return False
    except OSError:  # BlockingIOError: held; another error: it cannot tell, so held
        return True
    return False


def _untouched(folder: Path, allowed: set[str] | frozenset[str], needed: set[str] | None = None) -> bool:
    """Whether `folder` is this user's own directory, holding only `allowed` entries (`needed` among them), in
    which nothing (nor in any folder under it) has been added, removed or renamed for `GRACE_S`."""
    try:
        info = folder.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            return False
        names = set(os.listdir(folder))
        if not names <= allowed or not (needed or set()) <= names:
            return False
        newest = max(Path(top).lstat().st_mtime for top, _, _ in os.walk(folder))
    except OSError:  # gone meanwhile, or not ours to read
        return False
    return time.time() - newest > GRACE_S


def _written_by_nobody(folder: Path) -> bool:
    """Whether no process, on this host, has a file of `folder` open for writing. An earlier release's workers held
    their metric files (and slot files) so for their whole life, and it had no lock file: a read lease, which the
    kernel refuses while any process has the file open for writing, asks (and sees every process that shares the
    filesystem, whatever its namespaces). Each lease is released at once."""
    if threading.current_thread() is not threading.main_thread():
        return False  # SIGIO (a lease broken meanwhile) could not be ignored here, and its default ends the process
    with _sigio_ignored():  # a lease broken meanwhile (the file opened for writing) signals its holder: not fatal
        return all(_no_writer(path) for path in folder.rglob("*"))


def _no_writer(path: Path) -> bool:
    """Whether `path` (a regular file; anything else passes) is open for writing by no process."""
    try:
        if not path.is_file() or path.is_symlink():
            return True
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.fcntl(descriptor, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        fcntl.fcntl(descriptor, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    except OSError:  # EAGAIN: open for writing; another error: the filesystem cannot tell, so in use
        return False
    finally:
        os.close(descriptor)
    return True


@contextlib.contextmanager
def _sigio_ignored() -> Iterator[None]:
    """SIGIO ignored (its default ends the process); the main thread only."""
    previous = signal.getsignal(signal.SIGIO)
    signal.signal(signal.SIGIO, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGIO, previous if previous is not None else signal.SIG_DFL)
