"""A process whose model runs have failed or hung for SEGMENT_INFERENCE_UNHEALTHY_AFTER_S stops itself, so that a
fresh one replaces it (SEGMENT_EXIT_WHEN_UNHEALTHY, on by default).

A device context that failed (a CUDA context after an illegal memory access) or hung does not recover inside the
process; only a new process gets a new context. /healthz tells a Kubernetes liveness probe, but Docker's restart
policies, systemd and the worker supervisor (`SEGMENT_WORKERS`) replace a process only when it exits. So the process
sends itself SIGTERM: uvicorn's graceful shutdown answers what is in flight and drains the queue. If that has not
ended the process within its bounds (the graceful-shutdown and drain timeouts, plus a margin), it exits at once with
status 4.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading

from .inference_guard import InferenceHealth

log = logging.getLogger(__name__)

EXIT_UNHEALTHY = 4  # the exit status when the graceful stop did not finish in time
MARGIN_S = 5.0


async def stop_when_unhealthy(health: InferenceHealth, graceful_s: float, margin_s: float = MARGIN_S) -> None:
    """Wait until `health` says the process should be replaced, then stop it: SIGTERM to itself, and a hard exit
    if the process is still there `graceful_s` + `margin_s` later."""
    interval_s = min(1.0, health.unhealthy_after_s / 4)
    while (reason := health.unhealthy) is None:
        await asyncio.sleep(interval_s)
    log.error("%s: model runs %s for %.0fs (%s); stopping, so that a new process with a new device context "
              "replaces this one", reason, "failed" if reason == "inference_failing" else "hung",
              health.unhealthy_after_s, health.last_error or "no error: a run did not return")
    timer = threading.Timer(graceful_s + margin_s, _exit_now, (reason,))
    timer.daemon = True
    timer.start()
    os.kill(os.getpid(), signal.SIGTERM)


def _exit_now(reason: str) -> None:
    log.error("%s: the graceful stop did not finish in time; exiting now", reason)
    logging.shutdown()
    os._exit(EXIT_UNHEALTHY)
