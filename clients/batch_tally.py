"""What a `segment` run did (`Tally`: counts and the failures only), when a file's outcome stops the run, and the
summary printed at its end."""

from __future__ import annotations

import argparse
import sys
import threading
from dataclasses import dataclass, field

from tqdm import tqdm

from clients.batch_outputs import CONNECTION_ERROR, MODEL_CHANGED, TLS_ERRORS, Failure, Lowered


@dataclass
class Tally:
    """What a run did: counts and the failures only (never one object per file), and why it stopped early."""

    total: int
    skipped: int
    written: int = 0
    lowered: int = 0  # of those written, at a lower resolution than asked: the most the server gives them
    failures: list[Failure] = field(default_factory=list)
    in_progress: int = 0
    connection_streak: int = 0  # files in a row that could not reach the server
    interrupted: bool = False  # Ctrl-C
    abandoned: int = 0  # files still in progress when a second Ctrl-C ended the run
    unreachable: bool = False  # --max-connection-failures reached
    fatal: Failure | None = None  # a failure every file would meet (no TLS connection can be made): stopped at once
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def not_done(self) -> int:
        return self.total - self.skipped - self.written - len(self.failures)


def summary(tally: Tally) -> str:
    lines = [f"segment: {tally.written} written, {tally.skipped} skipped (already done), {len(tally.failures)} "
             f"failed, {tally.total} total"]
    if tally.interrupted or tally.unreachable or tally.fatal:
        lines[0] += f"; {'interrupted' if tally.interrupted else 'stopped'}, {tally.not_done()} not done"
    if tally.abandoned:
        lines[0] += f" ({tally.abandoned} of them left in progress)"
    if tally.lowered:
        lines.append(f"segment: {tally.lowered} of the files written needed more tiles at --resolution than the "
                     "server runs for one image, and were segmented at the highest resolution it gives them")
    failures = sorted(tally.failures, key=lambda failure: str(failure.source))
    lines += [f"  FAILED {f.source}: {f.code}: {f.message}" for f in failures]
    if changed := sum(failure.code == MODEL_CHANGED for failure in failures):
        # What to do next, once: the rerun that would mend it is not the one a rollout suggests.
        files = "1 file was" if changed == 1 else f"{changed} files were"
        lines.append(f"segment: {files} answered by another model than the run's, and not written: a "
                     "rerun against the run's model does them; against the new model it stops, and --overwrite "
                     "redoes every file with it")
    return "\n".join(lines)


def count_outcome(tally: Tally, failure: Failure | Lowered | None, args: argparse.Namespace, bar: tqdm,
                  stop: threading.Event) -> None:
    """Add one file's outcome to `tally` (under its lock); stop the run once the server is unreachable, or at once
    when no TLS connection can be made to it: every other file would fail alike, each after a handshake."""
    tally.in_progress -= 1
    if isinstance(failure, Lowered):
        tally.lowered += 1
        failure = None
    if failure is None:
        tally.written += 1
    else:
        tally.failures.append(failure)
        if not tally.abandoned:  # else the summary is out: nothing after it
            bar.write(f"failed: {failure.source}: {failure.code}: {failure.message}", file=sys.stderr)
            bar.set_postfix(failed=len(tally.failures))
    # Only files that could not reach the server count: a corrupt image says nothing about the server.
    tally.connection_streak = tally.connection_streak + 1 if failure and failure.code == CONNECTION_ERROR else 0
    if failure and failure.code in TLS_ERRORS and not stop.is_set():
        tally.fatal = failure
        stop.set()
    if tally.connection_streak >= args.max_connection_failures and not stop.is_set():
        tally.unreachable = True
        stop.set()
    bar.update()
