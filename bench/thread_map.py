"""`segment-serve` with a map of its Python threads, for the GPU benchmark's per-thread CPU split.

    BENCH_THREAD_MAP=/tmp/threads.json python -m bench.thread_map

runs `service.main` unchanged, plus one daemon thread that writes {native thread id: Python thread name} to
$BENCH_THREAD_MAP whenever the set of threads changes (checked twice a second). Python before 3.14 does not
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


def _write_map(path: Path) -> None:
    last: dict[int, str] = {}
    while True:
        now = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
        if now != last:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(now))
            tmp.replace(path)  # the reader never sees half a file
            last = now
        time.sleep(0.5)


def main() -> None:
    target = os.environ.get("BENCH_THREAD_MAP")
    if target:
        threading.Thread(target=_write_map, args=(Path(target),), name=NAME, daemon=True).start()
    from service.main import main as serve

    serve()


if __name__ == "__main__":
    main()
