"""Admission: who may hold what while a request is served, and the 503 `overloaded` when it is taken.

A /segment request passes two gates, in order:
1. an upload budget, while its body arrives: the bytes received of bodies still arriving are bounded
   (`upload_buffer_bytes`), reserved as they arrive, so slow or stalled uploads cost the memory they really hold and
   no more, and never hold a place in the second gate, nor make the server unready. A declared size is not
   reserved (a connection that declares 20 MiB and sends nothing holds nothing: 26 such connections took the whole
   512 MiB and every other upload was refused 503); it is refused 503 before reading only when the bytes already
   held leave no room for it, and a body that grows past the room left is refused 503 as it arrives, with
   `Connection: close` (the rest of it is not read);
2. admission, once its body has arrived: at most `max_admitted` requests decoding, queued, running or encoding;
   no more on their way to the inference queue (waiting for or in their decode) than it has places left, so that
   none is refused by a full queue after paying for its decode; and room in the request memory budget for its
   upload (service/request_memory.py), in which its decode then reserves the image it keeps, before decoding.
A `bulk` request (service/batch_line.py) is admitted at the second gate only while its share of the queue's places
(`SEGMENT_BULK_QUEUE_SHARE`, counting every priority) is not taken, and as many places in progress as the queue keeps
are free besides, so that the rest is kept for interactive requests: a bulk backlog never refuses them. The same
share bounds what bulk bodies may hold of the upload budget, at the first gate, and of the request memory
(service/request_memory.py). Refused, a bulk request gets 503 `bulk_overloaded`, which says interactive requests
are still taken.
A request refused at either gate gets 503 with Retry-After (`/readyz` says `overloaded` while the second refuses);
an upload larger than the whole upload budget, which no retry would fit, is refused 413 by the body limit instead
(from its Content-Length up front, or as a chunked body grows past it).
The body deadline (service/connection.py) is what limits how long a body may take to arrive, and so what a client
must spend to hold the budget: to keep S bytes held it must send them, and it keeps them `body_timeout_s +
S / body_min_rate` seconds at most (docs/RELIABILITY.md has the figures).

`Slots` bounds other expensive work the same way (re-rendering `/results`), and `low_priority_pool` runs it.
"""

from __future__ import annotations

import contextlib
import os
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from starlette.datastructures import Headers

from .core.handoff import WorkerThreads
from .core.priorities import BulkBytes
from .errors import ApiError

if TYPE_CHECKING:
    from .request_memory import Hold, RequestMemory

RETRY = {"Retry-After": "1"}


# What a bulk request alone too large for its share of a budget can do (its key may be what makes it bulk).
AS_INTERACTIVE = ("send it as an interactive request (an offline job's API key makes every request bulk: use "
                  "another key)")


def overloaded(what: str) -> ApiError:
    """The 503 every gate answers."""
    return ApiError(503, "overloaded", f"{what}; retry shortly", RETRY)


def bulk_overloaded(what: str) -> ApiError:
    """The 503 of a bulk request refused to keep room for interactive ones."""
    return ApiError(503, "bulk_overloaded", f"{what}, the rest is kept for interactive requests; retry later",
                    RETRY)


class UploadBudget:
    """Bytes of request bodies still arriving, reserved as they arrive (never on a declared size alone). Bulk
    requests' bodies may hold only `bulk_share` of it together, as they may of the queue."""

    def __init__(self, capacity: int, bulk_share: float = 1.0) -> None:
        self.capacity = capacity
        self.reserved = 0
        self.bulk = BulkBytes(capacity, bulk_share)

    def room_for(self, declared: int, bulk: bool = False) -> None:
        """503 before reading when the bytes already held leave no room for a body of `declared` bytes: it would be
        refused as it arrives, after spending its bandwidth. Nothing is reserved (a declared size costs nothing
        until its bytes come). One larger than the whole budget never gets here: the body limit answers 413."""
        if self.reserved + declared > self.capacity:
            raise self._full(declared)
        if bulk:
            self._check_bulk(declared, 0)

    def reserve(self, nbytes: int, bulk: bool = False, own: int = 0) -> int:
        """Reserve `nbytes` (bytes that have arrived) for a body that holds `own` already, at most the whole budget,
        or raise 503; returns what it reserved. A body never grows past the whole budget here: the body limit, which
        app.py sets no higher than it, answers 413 first."""
        nbytes = min(nbytes, self.capacity)
        if self.reserved + nbytes > self.capacity:
            raise self._full(nbytes)
        if bulk:
            self._check_bulk(nbytes, own)
        self.reserved += nbytes
        if bulk:
            self.bulk.held += nbytes
        return nbytes

    def release(self, nbytes: int, bulk: bool = False) -> None:
        self.reserved -= nbytes
        if bulk:
            self.bulk.held -= nbytes

    def _check_bulk(self, nbytes: int, own: int) -> None:
        """413 for a bulk body that alone outgrows the bulk share (no retry would fit), 503 `bulk_overloaded` when
        the bulk bodies' share has no room for `nbytes` more."""
        refusal = self.bulk.refusal(nbytes, own)
        if refusal == "too_large":
            raise ApiError(413, "payload_too_large", f"a bulk upload may hold at most {self.bulk.capacity} bytes of "
                           f"the upload buffer; {AS_INTERACTIVE}")
        if refusal == "full":
            raise bulk_overloaded(f"bulk uploads arriving hold their share of the upload buffer ({self.bulk.held} "
                                  f"of {self.bulk.capacity} bytes, {nbytes} more needed)")

    def _full(self, nbytes: int) -> ApiError:
        return overloaded(f"too many uploads arriving ({self.reserved} of {self.capacity} bytes held, "
                          f"{nbytes} more needed)")


def declared_length(headers: Headers) -> int | None:
    """The body's Content-Length, or None when it has none (chunked: it says nothing of its size)."""
    value = headers.get("content-length", "")
    return int(value) if value.isdigit() else None


class Admissible(Protocol):
    """The service state as admission sees it."""

    admitted: int  # requests between admission and answer
    on_the_way: int  # admitted requests not yet in the inference queue (waiting for or in their decode)
    memory: RequestMemory

    @property
    def max_admitted(self) -> int: ...

    @property
    def bulk_max_admitted(self) -> int: ...

    def queue_places(self, bulk: bool = False) -> int:
        """Places for requests on their way to the inference queue; for a bulk one, those beyond what is kept for
        interactive requests (service/state.py)."""
        ...


class Admission:
    """One /segment request's passage: an upload reservation, grown as its body arrives (`arrived`), until
    `admit()`; then a place among the admitted, a place on the way to the inference queue until `queued()`, and a
    share of the request memory (`hold`).

    A context manager: leaving it releases whichever it holds (the memory share unless `hand_over()` took it)."""

    def __init__(self, state: Admissible, uploads: UploadBudget, declared: int | None, bulk: bool = False) -> None:
        self.state, self.uploads, self.bulk = state, uploads, bulk
        if declared:
            uploads.room_for(declared, bulk)
        self.reserved = 0
        self.admitted = self.on_the_way = False
        self.hold: Hold | None = None

    def arrived(self, nbytes: int) -> None:
        """`nbytes` more of the body have been received: reserve them, or raise 503 with `Connection: close`, since
        the rest of the body will not be read (RFC 9112 9.6)."""
        try:
            self.reserved += self.uploads.reserve(nbytes, self.bulk, self.reserved)
        except ApiError as exc:
            exc.headers = {**exc.headers, "Connection": "close"}
            raise

    def admit(self, upload_bytes: int) -> None:
        """The body (`upload_bytes`) has arrived: give back its upload reservation, take a place and hold the
        upload in the request memory, or raise 503 (413 for an upload larger than all of that memory). A bulk
        request takes a place only within the bulk share (503 `bulk_overloaded`)."""
        self.uploads.release(self.reserved, self.bulk)
        self.reserved = 0
        state, bulk = self.state, self.bulk
        if state.admitted >= state.max_admitted:
            raise overloaded(f"too many requests in progress ({state.max_admitted})")
        if bulk and state.admitted >= state.bulk_max_admitted:
            raise bulk_overloaded(f"bulk requests may find {state.bulk_max_admitted} of the {state.max_admitted} "
                                  f"places in progress taken ({state.admitted} are)")
        # Decoded only when the queue will have a place for it: refused by a full queue after its decode, it would
        # have paid for that decode for nothing (with a queue of 4, 157 of 210 refusals were after the decode).
        # A place taken by a decode in progress is free again as soon as a batch takes images from the queue.
        places = state.queue_places()
        if state.on_the_way >= places:
            raise overloaded(f"no place left in the inference queue ({state.on_the_way} requests being decoded "
                             f"for the {max(places, 0)} free)")
        if bulk and state.on_the_way >= (bulk_places := state.queue_places(bulk=True)):
            raise bulk_overloaded(f"no place left for bulk requests in the inference queue ({state.on_the_way} "
                                  f"requests being decoded for the {max(bulk_places, 0)} free to them)")
        hold = state.memory.hold(bulk)
        hold.reserve(upload_bytes)  # kept until encoded (for `/results`)
        self.hold = hold
        state.admitted += 1
        state.on_the_way += 1
        self.admitted = self.on_the_way = True

    def room_for_images(self, images: int) -> None:
        """503 unless the inference queue has a place for each of `images` (a request run in tiles queues one
        image a tile; admission counted one place), besides those of the other requests on their way: `overloaded`,
        or `bulk_overloaded` beyond the bulk share. Called once the header tells the count (in a codec thread: it
        only reads the counts), and again on the event loop just before they are queued."""
        state = self.state
        others = state.on_the_way - (1 if self.on_the_way else 0)
        places = state.queue_places() - others
        if images > places:
            raise overloaded(f"no room in the inference queue for this image's {images} tiles ({max(places, 0)} "
                             "places free)")
        if self.bulk and images > (bulk_places := state.queue_places(bulk=True) - others):
            raise bulk_overloaded(f"no room for this bulk request's {images} tiles in the inference queue "
                                  f"({max(bulk_places, 0)} places free to bulk requests)")

    def queued(self) -> None:
        """It has reached the inference queue, or never will: its place on the way is free (idempotent)."""
        if self.on_the_way:
            self.state.on_the_way -= 1
            self.on_the_way = False

    def hand_over(self) -> Hold:
        """The memory share, which the caller now gives back (once the answer has been sent)."""
        assert self.hold is not None, "admit() first"
        hold, self.hold = self.hold, None
        return hold

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.uploads.release(self.reserved, self.bulk)
        self.reserved = 0
        self.queued()
        if self.hold is not None:
            self.hold.release()
            self.hold = None
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
