"""Watching a live server from a thread of this process while a `with` block runs: the start and stop that the
samplers of the load and reliability runs share (`testkit.load.HealthProbe`, `testkit.reliability.MemorySampler`)."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Self


class BackgroundSampler(ABC):
    """Runs `_run` in a daemon thread from entering the block until leaving it. `_run` samples until `_stop` is
    set, waiting on it between samples (so leaving the block does not wait out a sampling period); leaving waits
    up to `join_s` for the thread to end."""

    def __init__(self, name: str, join_s: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._join_s = join_s

    @abstractmethod
    def _run(self) -> None:
        """Take samples until `self._stop` is set."""

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self._join_s)
