"""Which worker of several is which: each holds a slot, and its slot picks its CUDA device; and workers that share
a device warm up one at a time.

Both are file locks (`flock`) in the supervisor's private directory (`SEGMENT_WORKER_SLOTS_DIR`, set for its
workers only). The kernel drops a lock when its holder dies, however it dies, so neither outlives a worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

SLOTS_DIR_VARIABLE = "SEGMENT_WORKER_SLOTS_DIR"  # set by the supervisor, like PROMETHEUS_MULTIPROC_DIR


def claim_slot(directory: Path, count: int) -> tuple[int, IO[str]]:
    """The lowest slot that no live process holds, and its lock file: keep it open for as long as the slot is
    yours. The replacement the supervisor starts after a death finds the dead worker's slot free.

    Slots 0..count-1 are the workers'; one past them (all held: more workers than `count`, e.g. after SIGTTIN) is
    locked all the same, so two workers never share a slot, and still maps to a device (round robin)."""
    slot = 0
    while (handle := _locked(directory / f"slot-{slot}")) is None:
        slot += 1
    if slot >= count:
        log.warning("all %d worker slots are held; taking slot %d", count, slot)
    return slot, handle


def _locked(path: Path) -> IO[str] | None:
    """`path` opened and locked for this process, or None when another holds it."""
    handle = open(path, "a")  # noqa: SIM115 - held open on purpose
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


@contextlib.contextmanager
def device_warm_up(device: int) -> Iterator[None]:
    """Hold CUDA device `device`'s warm-up turn (among the workers of one supervisor; alone, a no-op). Workers on one
    GPU then warm up one after the other: each worker's per-bucket memory readings (NVML's, which are device-wide)
    are its own, and two warm-ups' allocations do not peak at once. Blocks: call it off the event loop."""
    directory = os.environ.get(SLOTS_DIR_VARIABLE)
    if not directory:
        yield
        return
    with open(Path(directory) / f"device-{device}.warm-up", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
