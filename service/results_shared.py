"""Recent results shared between worker processes: one file per result in a directory all workers see.

A follow-up `GET /results/{id}` may reach any worker (the kernel hands each new connection to one of them), so
under `SEGMENT_WORKERS` > 1 results live in files rather than in one worker's memory. The worker that stored a
result owns its file: it evicts its own files least recently stored first beyond its share of the byte bound,
and on expiry; any worker reads any file, and one older than the TTL counts as gone.

Files, not a database: a SQLite-backed cache (diskcache) cost 1.2 CPU-ms per stored result on this kind of
host, a plain file write of the same result under 0.2 ms (measured; every `/segment` stores one).
"""

from __future__ import annotations

import os
import pickle
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from cachetools import TTLCache

from .core.outputs.labelmap import LabelMap
from .results_cache import StoredResult

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what new_result_id() makes; anything else is not a file name of ours


class SharedResultsCache:
    """The `ResultsCache` interface (`put`, `get`, `enabled`) over files in `directory`.

    `max_bytes` is this worker's share of the bound; the file contents are this service's own pickles, in a
    directory private to the service (made 0700 by the supervisor)."""

    def __init__(self, directory: Path, ttl_s: float, max_bytes: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.directory, self.ttl_s, self.max_bytes = directory, ttl_s, max_bytes
        self._clock = clock  # wall time: the workers are separate processes
        self._owned: TTLCache[str, int] = TTLCache(maxsize=max(1, max_bytes), ttl=max(ttl_s, 1e-9), timer=clock,
                                                   getsizeof=lambda size: size)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0 and self.max_bytes > 0

    def put(self, result_id: str, labels: np.ndarray | LabelMap, source: bytes) -> bool:
        """Store a result for every worker; False when it is larger than this worker's share (or caching is off)."""
        item = StoredResult(labels.compact() if isinstance(labels, LabelMap) else labels, source, self._clock())
        if not self.enabled or item.nbytes > self.max_bytes:
            return False
        data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        path = self.directory / result_id
        partial = path.with_name(f".{result_id}.partial")
        partial.write_bytes(data)
        os.replace(partial, path)  # readers see the whole file or none
        with self._lock:
            gone = [key for key, _ in self._owned.expire()]
            while self._owned.currsize + len(data) > self._owned.maxsize and self._owned:
                gone.append(self._owned.popitem()[0])  # least recently stored
            self._owned[result_id] = min(len(data), self._owned.maxsize)
        for key in gone:
            (self.directory / key).unlink(missing_ok=True)
        return True

    def get(self, result_id: str) -> StoredResult | None:
        """The result, whichever worker stored it; None when unknown or expired."""
        if not _ID.match(result_id):
            return None
        try:
            data = (self.directory / result_id).read_bytes()
        except OSError:
            return None
        item: StoredResult = pickle.loads(data)  # written by this service, in its private directory
        return item if self._clock() - item.created <= self.ttl_s else None
