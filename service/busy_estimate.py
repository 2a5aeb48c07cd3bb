"""When the batches running now are expected to finish: how long a forming batch may keep filling.

With two batches in flight, a worker that frees up while the other batch runs cuts its next batch at once from
whatever is queued. On a device that runs one batch at a time, that batch only waits there, while the requests
arriving meanwhile wait a whole batch more, and at moderate load batch sizes lock into a pattern of small ones:
against an emulated serial device (`bench.accelerator_sim`, 513, concurrency 8) batches of 2 and 3 or of 2 and 4
in alternation, 0.68-0.81 of raw batch-8 throughput depending on the run, where filling until the running work
is nearly done gives batches of about 4 and 0.83-0.88. Where batches in flight overlap (a GPU: the emulated
`--overlap` device), the batch cut at once starts computing at once, and filling ranged from 5 % more to 4 % fewer
img/s by concurrency and by the host's share of each request's time. Hence an option (`fill_while_busy`), off by
default.

The estimate runs the batches back to back at their warm-up times and is corrected whenever a batch finishes:
early, the rest moves up; with nothing left running, the device is free now.
"""

from __future__ import annotations

from collections.abc import Callable

# The next batch is cut this share of the last started batch's time before the device is expected to be free,
# so its copy into the bucket buffer and its launch overlap the running batch's tail (on a GPU: the input's
# host-to-device copy and the previous labels' copy back) and the device does not idle in between.
LEAD_SHARE = 0.25


class BusyEstimate:
    """The expected end of the work running now, from `expected_s(images)`: seconds a batch takes, 0 if unknown."""

    def __init__(self, expected_s: Callable[[int], float]) -> None:
        self._expected_s = expected_s
        self._until = 0.0  # perf_counter time the running batches are expected to have finished
        self._lead = 0.0

    def started(self, images: int, now: float) -> float:
        """Count a batch of `images` starting at `now`; returns its planned end (for `finished`)."""
        seconds = self._expected_s(images)
        self._until = max(now, self._until) + seconds
        self._lead = LEAD_SHARE * seconds
        return self._until

    def finished(self, planned_end: float, now: float, still_running: int) -> None:
        """Correct the estimate when a batch planned to end at `planned_end` ends at `now`."""
        if still_running == 0:
            self._until = now
        elif planned_end > now:  # done early: what runs after it moves up by as much
            self._until = max(now, self._until - (planned_end - now))

    def fill_for(self, now: float) -> float:
        """Seconds a forming batch may still wait for images before it should be cut (0 or less: cut now)."""
        return self._until - self._lead - now
