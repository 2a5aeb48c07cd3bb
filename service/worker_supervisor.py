"""The supervisor of several workers (`SEGMENT_WORKERS`): uvicorn's `Multiprocess`, with what one server of
several processes needs besides (see `WorkerSupervisor`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from socket import socket

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Process

from .results_shared import trim_worker_results
from .worker_backoff import Retries, crashed_soon, startup_failure
from .worker_census import Census, publish
from .worker_processes import WorkerProcesses

log = logging.getLogger(__name__)


class WorkerSupervisor(WorkerProcesses):
    """uvicorn's supervisor, plus:

    - a replacement that fails at startup (a crash's, or a SIGHUP restart's, when for instance the model file
      became unreadable meanwhile) is tried again, after a delay that doubles at each failure in a row (1 s, up to
      30 s), each failure logged, while the other workers serve. uvicorn stopped the whole server instead. Before
      any worker has served (a cold start) a startup failure still stops it (exit 3): the configuration is wrong,
      and an orchestrator's restarts and probes say so. Once no worker runs, every replacement failing, it stops
      too (exit 3). A worker killed before it was ready (out of memory, a crash in a device library, no answer to
      the health check) twice in a row fails at startup too: uvicorn started a replacement every round, for ever,
      and the census said nothing was wrong;
    - a worker that dies soon after it was ready (a crash loop: uvicorn replaced it at once, every time, each
      replacement loading the model) is replaced after the same growing delay, until one has served a while
      (service/worker_backoff.py); one that dies after serving longer is replaced at once;
    - each worker gets its slot (its CUDA device) from the supervisor: the lowest one no other worker holds, so
      a replacement takes its predecessor's, and a worker left past the count by SIGTTOU moves down where slots
      pick devices (`_relocate`; on CPU or one GPU it serves on where it is: a move would only load the model);
    - what the workers are told of the server (service/worker_census.py): the number it keeps, which SIGTTIN and
      SIGTTOU change and which each worker's share of the result cache follows, and the shortfall while a
      replacement fails or waits, which `/readyz` and `/metrics` report;
    - what a worker that is gone leaves behind is cleared (`_bury`): its metric files (its counts folded into the
      archive, `fold_dead_metrics`); its result files stay for the replacement on its slot, which adopts them, and
      a slot's folder goes once no worker holds the slot (`_drop_unkept_results`), or they would stay, past their
      TTL and beyond the bound, until the supervisor exits;
    - a restart of all workers (SIGHUP) stops each worker before starting its replacement (`restart_all`), and
      gives way to a SIGTERM or SIGINT that comes meanwhile;
    - a worker that dies while the supervisor awaits its answer to a health ping reads as dead at once. uvicorn
      keeps the parent's copy of the worker's end of the ping pipe open, so that wait saw no end-of-file and ran
      the whole health-check timeout (measured: a model that fails to load in both workers stopped the server
      after 2 s, or after 60 s when the ping raced the exit). The worker received its own copy when it was
      started (multiprocessing duplicates the descriptor as it pickles it), so the parent's is closed after.
    """

    def __init__(self, config: uvicorn.Config, sockets: list[socket], results_dir: Path | None = None,
                 metrics_dir: Path | None = None, census_dir: Path | None = None, result_bytes: int = 0,
                 slots_pick_devices: bool = True) -> None:
        super().__init__(config, sockets, results_dir, metrics_dir, slots_pick_devices)
        self.census_dir = census_dir
        self.result_bytes = result_bytes  # SEGMENT_RESULT_CACHE_BYTES: all workers' shares together
        self.gave_up = False  # stopped for startup failures: the exit status says so
        self.retries = Retries()  # by index in `processes`
        self._published: Census | None = None
        # The workers a SIGHUP restart has yet to replace: they still serve the model as it was before it.
        self._unrestarted: list[Process] = []

    @property
    def failed_to_start(self) -> bool:
        """Whether it stopped for startup failures (exit status 3)."""
        return self.gave_up

    def init_processes(self) -> None:
        self._publish()  # before the first worker stores a result: its share
        self.processes = [self._spawn(slot) for slot in range(self.processes_num)]
        self._release_worker_ends()
        self._publish()

    def restart_all(self) -> None:
        """Replace each worker in turn, stopping it before its replacement starts (the others serve meanwhile).

        uvicorn's own order (the replacement first, ready before the old worker stops) cannot keep the slots: the
        replacement's slot would be the old worker's, still held, so it took another, and two workers shared a
        CUDA device; and on a GPU the two would need both models' memory on one device. Like uvicorn's, the
        restart pauses at a replacement not ready in time, whose fate is then the keep-alive loop's (replaced if it
        dies; tried again later if it failed at startup), so that a model file that cannot be served leaves the
        workers not yet restarted serving the one before. Unlike uvicorn's, it goes on once that slot's worker is
        ready (`_resume_restart`): stopped there for good, the workers restarted and those not yet served two
        models until the next SIGHUP. It stops too once told to stop (`stopping`), so that a SIGTERM during a
        restart does not wait for every other worker's restart."""
        self._unrestarted = list(self.processes)
        self._restart_unrestarted()

    def _restart_unrestarted(self) -> None:
        """Replace the workers of `_unrestarted`, one at a time, until one's replacement is not ready in time."""
        for idx, old in enumerate(self.processes):
            if old not in self._unrestarted:
                continue
            if self.stopping:
                return
            old.terminate()
            old.join()  # it drains its requests meanwhile: a stop may come
            self._unrestarted.remove(old)
            self._bury([old.pid])
            if self.stopping:  # a replacement started now would load its model only to be stopped
                return
            self._start(idx)
            new = self.processes[idx]
            if self._wait_ready(new):
                continue
            if not self.stopping:
                why = "failed at startup" if new.exitcode is not None else "was not ready in time"
                log.error("worker [%s] %s; the restart waits there (%d workers not yet restarted serve on, as they "
                          "were) and goes on once a worker on that slot is ready", new.pid, why,
                          len(self._unrestarted))
            return

    def _resume_restart(self) -> None:
        """Go on with a restart that waited at a replacement (`restart_all`) once every worker it has started is
        ready: none waits for its next try, none is still starting."""
        self._unrestarted = [p for p in self._unrestarted if p in self.processes and p.process.is_alive()]
        if not self._unrestarted or self.stopping:
            return  # a worker not yet restarted that died was replaced as any other: with the file as it is now
        if all(p in self._unrestarted or self._seen_ready(p) for p in self.processes):
            log.info("the restart goes on: %d workers not yet restarted", len(self._unrestarted))
            self._restart_unrestarted()

    def keep_subprocess_alive(self) -> None:
        """uvicorn's round (a worker that does not answer is killed, one that is gone replaced), but a slot whose
        worker failed at startup, or died soon after it was ready, gets its next one later (see the class)."""
        if self.stopping:  # not only once handled: a worker replaced now would load its model only to be stopped
            return
        timeout = self.config.timeout_worker_healthcheck
        for idx, process in enumerate(self.processes):
            retry = self.retries.get(idx)
            if retry is not None and retry.waiting:
                if time.monotonic() >= retry.due:
                    self._start(idx)
                continue
            if process.is_alive(timeout=timeout):
                if self._seen_ready(process) and retry is not None:  # asked of every worker until it is ready
                    self.retries.ready(idx, process.pid, time.monotonic() - self._ready[process.pid])
                continue
            hung = process.process.is_alive()
            process.kill()  # hung, or gone already
            process.join()
            ready_at = self._ready.get(process.pid)
            failure = startup_failure(process.exitcode, ready_at is not None, hung, timeout)
            self._bury([process.pid])
            # Killed before it was ready: replaced at once the first time (an OOM kill as all load; or it became ready
            # since this loop last asked), a startup failure when its replacement is too.
            if failure is not None and (failure == "" or retry is not None):
                if not self._failed_start(idx, process, failure):
                    return
                continue
            if self.should_exit.is_set():
                return
            if failure is not None:
                log.info("Child process [%s] died%s before it was seen ready", process.pid, failure)
                self.retries.killed_before_ready(idx)  # no failure counted yet: the next one is
            else:
                log.info("Child process [%s] died", process.pid)
                if ready_at is not None and crashed_soon(served := time.monotonic() - ready_at):
                    log.error("%s; %d of %d workers running", self.retries.crashed_early(idx, process.pid, served),
                              self._live(), len(self.processes))
                    continue
                if ready_at is not None:  # it served long enough: its slot's streak is over, if this round had not
                    self.retries.slots.pop(idx, None)  # seen that yet
            self._start(idx)
        self._release_worker_ends()
        if self.retries.all_failing(len(self.processes)):
            log.error("stopping: no worker is left running, and every replacement fails at startup")
            self.gave_up = True
            self.should_exit.set()
        self._publish()
        self._resume_restart()
        self._publish()

    def _failed_start(self, idx: int, process: Process, how: str) -> bool:
        """Count and log a startup failure (`how`: its cause, if not uvicorn's startup failure); False when the
        server is to stop for it (nothing has served yet)."""
        # Asked here too: the loop's own look may not have come since the others became ready (a SIGHUP soon after).
        self._served = self._served or any(other is not process and self._seen_ready(other) for other in self.processes)
        # One killed at a cold start (out of memory as all load, say) may start on its next try: it is tried again.
        if not self._served and process.exitcode == STARTUP_FAILURE:
            log.error("worker [%s] failed to start before any worker served; stopping", process.pid)
            self.gave_up = True
            self.should_exit.set()
            return False
        log.error("%s; %d of %d workers running (the log above says why)",
                  self.retries.failed_start(idx, process.pid, how), self._live(), len(self.processes))
        return True

    def _start(self, idx: int) -> None:
        """Start `processes[idx]`'s next worker: its slot waits no longer."""
        super()._start(idx)
        if (retry := self.retries.get(idx)) is not None:
            retry.waiting = False

    def handle_ttin(self) -> None:
        """One worker more (SIGTTIN), in the census before it starts: the count is the worker's, as every share of
        the result cache, which shrinks (what a worker holds beyond its new share goes at once). Started as every
        worker is (`_spawn`: its slot, and its server's prompt stop), not by uvicorn's handler."""
        log.info("Received SIGTTIN, increasing the number of processes.")
        self._publish(configured=self.processes_num + 1)
        if self.results_dir is not None and self.result_bytes:
            trim_worker_results(self.results_dir, self.result_bytes // (self.processes_num + 1))
        self.processes_num += 1
        self.processes.append(self._spawn(self._free_slot(len(self.processes))))
        self._release_worker_ends()
        self._publish()

    def handle_ttou(self) -> None:
        """One worker fewer (SIGTTOU), gone like a dead one: a failing slot if any (one waiting for its next worker
        first), else the worker on the highest slot (uvicorn takes the last in its list: a serving one, beside a
        failing slot, left none running: exit 3). A worker then left on a slot past the count moves to the slot
        freed where slots pick devices (`_relocate`)."""
        if self.processes_num > 1:
            self._move_last(max(range(len(self.processes)), key=self._removal_rank))
        before = set(self.processes)
        super().handle_ttou()
        self.retries.slots.pop(len(self.processes), None)  # uvicorn removed the last one
        for gone in before - set(self.processes):
            self._slots.pop(gone, None)
            self._bury([gone.pid])
        self._drop_unkept_results()  # the slot dropped: no worker will adopt its results
        self._publish()  # after its files are gone: the others' shares grow into their room
        self._relocate()
        self._publish()

    def _removal_rank(self, idx: int) -> tuple[bool, bool, int]:
        retry = self.retries.get(idx)
        return retry is not None and retry.waiting, retry is not None, self._slot(idx)

    def _move_last(self, idx: int) -> None:
        """Put `processes[idx]` last, its retry with it (the retries are kept by index)."""
        self.processes.append(self.processes.pop(idx))
        self.retries.move_last(idx, len(self.processes) - 1)

    def _publish(self, configured: int | None = None) -> None:
        """Tell the workers of any change (service/worker_census.py)."""
        if self.census_dir is None:
            return
        r = self.retries
        census = Census(configured=configured or self.processes_num, live=self._live(), retrying=r.waiting(),
                        start_failures=r.start_failures, last_start_failure=r.last_start_failure,
                        early_crashes=r.early_crashes, last_early_crash=r.last_early_crash)
        if census != self._published:
            publish(self.census_dir, census)
            self._published = census

