"""CPU time of a process and of its threads, from Linux's /proc: what the benchmarks measure servers by."""

from __future__ import annotations

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _utime_stime(stat: str) -> float:
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may contain spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """CPU seconds (user + system) of a process, or of one of its threads (the main thread's tid is the pid)."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    return _utime_stime(Path(path).read_text())


def thread_times(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (comm, CPU seconds) for every thread of a process now."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        out[int(task.name)] = (stat[stat.index("(") + 1:stat.rindex(")")], _utime_stime(stat))
    return out
