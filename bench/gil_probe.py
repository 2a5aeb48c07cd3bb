"""The GIL from outside, with py-spy when it is installed and may attach (ptrace): the share of samples in
which some thread of the server holds the GIL, which thread group holds it, and the Python functions it is
held in. Near 100 % held means the one interpreter is the bottleneck (every other thread waits for it); well
below, it is not. Optional: when py-spy is missing or cannot attach, the result says why and nothing else
changes.

py-spy samples without pausing the server (`--nonblocking`), so it does not slow what it measures.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

RATE = 100  # samples per second
THREAD_LABEL = re.compile(r"^thread \((?:0x)?([0-9a-fA-F]+)\)(?::\s*(.*))?$")


def py_spy() -> str | None:
    """The py-spy executable beside this interpreter, or on the PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def ms_per_request(share: float, throughput: float) -> float:
    """A share of the time (0..1) the GIL is held, as ms per request at `throughput` requests a second: 1000 / that
    is the most requests a second one server process can answer, whatever the device (every thread but the
    holder waits)."""
    return share * 1000 / throughput if throughput > 0 else float("nan")


class GilSampler:
    """`py-spy record --gil` on one process for `seconds`, started now; `result()` waits and parses. Its output
    file is removed by `result()`, or by `close()` when the result is not wanted (the measurement failed)."""

    def __init__(self, pid: int, seconds: float) -> None:
        self.pid = pid
        self.duration = max(1, int(seconds))
        # The file only where py-spy runs: a run without py-spy would otherwise leave one per sampled point.
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        exe = py_spy()
        self.proc: subprocess.Popen[str] | None = None
        self.reason = "py-spy is not installed"
        if exe:
            self._folder = tempfile.TemporaryDirectory(prefix="gil_")
            self.out = Path(self._folder.name) / "gil.txt"
            self.proc = subprocess.Popen(
                [exe, "record", "--pid", str(pid), "--duration", str(self.duration), "--rate", str(RATE), "--gil",
                 "--nonblocking", "--threads", "--format", "raw", "--output", str(self.out)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def close(self) -> None:
        """Stop py-spy if it still runs and remove its output (idempotent)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def result(self, group_of: Any) -> dict[str, Any]:
        """{held, by_group, top_functions, samples} or {unavailable: why}. `group_of(tid, name)` names a thread's
        group as the CPU split does."""
        if self.proc is None:
            return {"unavailable": self.reason}
        try:
            log, _ = self.proc.communicate(timeout=self.duration + 30)
        except subprocess.TimeoutExpired:
            self.close()
            return {"unavailable": "py-spy did not finish"}
        text = self.out.read_text() if self.out.exists() else ""
        self.close()
        if self.proc.returncode != 0 or not text.strip():
            # e.g. "Permission denied": no CAP_SYS_PTRACE, or kernel.yama.ptrace_scope forbids attaching
            return {"unavailable": f"py-spy exit {self.proc.returncode}: {log.strip()[-300:]}"}
        by_group: Counter[str] = Counter()
        leaves: Counter[str] = Counter()
        for line in text.splitlines():
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            match = THREAD_LABEL.match(frames[0])
            if not match or not count.isdigit():
                continue
            tid = int(match[1], 16) if frames[0].startswith("thread (0x") else int(match[1])
            by_group[group_of(tid, match[2] or "")] += int(count)
            leaves[frames[-1] if len(frames) > 1 else "?"] += int(count)
        total = sum(by_group.values())
        expected = RATE * self.duration  # py-spy writes only the samples in which a thread held the GIL
        errors = re.search(r"Errors: (\d+)", log)
        return {"held": min(1.0, total / expected), "samples": total, "expected_samples": expected,
                "errors": int(errors[1]) if errors else None,
                "by_group": {k: v / expected for k, v in by_group.most_common()},
                "top_functions": {k: v / max(1, total) for k, v in leaves.most_common(8)}}
