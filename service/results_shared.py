"""Recent results shared between worker processes: one file per result in a directory all workers see.

A follow-up `GET /results/{id}` may reach any worker (the kernel hands each new connection to one of them), so
under `SEGMENT_WORKERS` > 1 results live in files rather than in one worker's memory. The worker that stored a
result owns its file, in the folder of its slot (`slot-N`, service/worker_slots.py): it evicts its own files least
recently stored first to make room within its share of the byte bound before it writes one (the folder never holds
more, even for a moment), and on expiry; any worker reads any file, and one older than the TTL counts as gone.
The share is the bound divided by the number of workers the supervisor keeps now (`follow`): SIGTTIN and SIGTTOU
change that number, and a share fixed at start let more workers hold more than the bound, and fewer less.
A worker that is gone (killed, restarted, stopped by the watchdog) leaves its files where they are, readable by
the others, and its replacement, which takes its slot, adopts them as it starts (`_adopt`): the clients hold
their ids, and the TTL has not passed. Named by pid, a folder went with its worker and every result in it was a
404 from then on. What a process gone for good leaves (a single server's folder is its pid's) is removed once
expired by the others, as they start and now and then as they store (service/results_sweep.py). The supervisor
removes a slot's folder once no worker holds that slot any more (SIGTTOU, a worker moved down a slot,
`remove_unkept_results`), and the whole directory as it stops.

Every `/segment` stores one, in its encode job (off the event loop). Files, not a database, and written with
the arrays' and the upload's own bytes rather than a pickled copy of them (pickle protocol 5's out-of-band
buffers): for a 513x385 label map and a 133 KB upload, on /dev/shm, a SQLite-backed cache (diskcache) took 1.1
CPU-ms per stored result, one pickled file 0.45, this layout 0.22-0.25 (medians of 400, two runs).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from cachetools import TTLCache

from .core.outputs.labelmap import LabelMap
from .results_cache import ResultStore, StoredResult
from .results_files import MTIME_GRACE_S, PREFIX_BYTES, RESULT_FILE_NAME, deserialised, owner_of, serialised
from .results_sweep import remove_expired_results

log = logging.getLogger(__name__)
_SLOT = re.compile(r"slot-[0-9]+")  # a slot's folder (`slot_folder`)


def slot_folder(slot: int) -> str:
    """The name of the folder of the results stored by the worker on `slot` (and by its replacements)."""
    return f"slot-{slot}"


class SharedResultsCache(ResultStore):
    """The `ResultsCache` interface (`put`, `get`, `enabled`) over files in `directory`.

    `max_bytes` is this worker's share of the bound; the file contents are this service's own pickles, in a
    directory private to the service (made 0700 by the supervisor). `owner`: the folder of this worker's files,
    its slot's (`slot_folder`; default: its pid). The files already there are adopted (`_adopt`)."""

    def __init__(self, directory: Path, ttl_s: float, max_bytes: int,
                 clock: Callable[[], float] = time.time,  # wall time: the workers are separate processes
                 owner: str | None = None) -> None:
        super().__init__(ttl_s, max_bytes, clock)
        self.directory = directory
        self._own = directory / (owner or str(os.getpid()))
        # No size bound of its own (`put` evicts, and unlinks the files; TTLCache would drop entries silently): the
        # share may grow with fewer workers.
        self._stored_at: float | None = None  # the time of an adopted file, as it is indexed (`_now`)
        self._owned: TTLCache[str, int] = TTLCache(maxsize=sys.maxsize, ttl=max(ttl_s, 1e-9), timer=self._now,
                                                   getsizeof=lambda size: size)
        self._writing = 0  # bytes of the files being written now, already counted against the share
        self._room = threading.Condition(self._lock)  # a store waits on it for room held by files being written
        self._total: int | None = None
        self._workers: Callable[[], int | None] = lambda: None
        self._adopt()
        self._swept = self._clock()
        remove_expired_results(directory, ttl_s, self._swept)  # what processes gone for good left (results_sweep)

    def _now(self) -> float:
        """The TTL index's clock: an entry expires a TTL after it is inserted, and an adopted file's is its own
        time of storing, not the adoption's (it would otherwise live up to twice the TTL)."""
        return self._clock() if self._stored_at is None else self._stored_at

    def _adopt(self) -> None:
        """Index the files already in this worker's folder, its slot predecessor's (killed, restarted), least
        recently stored first, by their times and sizes; remove those past the TTL and the partial files of writes
        cut off; then evict down to the share, so the folder holds no more than it from the start. No other live
        process writes this folder meanwhile: a worker holds its slot's lock (`worker_slots.hold_slot`) before it
        builds its cache, and the kernel grants it to one live process at a time."""
        now, found = self._clock(), list[tuple[float, int, str]]()
        try:
            with os.scandir(self._own) as listing:
                entries = list(listing)
        except OSError:  # no folder: nothing was stored on this slot (or it was removed)
            return
        for entry in entries:
            if entry.name.startswith("."):  # a `.partial` file: its writer died before renaming it into place
                Path(entry.path).unlink(missing_ok=True)
                continue
            try:
                info = entry.stat()
            except OSError:  # trimmed by the supervisor meanwhile
                continue
            if not RESULT_FILE_NAME.match(entry.name):
                continue
            if now - info.st_mtime >= self.ttl_s:  # written after its result's `created`: expired by then too
                Path(entry.path).unlink(missing_ok=True)
            else:
                found.append((info.st_mtime, info.st_size, entry.name))
        with self._lock:
            try:
                for stored, size, key in sorted(found):
                    self._stored_at = stored
                    self._owned[key] = size
            finally:
                self._stored_at = None
            with self._owned.timer as now:
                gone = [key for key, _ in self._owned.expire(now)]
                while self._owned.currsize > self.max_bytes and self._owned:
                    gone.append(self._owned.popitem()[0])  # least recently stored
        self._unlink(gone)

    def follow(self, total_bytes: int, workers: Callable[[], int | None]) -> None:
        """Take `total_bytes` divided by `workers()` as this worker's share from now on, asked at every store
        (None: keep the share as it is). Where the number grew, the next store evicts down to the smaller share."""
        self._total, self._workers = total_bytes, workers

    def put(self, result_id: str, labels: np.ndarray | LabelMap, source: bytes, owner: bytes | None = None,
            model_sha256: str | None = None) -> bool:
        """Store a result for every worker; False when it is larger than this worker's share (or caching is off)."""
        if self._total is not None and (count := self._workers()):
            self.max_bytes = self._total // count
        item = self._to_keep(labels, source, owner, model_sha256)
        if item is None:
            return False
        parts = serialised(item)
        size = sum(len(part) for part in parts)
        if size > self.max_bytes:  # the file, header and pickle included, is what the bound counts
            return False
        with self._room:
            if not self._reserve(size):
                return False
        self._sweep_now_and_then()
        kept = False
        try:
            kept = self._write(result_id, parts, size)
        finally:
            with self._room:
                self._writing -= size
                if kept:
                    with self._owned.timer as now:
                        self._unlink([key for key, _ in self._owned.expire(now)])
                        self._owned[result_id] = size
                self._room.notify_all()  # its bytes are now evictable (or free): a store waiting for room looks again
        return kept

    def _sweep_now_and_then(self) -> None:
        """Remove the expired files of processes gone for good (`remove_expired_results`), at most every half TTL
        (and 10 s): a listing of every folder costs more than a store."""
        now = self._clock()
        with self._lock:
            if now - self._swept < max(self.ttl_s / 2, 10.0):
                return
            self._swept = now
        remove_expired_results(self.directory, self.ttl_s, now)

    def _reserve(self, size: int) -> bool:
        """Make room for `size` bytes and count them as being written; the caller holds the lock. False when they
        cannot fit even with nothing else in the folder (a share another store has just shrunk).

        Room is made before the file is written, and the evicted files removed before the lock is let go: written
        first and evicted after, each codec thread storing at that moment held one result beyond the share. Files
        being written are not in `_owned` (nothing evicts them half-written); a store that needs their bytes waits
        for them to finish."""
        while True:
            # One instant for the whole update: each TTLCache call otherwise expires entries afresh at its own time
            # and drops them without a word, and a file dropped so stays on disk, past its TTL and beyond the bound.
            with self._owned.timer as now:
                gone = [key for key, _ in self._owned.expire(now)]
                while self._owned.currsize + self._writing + size > self.max_bytes and self._owned:
                    gone.append(self._owned.popitem()[0])  # least recently stored
                fits = self._owned.currsize + self._writing + size <= self.max_bytes  # (`currsize` expires too)
            self._unlink(gone)
            if fits:
                self._writing += size
                return True
            if not self._writing:
                return False
            self._room.wait()

    def _write(self, result_id: str, parts: list[bytes | memoryview], size: int) -> bool:
        """Write the result's file whole (readers see all of it or none); False when the file system refuses."""
        path = self._own / result_id
        partial = path.with_name(f".{result_id}.partial")
        try:
            self._own.mkdir(exist_ok=True)  # here, not at start: the folder of a worker that never stores stays away
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                if os.writev(fd, parts) != size:
                    raise OSError(f"short write to {partial}")
            finally:
                os.close(fd)
            os.replace(partial, path)
        except OSError as exc:  # e.g. /dev/shm full: the answer itself must not fail for it
            log.warning("result %s not kept for /results: %s", result_id, exc)
            partial.unlink(missing_ok=True)
            return False
        return True

    def _unlink(self, keys: list[str]) -> None:
        for key in keys:
            (self._own / key).unlink(missing_ok=True)

    def kept_for(self, result_id: object, owner: bytes | None) -> bool:
        """Whether some worker's file holds the result, stored for `owner`: by the file's metadata and its first
        bytes alone (`owner_of`; cheap enough for the event loop, where a `get` reads the whole file, the upload
        included). A file is written after its result's `created`, so one modified a TTL ago or more holds an
        expired result; a second's grace, as file times lag the clock by up to a tick (`get` then decides at the
        exact TTL)."""
        if not isinstance(result_id, str) or not RESULT_FILE_NAME.match(result_id):
            return False
        for folder in _owners(self.directory):
            try:
                with open(self.directory / folder / result_id, "rb") as file:
                    modified, head = os.fstat(file.fileno()).st_mtime, file.read(PREFIX_BYTES)
            except OSError:
                continue
            return self._clock() - modified < self.ttl_s + MTIME_GRACE_S and owner_of(head) == owner
        return False

    def get(self, result_id: str) -> StoredResult | None:
        """The result, whichever worker stored it; None when unknown or expired."""
        if not RESULT_FILE_NAME.match(result_id):
            return None
        for owner in _owners(self.directory):
            try:
                data = (self.directory / owner / result_id).read_bytes()
            except OSError:  # not this worker's; or removed meanwhile (evicted, or its worker gone): unknown
                continue
            item = deserialised(data)  # whole: a file is renamed into place complete, and unlinking keeps it whole
            return item if self._clock() - item.created < self.ttl_s else None  # gone at the TTL, as in memory
        return None


def remove_unkept_results(directory: Path, slots: Iterable[int]) -> list[str]:
    """Remove the folders of the slots not in `slots`, those the supervisor keeps (the supervisor calls this):
    no worker will adopt them, and they would stay, past their TTL and beyond the bound, until it exits. A reader
    that races it reads a file whole or finds nothing (a 404), never part of one. Returns the folders removed."""
    kept = {slot_folder(slot) for slot in slots}
    removed = [owner for owner in _owners(directory) if _SLOT.fullmatch(owner) and owner not in kept]
    for owner in removed:
        shutil.rmtree(directory / owner, ignore_errors=True)
    return removed


def trim_worker_results(directory: Path, share: int) -> int:
    """Remove each worker's oldest files beyond `share` bytes (the supervisor calls this when the share shrinks,
    as a worker is added: a worker evicts on its own only when it next stores, and one that stores nothing for a
    while would hold its larger share meanwhile). Returns the bytes removed. The owner's own bookkeeping still
    counts a file removed here until it evicts that entry, oldest first as here: it keeps less, never more."""
    removed = 0
    for owner in _owners(directory):
        sizes: list[tuple[float, int, Path]] = []
        try:
            with os.scandir(directory / owner) as entries:
                for entry in entries:
                    if not entry.name.startswith("."):  # a partial file is its writer's to finish or remove
                        try:
                            stat = entry.stat()
                        except FileNotFoundError:  # evicted by its owner since the listing: the rest still counts
                            continue
                        sizes.append((stat.st_mtime, stat.st_size, Path(entry.path)))
        except OSError:  # removed meanwhile (its worker gone), or not a folder
            continue
        held = sum(size for _, size, _ in sizes)
        for _, size, path in sorted(sizes):
            if held <= share:
                break
            path.unlink(missing_ok=True)
            held -= size
            removed += size
    return removed


def _owners(directory: Path) -> list[str]:
    """The folders of the workers that stored results: one per worker, so listing them is cheap."""
    try:
        return os.listdir(directory)
    except OSError:
        return []
