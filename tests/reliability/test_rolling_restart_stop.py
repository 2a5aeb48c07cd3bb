"""The worker supervisor (`SEGMENT_WORKERS`) told to stop in the middle of a rolling restart (SIGHUP): it must
stop then, not after replacing every remaining worker, each of which loads its model first (on a GPU host that
took longer than an orchestrator's grace period, which then killed every worker with its requests in flight)."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

from testkit.server import ServerProcess
from tests.service.svc_helpers import make_rule_model


def started_workers(server: ServerProcess) -> int:
    """How many worker processes have started serving (each logs this line at info level)."""
    return len(re.findall(r"Started server process \[\d+\]", server.log))


def test_sigterm_during_a_rolling_restart_starts_no_further_worker(tmp_path: Path) -> None:
    model = make_rule_model(tmp_path / "rule.onnx")
    with ServerProcess(model, SEGMENT_WORKERS="3", SEGMENT_INTRA_OP_THREADS="1", SEGMENT_WORKER_THREADS="1",
                       log_level="info") as server:
        server.wait_ready(120)
        before = started_workers(server)
        assert before == 3, server.log
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while started_workers(server) == before:  # the first replacement is starting
            assert server.proc.poll() is None and time.monotonic() < deadline, server.log
            time.sleep(0.01)
        server.proc.send_signal(signal.SIGTERM)
        at_sigterm = started_workers(server)
        assert server.proc.wait(60) == 0, server.log
        server._reader.join(5)
        # Replaced before the signal: the first worker. After it: none (the two others were not restarted).
        assert started_workers(server) == at_sigterm == before + 1, server.log
        assert "Received SIGTERM" in server.log and "Stopping parent process" in server.log
