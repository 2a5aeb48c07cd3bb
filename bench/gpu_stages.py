"""The GPU benchmark's stages (`bench.gpu_bench`): run in order, each one's result (or its traceback) and seconds
saved as JSON after it, and none started once the run's time limit has passed.

A lent GPU runs one command under a hard limit (600 s, the setup included); a command killed there loses the stage
in progress and the rendered section. With a time limit the run ends by itself: the stages left are listed as not
started, and what was measured is saved and rendered.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

# A service start is never given less than this to become ready (a healthy one takes 3-30 s on a GPU).
MIN_READY_S = 30.0
PARTIAL = "bench_partial_result"  # the attribute of a stage's exception that carries what it measured first


def keep_partial(exc: BaseException, measured: Any) -> None:
    """Attach to `exc` what its stage measured before it was raised, for `Stages.run` to save beside the error:
    a service that dies at the last load point must not take the points before it with it."""
    setattr(exc, PARTIAL, measured)


class Stages:
    """Runs named stages into `results` (under their names; tracebacks under `errors`, seconds under `stage_s`,
    stages not started for the time limit under `skipped_for_time`) and saves `results` to `path` after each. A
    stage that fails keeps, under its name, what its exception carries (`keep_partial`)."""

    def __init__(self, results: dict[str, Any], path: Path, skip: set[str], time_limit_s: float = 0.0) -> None:
        self.results = results
        self.path = path
        self.skip = skip
        self.time_limit_s = time_limit_s  # 0: no limit
        self._start = time.monotonic()
        results.setdefault("errors", {})

    def time_left(self) -> float:
        """Seconds until no stage starts any more (infinite without a limit)."""
        if not self.time_limit_s:
            return math.inf
        return self.time_limit_s - (time.monotonic() - self._start)

    def ready_timeout(self, most: float) -> float:
        """How long a service started now may take to become ready: `most`, or the time left when that is less,
        but at least `MIN_READY_S`."""
        return max(MIN_READY_S, min(most, self.time_left()))

    def run(self, name: str, fn: Callable[[], Any]) -> None:
        """Run stage `name` unless skipped or out of time; an exception is recorded, never raised."""
        if name in self.skip:
            return
        if self.time_left() <= 0:
            self.results.setdefault("skipped_for_time", []).append(name)
            print(f"[{time.strftime('%H:%M:%S')}] {name}: not started, the run's time limit "
                  f"({self.time_limit_s:.0f} s) has passed", flush=True)
            self.save()
            return
        print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
        start = time.perf_counter()
        try:
            self.results[name] = fn()
        except Exception as exc:
            self.results["errors"][name] = traceback.format_exc()[-2000:]
            print(self.results["errors"][name], flush=True)
            if getattr(exc, PARTIAL, None) is not None:
                self.results[name] = getattr(exc, PARTIAL)
        self.results.setdefault("stage_s", {})[name] = round(time.perf_counter() - start, 1)
        self.save()

    def save(self) -> None:
        """Write the results; atomically, so a run killed while writing still leaves the last complete file."""
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self.results, indent=1, default=str))
        os.replace(partial, self.path)


def in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` in a fresh (spawned) process, its result returned: for a stage whose failure may take its
    process down with it (a CUDA graph capture that crashes the driver), so that only that stage is lost, with an
    error saying so, and the stages after it still run. `fn` must be importable by name (a module-level function)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        try:
            return child.submit(fn, *args).result()
        except BrokenProcessPool as exc:
            raise RuntimeError(f"the process running {fn.__name__} died (a crash or a signal) before it "
                               "answered") from exc
