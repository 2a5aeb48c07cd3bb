"""The supervisor of several workers (`SEGMENT_WORKERS`): uvicorn's `Multiprocess`, with what one server of
several processes needs besides (see `WorkerSupervisor`)."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from socket import socket

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess
from uvicorn.supervisors.multiprocess import Process

from .metrics_files import fold_dead_metrics
from .results_shared import remove_worker_results, trim_worker_results
from .worker_census import Census, publish

log = logging.getLogger(__name__)

STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
RETRY_FIRST_S = 1.0  # the delay before a failed replacement's next try, doubled at each failure in a row ...
RETRY_MAX_S = 30.0  # ... up to this


@dataclass
class _Retry:
    """A slot whose replacement failed at startup (`failures` in a row; 0: killed once before it was ready)."""

    failures: int = 0
    due: float = 0.0
    waiting: bool = False  # its failed process is still in `processes`, no new one started yet


class WorkerSupervisor(Multiprocess):
    """uvicorn's supervisor, plus:

    - a replacement that fails at startup (a crash's, or a SIGHUP restart's, when for instance the model file
      became unreadable meanwhile) is tried again, after a delay that doubles at each failure in a row (1 s, up to
      30 s), each failure logged, while the other workers serve. uvicorn stopped the whole server instead. Before
      any worker has served (a cold start) a startup failure still stops it (exit 3): the configuration is wrong,
      and an orchestrator's restarts and probes say so. Once no worker runs, every replacement failing, it stops
      too (exit 3). A worker killed before it was ready (out of memory, a crash in a device library, no answer to
      the health check) twice in a row fails at startup too: uvicorn started a replacement every round, for ever,
      and the census said nothing was wrong (`_startup_failure`);
    - what the workers are told of the server (service/worker_census.py): the number it keeps, which SIGTTIN and
      SIGTTOU change and which each worker's share of the result cache follows, and the shortfall while a
      replacement fails, which `/readyz` and `/metrics` report;
    - what a worker that is gone leaves behind is cleared (`_bury`): its metric files (its counts folded into the
      archive, `fold_dead_metrics`), and its result files, which only it knew and which would stay, past their TTL
      and beyond the bound, until the supervisor exits;
    - a restart of all workers (SIGHUP) stops each worker before starting its replacement (`restart_all`), and
      gives way to a SIGTERM or SIGINT that comes meanwhile;
    - a worker that dies while the supervisor awaits its answer to a health ping reads as dead at once. uvicorn
      keeps the parent's copy of the worker's end of the ping pipe open, so that wait saw no end-of-file and ran
      the whole health-check timeout (measured: a model that fails to load in both workers stopped the server
      after 2 s, or after 60 s when the ping raced the exit). The worker received its own copy when it was
      started (multiprocessing duplicates the descriptor as it pickles it), so the parent's is closed after.
    """

    def __init__(self, config: uvicorn.Config, sockets: list[socket], results_dir: Path | None = None,
                 metrics_dir: Path | None = None, census_dir: Path | None = None, result_bytes: int = 0) -> None:
        super().__init__(config, sockets)
        self.results_dir, self.metrics_dir, self.census_dir = results_dir, metrics_dir, census_dir
        self.result_bytes = result_bytes  # SEGMENT_RESULT_CACHE_BYTES: all workers' shares together
        self.gave_up = False  # stopped for startup failures: the exit status says so
        self._served = False  # whether any worker has finished its startup
        self._ready: set[int | None] = set()  # the pids of the workers seen ready (not asked again)
        self._retries: dict[int, _Retry] = {}  # by index in `processes`
        self._start_failures = 0
        self._last_failure: str | None = None
        self._published: Census | None = None

    @property
    def failed_to_start(self) -> bool:
        """Whether it stopped for startup failures (exit status 3)."""
        return self.gave_up

    @property
    def served(self) -> bool:
        """Whether any worker finished its startup: a startup failure is retried from then on."""
        return self._served

    def init_processes(self) -> None:
        self._publish()  # before the first worker stores a result: its share
        super().init_processes()
        self._release_worker_ends()
        self._publish()

    def restart_all(self) -> None:
        """Replace each worker in turn, stopping it before its replacement starts (the others serve meanwhile).

        uvicorn's own order (the replacement first, ready before the old worker stops) cannot keep the slots: the
        replacement found its predecessor's slot still locked and took another, so two workers shared a CUDA
        device and one device had none; and on a GPU the two would need both models' memory on one device. Like
        uvicorn's, the restart stops at a replacement not ready in time, whose fate is then the keep-alive loop's
        (replaced if it dies; tried again later if it failed at startup). It stops too once told to stop
        (`stopping`), so that a SIGTERM during a restart does not wait for every other worker's restart."""
        for idx, old in enumerate(self.processes):
            if self.stopping:
                return
            old.terminate()
            old.join()  # it drains its requests meanwhile: a stop may come
            self._bury([old.pid])
            if self.stopping:  # a replacement started now would load its model only to be stopped
                return
            self._start(idx)
            new = self.processes[idx]
            stop = _StopAsked(self)  # what it asks is `is_set()`
            if new.wait_until_ready(self.config.timeout_worker_healthcheck, stop):  # type: ignore[arg-type]
                self._ready.add(new.pid)
                self._served = True
            else:
                if not self.stopping:
                    why = "failed at startup" if new.exitcode is not None else "was not ready in time"
                    log.error("worker [%s] %s; the restart stops there", new.pid, why)
                return

    @property
    def stopping(self) -> bool:
        """Whether the server is to stop: told so, or a SIGTERM/SIGINT waits in the signal queue. The main loop
        handles the signals between its rounds, and a restart (SIGHUP) runs inside one: without this, a SIGTERM
        that came during a restart waited until every worker had been replaced (each loading its model), past
        an orchestrator's grace period, which then kills every worker, requests in flight and all."""
        return self.should_exit.is_set() or not STOP_SIGNALS.isdisjoint(self.signal_queue)

    def keep_subprocess_alive(self) -> None:
        """uvicorn's round (a worker that does not answer is killed, one that is gone replaced), but a worker that
        failed at startup is tried again later rather than stopping the server (see the class)."""
        if self.stopping:  # not only once handled: a worker replaced now would load its model only to be stopped
            return
        timeout = self.config.timeout_worker_healthcheck
        for idx, process in enumerate(self.processes):
            retry = self._retries.get(idx)
            if retry is not None and retry.waiting:
                if time.monotonic() >= retry.due:
                    self._start(idx)
                continue
            if process.is_alive(timeout=timeout):
                if self._seen_ready(process) and retry is not None:  # asked of every worker until it is ready
                    if retry.failures:
                        log.warning("worker [%s] started after %d failed tries", process.pid, retry.failures)
                    del self._retries[idx]
                continue
            hung = process.process.is_alive()
            process.kill()  # hung, or gone already
            process.join()
            failure = _startup_failure(process.exitcode, process.pid in self._ready, hung, timeout)
            self._bury([process.pid])
            # Killed before it was ready: replaced at once the first time (an OOM kill as all load; or it became ready
            # since this loop last asked), a startup failure when its replacement is too.
            if failure is not None and (failure == "" or retry is not None):
                if not self._failed_start(idx, process, failure):
                    return
                continue
            if self.should_exit.is_set():
                return
            if failure is None:
                log.info("Child process [%s] died", process.pid)
            else:
                log.info("Child process [%s] died%s before it was seen ready", process.pid, failure)
                self._retries[idx] = _Retry()  # no failure counted yet: the next one is
            self._start(idx)
        self._release_worker_ends()
        if self._retries and all(idx in self._retries and self._retries[idx].waiting
                                 for idx in range(len(self.processes))):
            log.error("stopping: no worker is left running, and every replacement fails at startup")
            self.gave_up = True
            self.should_exit.set()
        self._publish()

    def _failed_start(self, idx: int, process: Process, how: str) -> bool:
        """Count and log a startup failure (`how`: its cause, if not uvicorn's own startup failure); False when the
        server is to stop for it (nothing has served yet)."""
        self._start_failures += 1
        # Asked here too: the loop's own look may not have come since the others became ready (a SIGHUP soon after).
        self._served = self._served or any(other is not process and self._seen_ready(other) for other in self.processes)
        # One killed at a cold start (out of memory as all load, say) may start on its next try: it is tried again.
        if not self._served and process.exitcode == STARTUP_FAILURE:
            log.error("worker [%s] failed to start before any worker served; stopping", process.pid)
            self.gave_up = True
            self.should_exit.set()
            return False
        retry = self._retries.setdefault(idx, _Retry())
        retry.failures += 1
        delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (retry.failures - 1))
        retry.due, retry.waiting = time.monotonic() + delay, True
        at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._last_failure = (f"worker [{process.pid}] failed at startup{how} at {at} ({retry.failures} in a row); "
                              f"next try in {delay:g} s")
        log.error("%s; %d of %d workers running (the log above says why)", self._last_failure, self._live(),
                  len(self.processes))
        return True

    def _start(self, idx: int) -> None:
        """Start a new worker in place of `processes[idx]` (which is gone)."""
        process = Process(self.config, self.sockets)
        process.start()
        self.processes[idx] = process
        self._release_worker_ends()
        if (retry := self._retries.get(idx)) is not None:
            retry.waiting = False

    def _seen_ready(self, process: Process) -> bool:
        """Whether `process` has finished its startup (asked of it until it says so once)."""
        if process.pid in self._ready:
            return True
        if process.process.is_alive() and process.is_ready(timeout=self.config.timeout_worker_healthcheck):
            self._ready.add(process.pid)
            self._served = True
            return True
        return False

    def handle_ttin(self) -> None:
        """One worker more (SIGTTIN), in the census before it starts: its slot follows the count, as every share of
        the result cache does, which shrinks (what a worker holds beyond its new share goes at once)."""
        log.info("Received SIGTTIN, increasing the number of processes.")
        self.processes_num += 1
        self._publish()
        if self.results_dir is not None and self.result_bytes:
            trim_worker_results(self.results_dir, self.result_bytes // self.processes_num)
        process = Process(self.config, self.sockets)
        process.start()
        self.processes.append(process)
        self._release_worker_ends()
        self._publish()

    def handle_ttou(self) -> None:
        """One worker fewer (SIGTTOU), gone like a dead one: a slot whose replacement fails at startup if any, else
        the last added (uvicorn's choice, a serving one, left none running beside a failing slot: exit 3)."""
        if self.processes_num > 1 and self._retries:
            self._move_last(max(self._retries, key=lambda idx: (self._retries[idx].waiting, idx)))
        before = self._pids()
        super().handle_ttou()
        self._retries.pop(len(self.processes), None)  # uvicorn removed the last one
        self._bury(before - self._pids())
        self._publish()  # after its files are gone: the others' shares grow into their room

    def _move_last(self, idx: int) -> None:
        """Put `processes[idx]` last, its retry with it (the retries are kept by index)."""
        last = len(self.processes) - 1
        self.processes.append(self.processes.pop(idx))
        self._retries = {last if i == idx else i - (i > idx): retry for i, retry in self._retries.items()}

    def _live(self) -> int:
        return sum(process.process.is_alive() for process in self.processes)

    def _publish(self) -> None:
        """Tell the workers of any change (service/worker_census.py)."""
        if self.census_dir is None:
            return
        census = Census(configured=self.processes_num, live=self._live(),
                        retrying=sum(retry.waiting for retry in self._retries.values()),
                        start_failures=self._start_failures, last_start_failure=self._last_failure)
        if census != self._published:
            publish(self.census_dir, census)
            self._published = census

    def _pids(self) -> set[int | None]:
        return {p.pid for p in self.processes}

    def _bury(self, pids: Iterable[int | None]) -> None:
        """Clear what the workers `pids`, which are gone, left in the shared directories."""
        for pid in pids:
            self._ready.discard(pid)  # a later process may have its pid
            if pid is None:
                continue
            if self.metrics_dir is not None:
                fold_dead_metrics(self.metrics_dir, pid)
            if self.results_dir is not None:
                remove_worker_results(self.results_dir, pid)

    def _release_worker_ends(self) -> None:
        for process in self.processes:
            process.child_conn.close()  # idempotent; uvicorn closes it again on terminate/kill


class _StopAsked:
    """The stop flag `Process.wait_until_ready` looks at (`is_set()`): the supervisor's `stopping`."""

    def __init__(self, supervisor: WorkerSupervisor) -> None:
        self._supervisor = supervisor

    def is_set(self) -> bool:
        return self._supervisor.stopping


def _startup_failure(exitcode: int | None, ready: bool, hung: bool, timeout: float) -> str | None:
    """How a worker that is gone failed at startup ('' for uvicorn's exit status 3); None when it had been ready,
    or stopped as asked (SIGTERM or SIGINT: its watchdog's own stop, an operator's) or with a status of its own."""
    if exitcode == STARTUP_FAILURE:
        return ""
    if ready or exitcode is None or exitcode >= 0:
        return None
    if hung:  # the supervisor killed it
        return f" (no answer to the health check in {timeout:g} s)"
    if -exitcode in STOP_SIGNALS:
        return None
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    return f" (killed by {name})"
