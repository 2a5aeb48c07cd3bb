"""A process-wide memory budget for image decodes in flight.

The pixel limit bounds one image, not how many decode at once: a handful of small files that inflate to
hundreds of MB each (a 271 KB 32-bit greyscale TIFF of 6300x6300 is 160 MB of pixels before any conversion)
could together take a pod past its memory limit. Each decode reserves its estimated peak from the header,
before a pixel is decoded, and waits while the reservations of the others would exceed the budget; an image
that alone needs more than the whole budget is refused (413).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from .errors import DecodeError

DEFAULT_BUDGET_BYTES = 1 << 30
WAIT_S = 30.0  # a decode queued this long behind others is answered 503 rather than held longer

# Bytes per pixel of Pillow's own storage for a mode (everything not listed: 4).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def estimate_bytes(mode: str, pixels: int, has_alpha: bool = False) -> int:
    """Peak bytes to decode `pixels` pixels of Pillow mode `mode` to an RGB numpy array through Pillow.

    Pillow's image, its RGB conversion (4 bytes a pixel) and the numpy copy (3), plus two RGBA planes when
    compositing transparency; deep greyscale goes through an 8-bit plane (converted in bounded row blocks)
    straight to the numpy array.
    """
    if mode.startswith(("I", "F")):  # the uint8 grey plane, then the RGB array straight from it
        return (_MODE_BYTES.get(mode, 4) + 1 + 3) * pixels
    extra = 8 * pixels if has_alpha or mode in _ALPHA_MODES else 0
    return (_MODE_BYTES.get(mode, 4) + 7) * pixels + extra


def plane_bytes(mode: str, pixels: int) -> int:
    """Bytes of one Pillow image of `pixels` pixels in `mode` (a frame Pillow keeps beside the one it decodes)."""
    return _MODE_BYTES.get(mode, 4) * pixels


def readable_bytes(nbytes: int) -> str:
    """`nbytes` in the largest binary unit it reaches, one decimal (`488.3 KiB`), or in bytes below 1 KiB: whole
    MiB would call a budget under 1 MiB `0 MiB`."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if nbytes >= 1 << shift:
            return f"{nbytes / (1 << shift):.1f} {unit}"
    return f"{nbytes} bytes"


class DecodeBudget:
    """A counting semaphore in bytes (thread-safe; decodes run in the codec thread pool)."""

    def __init__(self, capacity: int = DEFAULT_BUDGET_BYTES) -> None:
        self.capacity = capacity
        self.in_use = 0
        self.peak = 0
        self._cond = threading.Condition()

    def set_capacity(self, capacity: int) -> None:
        with self._cond:
            self.capacity = capacity
            self._cond.notify_all()

    @contextlib.contextmanager
    def reserve(self, nbytes: int, wait_s: float = WAIT_S) -> Iterator[None]:
        """Hold `nbytes` of the budget for the block; 413 if it can never fit, 503 if it does not in time."""
        if nbytes > self.capacity:
            raise DecodeError("image_too_large",
                              f"decoding this image needs ~{readable_bytes(nbytes)}, more than the decode memory "
                              f"budget of {readable_bytes(self.capacity)}")
        deadline = time.monotonic() + wait_s
        with self._cond:
            while self.in_use + nbytes > self.capacity:
                left = deadline - time.monotonic()
                if left <= 0 or (not self._cond.wait(left) and self.in_use + nbytes > self.capacity):
                    raise DecodeError("overloaded", "too many large images are being decoded; retry shortly",
                                      retry_after_s=1)
            self.in_use += nbytes
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= nbytes
                self._cond.notify_all()


DECODE_BUDGET = DecodeBudget()
