"""CPU time of a process and of its threads, from Linux's /proc: what the benchmarks measure servers by."""

from __future__ import annotations

import contextlib
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


def descendants(pid: int) -> list[int]:
    """The live descendants of a process (its children, theirs, ...), from /proc/<pid>/task/*/children."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in task.read_text().split()]
                found += kids
                pending += kids
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and of its live descendants (a server with several worker processes)."""
    total = 0.0
    for member in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):  # it ended meanwhile
            total += cpu_seconds(member)
    return total


def run_ns(pid: int, tid: int | None = None) -> int:
    """Nanoseconds on a CPU so far, from the scheduler's exact accounting (schedstat): one thread's, or the sum
    over the process's threads now (`stat`'s utime + stime are sampled in clock ticks)."""
    tasks = [Path(f"/proc/{pid}/task/{tid}")] if tid else list(Path(f"/proc/{pid}/task").iterdir())
    total = 0
    for task in tasks:
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total


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
