"""Expired result files that no live process will remove: swept by whichever server process shares the directory.

Each process evicts and expires only the files of its own folder (service/results_shared.py). A folder whose
process is gone for good stays: a single server (`SEGMENT_RESULTS_DIR` set by hand) names its folder by its pid,
so every restart, clean or killed, left the last one's files behind for ever, past their TTL and outside the byte
bound; files written flat in the directory by older versions of the service were never read nor removed either.
A file modified a TTL ago or more holds an expired result for every reader (it is written after its result's
`created`), so removing it is safe whoever owns it; the live owner's own index forgets it at the same moment.
Folders are left: a live process creates its own as it next stores, and an empty one costs nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from .results_files import MTIME_GRACE_S, RESULT_FILE_NAME


def remove_expired_results(directory: Path, ttl_s: float, now: float) -> int:
    """Remove every result file under `directory` (in any process's folder, or flat from older versions) last
    modified at least `ttl_s` + `MTIME_GRACE_S` before `now` (wall time); partial files of writers that died long ago
    too. Returns the bytes removed."""
    removed = 0
    try:
        with os.scandir(directory) as top:
            entries = list(top)
    except OSError:
        return 0
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            removed += _sweep_folder(Path(entry.path), ttl_s, now)
        elif RESULT_FILE_NAME.match(entry.name):  # a flat file of an older version: nothing reads it
            removed += _remove_if_expired(entry, ttl_s, now)
    return removed


def _sweep_folder(folder: Path, ttl_s: float, now: float) -> int:
    removed = 0
    try:
        with os.scandir(folder) as listing:
            for entry in listing:
                # `.<id>.partial`: a write under way, or cut off; one untouched for a TTL is cut off.
                if RESULT_FILE_NAME.match(entry.name.removeprefix(".").removesuffix(".partial")):
                    removed += _remove_if_expired(entry, ttl_s, now)
    except OSError:  # removed meanwhile (the supervisor drops folders no worker holds)
        pass
    return removed


def _remove_if_expired(entry: os.DirEntry[str], ttl_s: float, now: float) -> int:
    try:
        info = entry.stat(follow_symlinks=False)
        if now - info.st_mtime < ttl_s + MTIME_GRACE_S:
            return 0
        os.unlink(entry.path)
    except OSError:  # gone meanwhile: its owner expired or evicted it
        return 0
    return info.st_size
