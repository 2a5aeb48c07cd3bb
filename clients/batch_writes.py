"""How `segment` writes a file: under a temporary name, then renamed into place, so that a file of an output's name
is always complete; and the cleanup of the temporary files that a run which ended mid-write left behind."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; see `remove_stale_temps`
    fcntl = None  # type: ignore[assignment]

# Temporary files: short, hidden (never listed as inputs, see `clients.batch_outputs.discover`), and never a finished
# output's name. Each is locked by its writer until renamed into place (see `remove_stale_temps`).
_TEMP_PREFIX, _TEMP_SUFFIX = ".segment-", ".part"


def write_atomic(target: Path, data: bytes) -> None:
    """Write to a temporary file in `target`'s folder, flush to disk, then rename it over `target` (atomic on
    POSIX). The temporary file is removed when anything fails (a process killed meanwhile leaves it: see
    `remove_stale_temps`)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = _new_temp(target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            if fcntl is not None:  # renamed still locked: no cleanup takes it for abandoned before it is in place
                os.replace(temp, target)
        if fcntl is None:  # Windows renames no open file
            os.replace(temp, target)
    except BaseException:  # also a Ctrl-C: no temporary file left behind
        temp.unlink(missing_ok=True)
        raise


def _new_temp(folder: Path) -> tuple[int, Path]:
    """A new temporary file in `folder`, open for writing and locked where the platform can."""
    # A short name of its own rather than the target's plus a suffix, which a legal 251-255-byte name would push
    # past the filesystem's limit. Not tempfile's: its files are mode 0600; outputs get the umask's, as open() does.
    while True:
        temp = folder / f"{_TEMP_PREFIX}{secrets.token_hex(8)}{_TEMP_SUFFIX}"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # another file drew the same 64 random bits: draw again
            continue
        if fcntl is None:
            return fd, temp
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a filesystem without locks, where no cleanup can take a lock, and so removes nothing
            return fd, temp
        if _named(fd, temp):
            return fd, temp
        # Another run's cleanup took it for abandoned between its creation and the lock, and removed it.
        os.close(fd)


def _named(fd: int, path: Path) -> bool:
    """Whether the file open as `fd` is still the one at `path`."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
    except OSError:
        return False


def remove_stale_temps(folders: Iterable[Path]) -> int:
    """Delete the temporary files in `folders` that no process is writing: left by a run that ended mid-write (killed,
    a second Ctrl-C, a crash). Returns how many. A file that cannot be removed is left: it holds nothing anyone
    reads (hidden, and never an output's name), so it must not stop the run."""
    # Its writer holds a lock on each (flock), which the kernel drops when the writer's process ends, however it
    # ends: a file whose lock can be taken has no writer. Not a PID in the name, which another process may own
    # after a reboot or in another container (PID namespace) sharing the folder, and which is meaningless on
    # another host of a network filesystem; nor an age, which a slow write can outlast and which clocks that
    # disagree misjudge, and which would leave the files of a run killed a minute ago.
    if fcntl is None:  # Windows: no flock; its leftovers stay, rather than risk one a live run is writing
        return 0
    removed = 0
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:  # not made yet, or unreadable: nothing of ours there
            continue
        for entry in entries:
            if entry.name.startswith(_TEMP_PREFIX) and entry.name.endswith(_TEMP_SUFFIX) and \
                    entry.is_file(follow_symlinks=False):
                removed += _remove_abandoned(Path(entry.path))
    return removed


def _remove_abandoned(path: Path) -> bool:
    """Delete the temporary file at `path` if no process holds its lock; whether it was deleted."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:  # renamed into place meanwhile, or not ours to read
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not _named(fd, path):  # renamed into place between the listing and the lock
            return False
        path.unlink()  # under the lock: a writer that made the file but had yet to lock it sees it gone
        return True
    except OSError:  # locked (a live writer), or not ours to delete
        return False
    finally:
        os.close(fd)
