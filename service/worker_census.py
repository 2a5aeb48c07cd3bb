"""What the supervisor of several workers tells them about the whole server: how many workers it keeps, how many
run, the replacements that failed to start and the workers that crashed soon after they were ready.

One small JSON file in the supervisor's private slots directory (`SEGMENT_WORKER_SLOTS_DIR`), replaced whole
(written aside, then renamed) whenever it changes. The workers read it when they store a result (their share of
the result cache's bound follows the number of workers), in `/readyz` (`workers`) and at each scrape
(`segment_workers_*`): any worker answers for the whole server, as its `/metrics` does.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CENSUS_NAME = "census.json"


@dataclass(frozen=True)
class Census:
    """The workers of one supervisor, as it last saw them."""

    configured: int  # the worker processes it keeps: SEGMENT_WORKERS, plus SIGTTIN, minus SIGTTOU
    live: int  # of those, processes running now (starting or serving)
    retrying: int = 0  # of those, slots waiting for their next worker (a startup failure, or a crash soon after ready)
    start_failures: int = 0  # replacements that failed at startup since the server started
    last_start_failure: str | None = None  # the latest of them, in words
    early_crashes: int = 0  # workers that died soon after they were ready (service/worker_backoff.py), since the start
    last_early_crash: str | None = None  # the latest of them, in words

    def describe(self) -> dict[str, Any]:
        """The `/readyz` form."""
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}


def publish(directory: Path, census: Census) -> None:
    """Replace the census in `directory`: a reader sees the old one or the new one, whole."""
    path = directory / CENSUS_NAME
    aside = directory / f".{CENSUS_NAME}.{os.getpid()}"
    aside.write_text(json.dumps(dataclasses.asdict(census)))
    os.replace(aside, path)


def read_census(directory: Path | None) -> Census | None:
    """The census in `directory`; None where there is none (one process, or not yet published)."""
    if directory is None:
        return None
    try:
        return Census(**json.loads((directory / CENSUS_NAME).read_bytes()))
    except (OSError, ValueError, TypeError):
        return None


def kept_workers(directory: Path) -> Callable[[], int | None]:
    """How many workers the supervisor keeps, asked afresh at each call (a read of a small file in memory, a few
    microseconds: cheaper than any way to tell whether it changed that is also certain to)."""

    def count() -> int | None:
        census = read_census(directory)
        return census.configured if census is not None else None

    return count


class CensusCollector(Collector):
    """The census as metrics, read at scrape time: the same in every worker's answer, so not summed."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def describe(self) -> Iterator[Metric]:
        return self._families(Census(configured=0, live=0))

    def collect(self) -> Iterator[Metric]:
        census = read_census(self.directory)
        return self._families(census) if census is not None else iter(())

    @staticmethod
    def _families(census: Census) -> Iterator[Metric]:
        yield GaugeMetricFamily("segment_workers_configured", "Worker processes the supervisor keeps "
                                "(SEGMENT_WORKERS, changed by SIGTTIN and SIGTTOU)", value=census.configured)
        yield GaugeMetricFamily("segment_workers_live", "Worker processes running (starting or serving); below "
                                "segment_workers_configured while a replacement fails to start or waits after a "
                                "crash", value=census.live)
        yield CounterMetricFamily("segment_worker_start_failures", "Replacement workers that failed at startup "
                                  "(each is tried again, with a growing delay)", value=census.start_failures)
        yield CounterMetricFamily("segment_worker_early_crashes", "Workers that died soon after they were ready "
                                  "(each replacement waits, with a growing delay)", value=census.early_crashes)
