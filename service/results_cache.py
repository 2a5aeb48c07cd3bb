"""Recent results kept for `GET /results/{id}/...`: a TTL cache bounded in bytes, oldest evicted first."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .outputs.labelmap import LabelMap


@dataclass(frozen=True)
class StoredResult:
    """A label map at original size (or a `LabelMap`: the model's map and its way back to that size, ~10x
    smaller) and the encoded upload it came from (decoded again for an overlay).

    Keeping the upload's bytes rather than its decoded pixels costs ~10-20x less memory for JPEGs, and lets
    `/segment` decode a reduced image when it does not need the full-resolution one.
    """

    labels: np.ndarray | LabelMap
    source: bytes
    created: float

    @property
    def nbytes(self) -> int:
        return int(self.labels.nbytes + len(self.source))


def new_result_id() -> str:
    """A random, unguessable id (128 bits, URL-safe)."""
    return secrets.token_urlsafe(16)


class ResultsCache:
    """Thread-safe TTL + byte-bounded cache. Arrays are stored as-is (no copy); treat them as read-only."""

    def __init__(self, ttl_s: float, max_bytes: int, clock=time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._clock = clock
        self._items: OrderedDict[str, StoredResult] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0 and self.max_bytes > 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def put(self, result_id: str, labels: np.ndarray | LabelMap, source: bytes) -> bool:
        """Store a result; False when it is larger than the whole cache (or the cache is off)."""
        item = StoredResult(labels, source, self._clock())
        if not self.enabled or item.nbytes > self.max_bytes:
            return False
        with self._lock:
            self._expire()
            old = self._items.pop(result_id, None)
            if old is not None:
                self._bytes -= old.nbytes
            while self._items and self._bytes + item.nbytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes
            self._items[result_id] = item
            self._bytes += item.nbytes
        return True

    def get(self, result_id: str) -> StoredResult | None:
        """The result, or None when unknown or expired."""
        with self._lock:
            self._expire()
            return self._items.get(result_id)

    def _expire(self) -> None:
        # Insertion order is creation order, so expired entries are at the front.
        cutoff = self._clock() - self.ttl_s
        while self._items:
            key, item = next(iter(self._items.items()))
            if item.created > cutoff:
                break
            del self._items[key]
            self._bytes -= item.nbytes
