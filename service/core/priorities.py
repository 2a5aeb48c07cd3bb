"""The priorities of `POST /segment?priority=`, first taken first: `interactive` (someone waits for the answer, the
default) and `bulk` (offline work), and the share of a server's limits bulk requests may take, the rest being kept
for interactive ones. Shared by the server (service/batch_line.py, service/admission.py) and the clients; standard
library only, so a client needs nothing of the server to know them."""

from __future__ import annotations

from typing import Literal

Priority = Literal["interactive", "bulk"]
PRIORITIES: tuple[Priority, ...] = ("interactive", "bulk")


def bulk_places(capacity: int, share: float) -> int:
    """Of `capacity` places (queue places, CRF places), those bulk requests may hold together: their `share`, at
    least one, leaving at least one to interactive requests unless the share is 1 (a queue of one then keeps its
    place: bulk requests still run whenever an inference slot is free)."""
    if share >= 1:
        return capacity
    return min(max(1, int(share * capacity)), capacity - 1)


class BulkBytes:
    """The bytes bulk requests hold together of a byte budget of `capacity` (the upload buffer, the request
    memory), within `share` of it. Its owner counts them (`held`) and keeps them in step with its own."""

    def __init__(self, capacity: int, share: float) -> None:
        self.capacity = int(share * capacity)
        self.held = 0

    def refusal(self, nbytes: int, own: int) -> Literal["too_large", "full"] | None:
        """Why `nbytes` more for a bulk request holding `own` already cannot be had: `too_large`, it alone outgrows
        the share (no retry would fit); `full`, the share has no room for it now; None: it can."""
        if own + nbytes > self.capacity:
            return "too_large"
        if self.held + nbytes > self.capacity:
            return "full"
        return None
