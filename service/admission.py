"""Admission: who may hold what while a request is served, and the 503 `overloaded` when it is taken.

A /segment request passes two gates, in order:
1. an upload budget, while its body arrives: the declared bytes of bodies still arriving are bounded
   (`upload_buffer_bytes`), so slow or stalled uploads cost a bounded amount of memory and never hold a place in
   the second gate, nor make the server unready;
2. the admission bound, once its body has arrived: at most `max_admitted` requests decoding, queued, running or
   encoding (the bound `/readyz` reports).
A request refused at either gate gets 503 with Retry-After; an upload larger than the whole upload budget, which
no retry would fit, is refused 413 by the body limit instead. The body deadline (service/connection.py) is what
limits how long a body may take to arrive.

`Slots` bounds other expensive work the same way (re-rendering `/results`), and `low_priority_pool` runs it.
"""

from __future__ import annotations

import contextlib
import os
from types import TracebackType
from typing import Protocol

from starlette.datastructures import Headers

from .core.handoff import WorkerThreads
from .errors import ApiError

RETRY = {"Retry-After": "1"}


def overloaded(what: str) -> ApiError:
    """The 503 every gate answers."""
    return ApiError(503, "overloaded", f"{what}; retry shortly", RETRY)


class UploadBudget:
    """Bytes reserved by request bodies that are still arriving."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.reserved = 0

    def reserve(self, nbytes: int) -> int:
        """Reserve `nbytes`, at most the whole budget, or raise 503; returns what it reserved.

        A body declared larger than the whole budget could never fit, and must not be told to retry: the body
        limit, which app.py sets no higher than this budget, refuses it with 413 before it gets here. What comes
        larger is a chunked body's "up to the upload limit": it holds the whole budget, and the body limit
        answers 413 should it grow past that."""
        nbytes = min(nbytes, self.capacity)
        if self.reserved + nbytes > self.capacity:
            raise overloaded(f"too many uploads arriving ({self.reserved} of {self.capacity} bytes reserved)")
        self.reserved += nbytes
        return nbytes

    def release(self, nbytes: int) -> None:
        self.reserved -= nbytes


def declared_length(headers: Headers, max_upload_bytes: int) -> int:
    """What a body may grow to: its Content-Length, or the upload limit when it is chunked."""
    value = headers.get("content-length", "")
    return min(int(value), max_upload_bytes) if value.isdigit() else max_upload_bytes


class Admissible(Protocol):
    """The service state as admission sees it."""

    admitted: int

    @property
    def max_admitted(self) -> int: ...


class Admission:
    """One /segment request's passage: an upload reservation until `admit()`, then a place among the admitted.

    A context manager: leaving it releases whichever it holds."""

    def __init__(self, state: Admissible, uploads: UploadBudget, declared: int) -> None:
        self.state, self.uploads = state, uploads
        self.reserved = uploads.reserve(declared)
        self.admitted = False

    def admit(self) -> None:
        """The body has arrived: give back its upload reservation and take a place, or raise 503."""
        self.uploads.release(self.reserved)
        self.reserved = 0
        if self.state.admitted >= self.state.max_admitted:
            raise overloaded(f"too many requests in progress ({self.state.max_admitted})")
        self.state.admitted += 1
        self.admitted = True

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.uploads.release(self.reserved)
        self.reserved = 0
        if self.admitted:
            self.state.admitted -= 1
            self.admitted = False


class Slots:
    """At most `limit` holders at once; the next one gets 503 rather than a queue (queues hide overload)."""

    def __init__(self, limit: int, what: str) -> None:
        self.limit, self.what, self.held = limit, what, 0

    def __enter__(self) -> Slots:
        if self.held >= self.limit:
            raise overloaded(f"too many {self.what} in progress ({self.limit})")
        self.held += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.held -= 1


RENDER_NICENESS = 10


def _lower_thread_priority() -> None:
    # On Linux, nice applies to the calling thread only (each thread is its own task).
    with contextlib.suppress(OSError, AttributeError):
        os.nice(RENDER_NICENESS)


def low_priority_pool(workers: int, name: str) -> WorkerThreads:
    """Threads at nice +10, for work that must yield the CPU to /segment: a refetch of a huge overlay is a
    convenience and must not double a new request's latency (measured in docs/RELIABILITY.md)."""
    return WorkerThreads(workers, name, initializer=_lower_thread_priority)
