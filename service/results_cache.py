"""Recent results kept for `GET /results/{id}/...`: what a store of them offers, and the in-memory one (a TTL cache
bounded in bytes, cachetools)."""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from cachetools import TTLCache

from .core.outputs.labelmap import LabelMap


@dataclass(frozen=True)
class StoredResult:
    """A label map at original size (or a `LabelMap`: the model's map and its way back to that size, ~10x
    smaller for a large upload; whichever is smaller is kept) and the encoded upload it came from (decoded again
    for an overlay).

    Keeping the upload's bytes rather than its decoded pixels costs ~10-20x less memory for JPEGs, and lets
    `/segment` decode a reduced image when it does not need the full-resolution one.
    """

    labels: np.ndarray | LabelMap
    source: bytes
    created: float
    # The fingerprint of the API key that stored it (service/middleware.py `key_fingerprint`): only that key reads
    # it back. None where the service has no keys: anyone holding the id reads it.
    owner: bytes | None = None
    # The hex sha256 of the model file that made `labels` (`Engine.sha256`): a refetch re-renders with the running
    # model's classes and palette, wrong for another model's labels. None: not recorded (a file of an older layout).
    model_sha256: str | None = None

    @property
    def nbytes(self) -> int:
        return int(self.labels.nbytes + len(self.source))


def bare(labels: np.ndarray | LabelMap) -> np.ndarray | LabelMap:
    """`labels` without what was computed from it and cached on it (`LabelMap.full`, `counts`, `used_lines`).

    A render caches the full-size map on the `LabelMap` it was given (an overlay's: 12 MB for a 12 MP upload),
    which the byte bound, counting the map's fields only, never sees: kept, or rendered again from the cache, the
    store held many times its bound. A new `LabelMap` over the same arrays costs nothing."""
    return dataclasses.replace(labels) if isinstance(labels, LabelMap) else labels


def new_result_id() -> str:
    """A random, unguessable id (128 bits, URL-safe)."""
    return secrets.token_urlsafe(16)


class ResultStore(ABC):
    """What `/segment` and `/results` need of a store of recent results: `put`, `get`, a TTL and a byte bound."""

    def __init__(self, ttl_s: float, max_bytes: int, clock: Callable[[], float]) -> None:
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0 and self.max_bytes > 0

    def _to_keep(self, labels: np.ndarray | LabelMap, source: bytes, owner: bytes | None,
                 model_sha256: str | None = None) -> StoredResult | None:
        """The result in the form kept, or None when it cannot be (larger than the bound, or the store is off)."""
        item = StoredResult(bare(labels.compact() if isinstance(labels, LabelMap) else labels), source, self._clock(),
                            owner, model_sha256)
        return item if self.enabled and item.nbytes <= self.max_bytes else None

    @abstractmethod
    def put(self, result_id: str, labels: np.ndarray | LabelMap, source: bytes, owner: bytes | None = None,
            model_sha256: str | None = None) -> bool:
        """Store a result for `owner` (a key's fingerprint, or None), made by the model file of `model_sha256`;
        False when it is not kept."""

    @abstractmethod
    def get(self, result_id: str) -> StoredResult | None:
        """The result, or None when unknown or expired."""

    @abstractmethod
    def kept_for(self, result_id: object, owner: bytes | None) -> bool:
        """Whether a result is kept for `owner` (a key's fingerprint, or None), asked cheaply (no read of the whole
        result): False is certain, and for a result another key stored; True may be gone by the time it is read
        (`get`)."""


class ResultsCache(ResultStore):
    """`cachetools.TTLCache` sized in bytes (`getsizeof`), behind a lock (cachetools is not thread-safe).

    Arrays are stored as-is (no copy); treat them as read-only. `get` hands out a `bare` view of a label map, so
    that what a render caches on it goes with the render. When the byte bound is reached the least recently used
    result goes first; expired results are dropped on every access.
    """

    def __init__(self, ttl_s: float, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(ttl_s, max_bytes, clock)
        self._items: TTLCache[str, StoredResult] = TTLCache(
            maxsize=max(1, max_bytes), ttl=ttl_s, timer=clock, getsizeof=lambda item: item.nbytes)

    @property
    def nbytes(self) -> int:
        with self._lock:
            self._items.expire()
            return int(self._items.currsize)

    def __len__(self) -> int:
        with self._lock:
            self._items.expire()
            return len(self._items)

    def put(self, result_id: str, labels: np.ndarray | LabelMap, source: bytes, owner: bytes | None = None,
            model_sha256: str | None = None) -> bool:
        """Store a result; False when it is larger than the whole cache (or the cache is off)."""
        item = self._to_keep(labels, source, owner, model_sha256)
        if item is None:
            return False  # TTLCache would raise ValueError("value too large")
        with self._lock:
            self._items[result_id] = item  # expires old entries, then evicts LRU ones until it fits
        return True

    def kept_for(self, result_id: object, owner: bytes | None) -> bool:
        with self._lock:
            item = self._items.get(result_id)  # None for an expired one (TTLCache checks its time)
        return item is not None and item.owner == owner

    def get(self, result_id: str) -> StoredResult | None:
        """The result, or None when unknown or expired."""
        with self._lock:
            self._items.expire()
            item = self._items.get(result_id)
        return None if item is None else dataclasses.replace(item, labels=bare(item.labels))
