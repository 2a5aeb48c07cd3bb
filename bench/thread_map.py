"""`segment-serve` with a map of its Python threads, for the GPU benchmark's per-thread CPU split.

    BENCH_THREAD_MAP=/tmp/threads.json python -m bench.thread_map

runs `service.main` unchanged, plus one daemon thread that writes {"checked_at": wall time, "threads": {native
thread id: Python thread name}} to $BENCH_THREAD_MAP four times a second, so a reader can wait for a map taken
after the moment it cares about (a pool thread started just before it). Python before 3.14 does not
name its threads in the OS, so without this map /proc/<pid>/task/<tid>/comm cannot tell a codec thread from
an inference thread; threads not in the map are native ones (onnxruntime's pools, CUDA's, ...).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

NAME = "bench-thread-map"


CHECK_EVERY_S = 0.25


def _write_map(path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    while True:
        # The time is taken before the threads are listed: a thread started before `checked_at` is in the list.
        checked_at = time.time()
        threads = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
        tmp.write_text(json.dumps({"checked_at": checked_at, "threads": threads}))
        tmp.replace(path)  # the reader never sees half a file
        time.sleep(CHECK_EVERY_S)


def main() -> None:
    target = os.environ.get("BENCH_THREAD_MAP")
    if target:
        threading.Thread(target=_write_map, args=(Path(target),), name=NAME, daemon=True).start()
    from service.main import main as serve

    serve()


if __name__ == "__main__":
    main()
