"""Ctrl-C for a command that ends at the first one: the later ones are ignored, so that none cuts its ending short."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


@contextlib.contextmanager
def first_ctrl_c_only(keep: bool) -> Iterator[None]:
    """Within the block, the first Ctrl-C (SIGINT) raises KeyboardInterrupt as usual, and every later one is ignored.
    The command ends at the first: it closes its files and prints its summary, which takes a moment, and so does the
    interpreter's exit after it. A second Ctrl-C, often pressed at once, would interrupt that, or reach the exiting
    interpreter once it has restored SIGINT's default action, and kill the process by SIGINT rather than let it exit
    130. `keep`: leave the later ones ignored after the block, for a command whose process ends with it (the exit
    restores no action that is "ignore"). Outside the main thread, where no handler can be set, it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def first(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        if not keep and previous is not None:
            signal.signal(signal.SIGINT, previous)
