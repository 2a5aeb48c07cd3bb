"""The overlapping emulated GPU (`testkit.shared_device`) behind `bench.accelerator_sim --overlap`: a batch alone
takes its raw time, and two at once hide each other's gaps but share the compute."""

from __future__ import annotations

import threading
import time

import pytest

from testkit.shared_device import SharedDevice


def _run_together(device: SharedDevice, seconds: float, gap_s: float, count: int) -> list[float]:
    """Start `count` batches at once; each one's duration."""
    durations = [0.0] * count

    def one(i: int) -> None:
        start = time.perf_counter()
        device.run(seconds, gap_s)
        durations[i] = time.perf_counter() - start

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return durations


def test_a_batch_alone_takes_its_raw_time() -> None:
    (alone,) = _run_together(SharedDevice(), 0.2, 0.05, 1)
    assert alone == pytest.approx(0.2, abs=0.02)


def test_two_batches_at_once_share_the_compute_and_hide_each_others_gaps() -> None:
    device = SharedDevice()
    durations = _run_together(device, 0.2, 0.05, 2)
    # Both compute 0.15 s at half speed after half the gap, then the other half: 2 × 0.2 - 0.05 = 0.35 s,
    # less than the 0.4 s of one after the other and more than the 0.2 s of one alone.
    assert durations == pytest.approx([0.35, 0.35], abs=0.03)
    assert device.computing() == 0
