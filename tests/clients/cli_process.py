"""A client command (`python -m <module> ...`) in a process of its own, its stderr read line by line as it comes:
what the tests of Ctrl-C, of a server going away and of a run's summary watch."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class CliProcess:
    """`python -m module *args` from this checkout, stdin closed."""

    def __init__(self, module: str, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, stdin=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def err(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, text: str, timeout: float = 30) -> str:
        """The first stderr line holding `text`, waited for up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.lines if text in line]
            if found:
                return found[0]
            time.sleep(0.02)
        raise AssertionError(f"no line with {text!r} in {timeout} s:\n{self.err}")

    def ctrl_c(self) -> None:
        self.proc.send_signal(signal.SIGINT)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
