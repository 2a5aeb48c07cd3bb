"""The multiprocess metric files of several workers: a dead worker's counts folded into the supervisor's archive,
and the lock that keeps a scrape from reading while that happens.

Every scrape reads every file of the directory (prometheus-client's multiprocess mode), so the files of dead workers
must not pile up (measured: 300 dead workers' files made a scrape 122 ms instead of 5, 3000 made it 1.2 s and
563 MB), yet their counts must not drop out of the totals either.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict

log = logging.getLogger(__name__)

ARCHIVE = "archive"  # the id in the names of the supervisor's files: `counter_archive.db`, ...
# The files whose values are summed over processes, dead ones included (prometheus-client sums counters, histograms,
# summaries and `sum` gauges over every file of their kind, whatever its id).
_SUMMED_KINDS = ("counter", "histogram", "summary", "gauge_sum")
_LOCK_NAME = "fold.lock"  # not `*.db`: the multiprocess collector reads only those


@contextlib.contextmanager
def metrics_files_lock(directory: str | Path | None, exclusive: bool = False) -> Iterator[None]:
    """Held (shared) while a scrape reads `directory`'s files, and (exclusive) while the supervisor folds a dead
    worker's files into the archive. The collector reads one file after another; without the lock, one that ran
    between the archive's replacement and the removal of the dead worker's file counted its values twice (a
    counter that drops back afterwards reads as a reset) or failed on the missing file. No directory: nothing."""
    try:
        handle = open(Path(directory, _LOCK_NAME), "a") if directory is not None else None  # noqa: SIM115
    except OSError:  # a directory not writable here: not the supervisor's, so nothing is folded into it
        handle = None
    if handle is None:
        yield
        return
    with handle:  # flock: released by the kernel should a holder die
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield


def fold_dead_metrics(directory: Path, pid: int) -> None:
    """Fold the metric files of the worker `pid`, which is gone, into the archive, and remove them.

    Counters, histograms, summaries and `sum` gauges are added into one archive file per kind, so totals do not
    drop when a worker dies. Every other gauge file of the worker is removed: `live*` ones (queue depth, requests
    in flight) count live processes only; a dead process's series of an `all` gauge describes nobody; and `max`,
    `min` and `mostrecent` are used here for what a live process holds (`segment_model_info`, max: one value
    across identical workers), which a dead worker no longer does: kept, a dead worker's model would be reported
    for ever beside a replacement that loaded another. A kind that cannot be folded (a file the worker left
    unreadable) keeps its file, still summed by every scrape: a count is never lost nor counted twice."""
    kept: set[Path] = set()
    with metrics_files_lock(directory, exclusive=True):
        for kind in _SUMMED_KINDS:
            dead = directory / f"{kind}_{pid}.db"
            if not dead.exists():
                continue
            try:
                _add_into(directory / f"{kind}_{ARCHIVE}.db", dead)
            except Exception:  # the supervisor must go on supervising
                log.exception("metrics of worker [%s] not folded: %s kept", pid, dead.name)
                kept.add(dead)
        for path in directory.glob(f"*_{pid}.db"):
            if path not in kept:
                path.unlink(missing_ok=True)


def _add_into(archive: Path, dead: Path) -> None:
    """Replace `archive` with a file holding the sums of its and `dead`'s values, key by key. Histograms are
    stored one (non-cumulative) count per bucket, so adding them key by key is right; the newest timestamp of a
    key is kept."""
    totals: dict[str, tuple[float, float]] = {}
    for source in (archive, dead):
        if source.exists():
            for key, value, stamp, _ in MmapedDict.read_all_values_from_file(str(source)):
                total, newest = totals.get(key, (0.0, 0.0))
                totals[key] = (total + value, max(newest, stamp))
    partial = archive.with_name(f".{archive.name}.partial")  # not `*.db` until it is whole
    partial.unlink(missing_ok=True)
    out = MmapedDict(str(partial))
    try:
        for key, (value, stamp) in totals.items():
            out.write_value(key, value, stamp)
    finally:
        out.close()
    os.replace(partial, archive)
