"""When the supervisor of several workers starts a slot's next worker: at once, or after a delay that doubles at
each failure of that slot in a row (1 s, 2, 4, ... up to 30 s).

Two kinds of failure count. A replacement that fails at startup (uvicorn's exit status 3, or killed before it was
ready twice in a row). And a worker that crashes soon after it was ready (within `SERVED_S`): a crash loop, a
worker that dies on its first requests or seconds after it warmed up, which uvicorn replaced at once every time,
each replacement loading the model again, as fast as it could. A worker of the slot that has served `SERVED_S`
ends its streak, so a worker that crashes after serving that long is replaced at once.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass

from uvicorn.config import STARTUP_FAILURE

log = logging.getLogger(__name__)

STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
RETRY_FIRST_S = 1.0  # the delay before a slot's next worker after one failure, doubled at each failure in a row ...
RETRY_MAX_S = 30.0  # ... up to this
# A worker that dies sooner than this after it was seen ready crashed soon (its replacement waits); one that has
# served this long ends its slot's streak. Longer than the longest delay, so that a loop at that delay still counts.
SERVED_S = 60.0


@dataclass
class SlotRetry:
    """A slot whose workers fail: `failures` startup failures and `crashes` crashes soon after readiness in a row
    (both 0: its worker was killed once before it was ready, which is replaced at once)."""

    failures: int = 0
    crashes: int = 0
    due: float = 0.0
    waiting: bool = False  # its last process is gone, and no new one started yet
    after_crash: bool = False  # what it waits after: a crash soon after readiness, else a startup failure

    def failed(self, after_crash: bool) -> float:
        """Count one more failure in a row (a crash soon after readiness, else a startup failure) and wait before
        the slot's next worker; the delay, in seconds, which doubles with every failure of either kind."""
        if after_crash:
            self.crashes += 1
        else:
            self.failures += 1
        delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (self.failures + self.crashes - 1))
        self.due, self.waiting, self.after_crash = time.monotonic() + delay, True, after_crash
        return delay


class Retries:
    """The failing slots, by index in the supervisor's `processes`, and the failures counted since it started."""

    def __init__(self) -> None:
        self.slots: dict[int, SlotRetry] = {}
        self.start_failures = 0
        self.early_crashes = 0
        self.last_start_failure: str | None = None
        self.last_early_crash: str | None = None

    def get(self, idx: int) -> SlotRetry | None:
        return self.slots.get(idx)

    def killed_before_ready(self, idx: int) -> None:
        """The slot's worker was killed before it was ready: replaced at once, a startup failure if that one is too."""
        self.slots[idx] = SlotRetry()

    def failed_start(self, idx: int, pid: int | None, how: str) -> str:
        """Count a startup failure of slot `idx` (`how`: its cause, if not uvicorn's exit status 3); the message."""
        self.start_failures += 1
        retry = self.slots.setdefault(idx, SlotRetry())
        delay = retry.failed(after_crash=False)
        self.last_start_failure = (f"worker [{pid}] failed at startup{how} at {_now()} ({retry.failures} in a row); "
                                   f"next try in {delay:g} s")
        return self.last_start_failure

    def crashed_early(self, idx: int, pid: int | None, served_s: float) -> str:
        """Count a crash of slot `idx`'s worker `served_s` after it was ready (less than `SERVED_S`); the message."""
        self.early_crashes += 1
        retry = self.slots.setdefault(idx, SlotRetry())
        delay = retry.failed(after_crash=True)
        self.last_early_crash = (f"worker [{pid}] died at {_now()}, {served_s:.1f} s after it was ready "
                                 f"({retry.crashes} in a row); its replacement starts in {delay:g} s")
        return self.last_early_crash

    def ready(self, idx: int, pid: int | None, served_s: float) -> None:
        """Slot `idx`'s worker `pid` has been ready for `served_s`: its startup failures are over, and its crashes
        once it has served `SERVED_S`."""
        retry = self.slots[idx]
        if retry.failures:
            log.warning("worker [%s] started after %d failed tries", pid, retry.failures)
            retry.failures = 0
        if retry.crashes and served_s < SERVED_S:
            return
        if retry.crashes:
            log.info("worker [%s] has served %.0f s: its slot's %d crashes in a row are over", pid, served_s,
                     retry.crashes)
        del self.slots[idx]

    def waiting(self) -> int:
        """How many slots wait for their next worker."""
        return sum(retry.waiting for retry in self.slots.values())

    def all_failing(self, count: int) -> bool:
        """Whether each of the `count` slots waits after a startup failure (none runs, none will serve)."""
        return bool(self.slots) and all(
            (retry := self.slots.get(idx)) is not None and retry.waiting and not retry.after_crash
            for idx in range(count))

    def move_last(self, idx: int, last: int) -> None:
        """Follow the supervisor's move of `processes[idx]` to the end (`last`)."""
        self.slots = {last if i == idx else i - (i > idx): retry for i, retry in self.slots.items()}


def crashed_soon(served_s: float) -> bool:
    """Whether a worker that died `served_s` after it was seen ready crashed soon (its replacement waits)."""
    return served_s < SERVED_S


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def startup_failure(exitcode: int | None, ready: bool, hung: bool, timeout: float) -> str | None:
    """How a worker that is gone failed at startup ('' for uvicorn's exit status 3); None when it had been ready,
    or stopped as asked (SIGTERM or SIGINT: its watchdog's own stop, an operator's) or with a status of its own."""
    if exitcode == STARTUP_FAILURE:
        return ""
    if ready or exitcode is None or exitcode >= 0:
        return None
    if hung:  # the supervisor killed it
        return f" (no answer to the health check in {timeout:g} s)"
    if -exitcode in STOP_SIGNALS:
        return None
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    return f" (killed by {name})"
