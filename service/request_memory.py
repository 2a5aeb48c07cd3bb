"""The request memory budget: what admitted /segment requests hold between their decode and their answer.

The decode budget (service/core/decode_budget.py) bounds a decode while it runs; what a request keeps after it
(the decoded image an overlay is drawn on, the model input, the upload kept for `/results`, then the encoded
answer until it is sent) waited in the queue and for an encode thread under no limit at all: 80 clients sending a
50 KB 12 MP PNG for overlays held 3 GiB, ~34 MiB each, with every request accepted. Now each request reserves
these bytes here: its upload when it is admitted, the decoded image and model input once the header has told
their size (before a pixel is decoded), its answer once encoded, until the answer has been sent. A reservation
that does not fit is refused at once with 503 `overloaded`, before the decode, and nothing ever waits for room: a
request whose image has been decoded only grows its share without a check (its answer), so it always gets its
answer. One that could never fit is refused 413.

A bulk request (`priority=bulk`: service/batch_line.py) may take only `bulk_share` of the budget with the other bulk
requests (503 `bulk_overloaded` beyond; 413 for one that alone needs more): the rest is kept for interactive
requests, as their share of the queue is, so that bulk overlays of large photos never refuse them or make /readyz
unready.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .admission import AS_INTERACTIVE, bulk_overloaded, overloaded
from .core.decode_budget import readable_bytes
from .core.priorities import BulkBytes
from .core.tiles import TileGrid
from .core.upload import Upload
from .errors import ApiError


def decoded_bytes(upload: Upload, full_resolution: bool, input_size: int, tiles: TileGrid | None = None) -> int:
    """Bytes a request keeps of its decode while it waits: the model input (uint8, `input_size`² × 3, or the
    canvas its `tiles` cover) and, for an answer drawn on the upload (an overlay), the RGB image at full size; when
    it runs in tiles, their labels and the map they are stitched into too. Any other answer keeps no image (the
    route lets go of it once decoded: service/routes/segment.py)."""
    image = 3 * upload.pixels if full_resolution else 0
    if tiles is None:
        return image + 3 * input_size * input_size
    height, width = tiles.extent
    return image + 4 * height * width + len(tiles) * tiles.tile * tiles.tile


class RequestMemory:
    """A byte budget shared by the requests in progress (thread-safe: the decode's share is reserved in a codec
    thread). `gauge`, a Prometheus gauge, shows the bytes held."""

    def __init__(self, capacity: int, gauge: Any = None, bulk_share: float = 1.0) -> None:
        self.capacity = capacity
        self.in_use = 0
        self.bulk = BulkBytes(capacity, bulk_share)
        self.peak = 0
        self._refused = 0  # the last reservation refused: /readyz is unready while one as large would be again
        self._gauge = gauge
        self._lock = threading.Lock()

    @property
    def spent(self) -> bool:
        """Whether a request like the last one refused would be refused now (`/readyz`: overloaded)."""
        with self._lock:
            return self.in_use >= self.capacity or (self._refused > 0 and
                                                    self.in_use + self._refused > self.capacity)

    def hold(self, bulk: bool = False) -> Hold:
        """A new, empty share for one request (a bulk one's within `bulk_share`)."""
        return Hold(self, bulk)

    def _add(self, nbytes: int, check: bool, held: int, bulk: bool = False) -> None:
        with self._lock:
            if check:
                if held + nbytes > self.capacity:  # alone larger than all of it: no retry would fit
                    raise ApiError(413, "image_too_large",
                                   f"this request needs ~{readable_bytes(held + nbytes)} of memory while it waits "
                                   f"for its answer, more than the request memory budget of "
                                   f"{readable_bytes(self.capacity)}")
                if bulk:
                    self._check_bulk(nbytes, held)
                if self.in_use + nbytes > self.capacity:
                    self._refused = nbytes
                    raise overloaded(f"requests in progress hold the memory budget ({readable_bytes(self.in_use)} "
                                     f"of {readable_bytes(self.capacity)})")
            self.in_use += nbytes
            if bulk:
                self.bulk.held += nbytes
            self.peak = max(self.peak, self.in_use)
            self._show()

    def _check_bulk(self, nbytes: int, held: int) -> None:
        """413 for a bulk request that alone needs more than the bulk share (it would take what is kept for
        interactive requests), 503 `bulk_overloaded` when the bulk requests' share, or the whole budget, has no room
        for it. Neither counts as `_refused`: bulk requests turned away leave /readyz ready."""
        refusal = self.bulk.refusal(nbytes, held)
        if refusal == "too_large":
            raise ApiError(413, "image_too_large",
                           f"this bulk request needs ~{readable_bytes(held + nbytes)} of memory while it waits for "
                           f"its answer, more than the bulk share of the request memory budget "
                           f"({readable_bytes(self.bulk.capacity)}); {AS_INTERACTIVE}")
        if refusal == "full" or self.in_use + nbytes > self.capacity:
            raise bulk_overloaded(f"bulk requests hold their share of the memory budget "
                                  f"({readable_bytes(self.bulk.held)} of {readable_bytes(self.bulk.capacity)}), or "
                                  f"it is all taken")

    def _sub(self, nbytes: int, bulk: bool = False) -> None:
        with self._lock:
            self.in_use -= nbytes
            if bulk:
                self.bulk.held -= nbytes
            if self.in_use + self._refused <= self.capacity:
                self._refused = 0  # it would fit now: no longer a reason to be unready
            self._show()

    def _show(self) -> None:
        if self._gauge is not None:
            self._gauge.set(self.in_use)


class Hold:
    """One request's share of a `RequestMemory`: it grows (`reserve`), is resized once its answer is encoded
    (`resize`), and is given back once (`release`). A reservation that comes after the release (a decode that
    finished for a request that had already given up) takes nothing, so nothing leaks."""

    def __init__(self, memory: RequestMemory, bulk: bool = False) -> None:
        self.memory = memory
        self.bulk = bulk
        self.held = 0
        self._released = False
        self._lock = threading.Lock()

    def reserve(self, nbytes: int) -> None:
        """Add `nbytes`, or raise 503 `overloaded` (with Retry-After) if the budget has no room for them, 413
        `image_too_large` if this request's whole share could never fit."""
        with self._lock:
            if self._released:
                raise overloaded("the request ended while it was being decoded")
            self.memory._add(nbytes, True, self.held, self.bulk)
            self.held += nbytes

    def resize(self, nbytes: int) -> None:
        """Hold `nbytes` from now on (what the answer holds once encoded), without a check: the request has its
        place, and its answer is never refused for what it already holds."""
        with self._lock:
            if self._released:
                return
            if nbytes > self.held:
                self.memory._add(nbytes - self.held, False, self.held, self.bulk)
            elif nbytes < self.held:
                self.memory._sub(self.held - nbytes, self.bulk)
            self.held = nbytes

    def release(self) -> None:
        """Give the share back (idempotent)."""
        with self._lock:
            if self._released:
                return
            self._released = True
            held, self.held = self.held, 0
        if held:
            self.memory._sub(held, self.bulk)


class HeldResponse(Response):
    """A response that gives its request's memory share back once it has been sent, or failed to be; or, should it
    never be sent at all, once it is dropped."""

    def __init__(self, hold: Hold, content: bytes, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._hold = hold
        weakref.finalize(self, hold.release)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._hold.release()
