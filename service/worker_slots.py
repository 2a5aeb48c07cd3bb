"""Which worker of several is which: each holds a slot, and its slot picks its CUDA device; and workers that share
a device warm up one at a time.

The supervisor hands out the slots: each worker it starts gets the lowest slot no other worker of its list holds
(`SEGMENT_WORKER_SLOT` in the environment it is spawned with), so a replacement takes the slot of the worker it
replaces, and after SIGTTOU a worker left past the new count moves down where slots pick devices
(service/worker_supervisor.py): every live worker on its own slot below the count, whenever the count allows. Where they
pick none (the CPU, one GPU) it serves on under its slot: a move would load the model again for nothing. Each worker
locks its slot's file (`flock`) in the supervisor's private directory (`SEGMENT_WORKER_SLOTS_DIR`, set for its workers
only), which a second live holder would find locked; the warm-up turns are such locks too. The kernel drops a lock when
its holder dies, however it dies, so neither outlives a worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

SLOTS_DIR_VARIABLE = "SEGMENT_WORKER_SLOTS_DIR"  # set by the supervisor, like PROMETHEUS_MULTIPROC_DIR
SLOT_VARIABLE = "SEGMENT_WORKER_SLOT"  # the `worker_slot` setting: set by the supervisor for each worker it starts


def supervisor_dir() -> Path | None:
    """This worker's supervisor's private directory (slots, warm-up turns, census); None: not a worker of
    several."""
    directory = os.environ.get(SLOTS_DIR_VARIABLE)
    return Path(directory) if directory else None


def lowest_free(held: Iterable[int]) -> int:
    """The lowest slot not in `held`."""
    taken = set(held)
    return next(slot for slot in range(len(taken) + 1) if slot not in taken)


def hold_slot(directory: Path, slot: int) -> IO[str]:
    """Lock `slot`'s file for this worker: keep the handle open for as long as the slot is yours. Raises (a
    startup failure, which the supervisor retries) where another live process holds it: two workers never share
    a slot, so never a device their count gives each its own."""
    handle = open(directory / f"slot-{slot}", "a")  # noqa: SIM115 - held open on purpose
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RuntimeError(f"worker slot {slot} is held by another live worker") from None
    return handle


@contextlib.contextmanager
def device_warm_up(device: int) -> Iterator[None]:
    """Hold CUDA device `device`'s warm-up turn (among the workers of one supervisor; alone, a no-op). Workers on one
    GPU then warm up one after the other: each worker's per-bucket memory readings (NVML's, which are device-wide)
    are its own, and two warm-ups' allocations do not peak at once. Blocks: call it off the event loop."""
    directory = supervisor_dir()
    if directory is None:
        yield
        return
    with open(directory / f"device-{device}.warm-up", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
