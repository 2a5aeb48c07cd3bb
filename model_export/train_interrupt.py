"""Ctrl-C during `segment-export train`: stop at the end of the iteration in progress, save a checkpoint there (the
periodic saves' atomic write) and exit 130, instead of a KeyboardInterrupt traceback that loses every iteration since
the last `--save-every` checkpoint.

The first SIGINT only asks to stop: raised in the middle of `optimizer.step()` a KeyboardInterrupt could leave the
weights half updated, and stopping at an iteration's end also keeps the data stream and the RNG at an iteration
boundary, so the resumed run is the one that was interrupted. A second SIGINT stops at once (a stuck data loader must
not hold the user): during the save, the checkpoint on disk stays the previous one (temp file + rename), and the run
exits 130 all the same. Data loader workers ignore SIGINT (`ignore_sigint`): a terminal sends it to the whole process
group, and a worker that died of it would fail the iteration the main process is finishing.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

EXIT_CODE = 130  # what a shell reports for a command ended by SIGINT (128 + 2)


class TrainingInterrupted(SystemExit):
    """Training stopped by Ctrl-C; the exit status is 130. `saved`: the iteration the checkpoint on disk holds, or
    None when the run saved none. A SystemExit, so that the command line ends with one line and no traceback."""

    def __init__(self, message: str, saved: int | None) -> None:
        super().__init__(EXIT_CODE)
        self.message = message
        self.saved = saved

    def __str__(self) -> str:
        return self.message


def ignore_sigint(_worker_id: int) -> None:
    """A data loader's `worker_init_fn`: the main process alone decides what Ctrl-C does."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class StopOnSigint:
    """While entered (in the main thread; elsewhere Python delivers no signal, and nothing changes): the first SIGINT
    sets `requested`, the next raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopOnSigint:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


def interrupted(what: str, ckpt_path: Path, saved: int | None) -> TrainingInterrupted:
    """Print the one line a user reads (`what` happened; what the checkpoint on disk holds) and return the exception
    that ends the run with status 130."""
    resume = f"continue with --resume {ckpt_path}"
    if what.startswith("interrupted at iteration"):
        message = f"{what}; checkpoint saved to {ckpt_path}; {resume}"
    elif saved is not None:
        message = f"{what}; {ckpt_path} keeps iteration {saved}; {resume}"
    else:
        message = f"{what}; this run saved no checkpoint"
    print(message, file=sys.stderr, flush=True)
    return TrainingInterrupted(message, saved)
