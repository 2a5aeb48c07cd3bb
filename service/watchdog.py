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
from collections.abc import Callable

from .inference_guard import InferenceHealth

log = logging.getLogger(__name__)

EXIT_UNHEALTHY = 4  # the exit status when the graceful stop did not finish in time
MARGIN_S = 5.0


async def stop_when_unhealthy(health: InferenceHealth, graceful_s: float, margin_s: float = MARGIN_S,
                              warming: Callable[[], bool] = lambda: False) -> None:
    """Wait until `health` says the process should be replaced, then stop it: SIGTERM to itself, and a hard exit
    if the process is still there `graceful_s` + `margin_s` later. `warming`: whether the process has not been warm
    yet (its model runs so far are the startup's), which changes what the log says."""
    interval_s = min(1.0, health.unhealthy_after_s / 4)
    while (reason := health.unhealthy) is None:
        await asyncio.sleep(interval_s)
    if reason == "inference_stuck" and warming():
        # A run that outlasts the setting before the process was ever warm is as likely a setting below this model's
        # run time as a hung device: the process stops either way (a restart is what a hung device needs), but the
        # log must say which setting to raise rather than only blame the device.
        log.error("inference_stuck: a startup model run has been in flight for %.3gs, longer than "
                  "SEGMENT_INFERENCE_UNHEALTHY_AFTER_S=%gs; stopping. The device hangs, or this model's runs take "
                  "longer than that setting allows on this device: then raise it", health.running_for_s,
                  health.unhealthy_after_s)
    else:
        log.error("%s: model runs %s for %gs (%s); stopping, so that a new process with a new device context "
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
