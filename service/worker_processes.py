"""The worker processes of a supervisor of several (service/worker_supervisor.py builds its policy on this):
each started on its slot, when each was seen ready, a worker left past the count moved to a free slot where slots
pick devices, what a worker that is gone leaves behind cleared (its results kept for its slot's next worker), and
the listening socket let go of by every process as soon as the server stops."""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from socket import socket

import uvicorn
from uvicorn.supervisors import Multiprocess
from uvicorn.supervisors.multiprocess import Process

from .metrics_files import fold_dead_metrics
from .results_shared import remove_unkept_results
from .server import DrainingServer
from .worker_backoff import STOP_SIGNALS
from .worker_slots import SLOT_VARIABLE, lowest_free

log = logging.getLogger(__name__)


class WorkerProcess(Process):
    """uvicorn's worker process, whose server lets go of the shared listening socket as its stop begins, at once
    if its app is still starting (`DrainingServer`), and which stops as on SIGTERM when its supervisor is gone.
    Spawned by reference: importable by name."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = DrainingServer(config=self.config)
        return self._server

    def target(self, sockets: list[socket] | None = None) -> None:  # runs in the worker
        parent = multiprocessing.parent_process()
        if parent is not None:
            threading.Thread(target=_stop_without_supervisor, args=(parent.sentinel,), name="supervisor-watch",
                             daemon=True).start()
        super().target(sockets)


def _stop_without_supervisor(sentinel: int) -> None:
    """Once the supervisor has ended (SIGKILL, or the OOM killer: it had no time to stop its workers), stop this
    worker as the supervisor would have, by SIGTERM: drained, then gone. Left alone, the workers of a killed
    supervisor served on for ever, nothing replacing one that died, and held the port, so the next `segment-serve`
    failed with "address already in use". The parent's sentinel rather than PR_SET_PDEATHSIG: that fires when the
    *thread* that started the worker ends, and rather than polling getppid: it wakes only when the parent is gone."""
    multiprocessing.connection.wait([sentinel])
    log.warning("the supervisor is gone: stopping this worker as on SIGTERM (drained, then exit)")
    os.kill(os.getpid(), signal.SIGTERM)


class WorkerProcesses(Multiprocess):
    """uvicorn's `Multiprocess`, whose workers each hold a slot that the supervisor hands out (see
    service/worker_slots.py), and whose readiness it remembers (`_ready`, `served`). `slots_pick_devices`: whether
    a worker's slot picks its CUDA device (several devices, the CUDA provider there; `workers.slots_pick_devices`)."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket], results_dir: Path | None = None,
                 metrics_dir: Path | None = None, slots_pick_devices: bool = True) -> None:
        super().__init__(config, sockets)
        self.results_dir, self.metrics_dir = results_dir, metrics_dir
        self.slots_pick_devices = slots_pick_devices
        self._served = False  # whether any worker has finished its startup
        self._ready: dict[int | None, float] = {}  # pid -> when the worker was seen ready (not asked again)
        self._slots: dict[Process, int] = {}  # each worker's slot

    @property
    def served(self) -> bool:
        """Whether any worker finished its startup: a startup failure is retried from then on."""
        return self._served

    @property
    def stopping(self) -> bool:
        """Whether the server is to stop: told so, or a SIGTERM/SIGINT waits in the signal queue. The main loop
        handles the signals between its rounds, and a restart (SIGHUP) runs inside one: without this, a SIGTERM
        that came during a restart waited until every worker had been replaced (each loading its model), past
        an orchestrator's grace period, which then kills every worker, requests in flight and all."""
        return self.should_exit.is_set() or not STOP_SIGNALS.isdisjoint(self.signal_queue)

    def _spawn(self, slot: int) -> Process:
        """Start a worker on `slot`, which reaches it in the environment it is spawned with (the `worker_slot`
        setting): the supervisor starts its workers one at a time, and nothing else of it reads that variable."""
        os.environ[SLOT_VARIABLE] = str(slot)
        process = WorkerProcess(self.config, self.sockets)
        process.start()
        self._slots[process] = slot
        return process

    def terminate_all(self) -> None:
        """Stop every worker (the server stops), having first closed the supervisor's copy of the listening socket.

        The kernel keeps a socket listening while any process holds it, completing new connections into its
        backlog: the supervisor's copy, closed only after the last worker had drained, kept the port taking
        connections that no one would accept (each reset when the supervisor exited, a POST's client unable to
        tell whether it had run). Each worker closes its own copy as its stop begins (`WorkerProcess`), so that new
        connections are refused from then on, as a single server's are, while those accepted are answered. Until
        then the socket stays open: a SIGHUP restart and a dead worker's replacement take it from here."""
        for sock in self.sockets:
            sock.close()
        super().terminate_all()

    def _free_slot(self, idx: int) -> int:
        """The slot for a new worker at `processes[idx]`: the lowest that no other worker of the list holds."""
        return lowest_free(self._slots[other] for i, other in enumerate(self.processes) if i != idx)

    def _start(self, idx: int) -> None:
        """Start a new worker in place of `processes[idx]` (which is gone)."""
        slot = self._free_slot(idx)
        self._slots.pop(self.processes[idx], None)
        self.processes[idx] = self._spawn(slot)
        self._release_worker_ends()
        self._drop_unkept_results()  # the gone worker's slot, where its replacement took another

    def _seen_ready(self, process: Process) -> bool:
        """Whether `process` has finished its startup (asked of it until it says so once)."""
        if process.pid in self._ready:
            return True
        if process.process.is_alive() and process.is_ready(timeout=self.config.timeout_worker_healthcheck):
            self._ready[process.pid] = time.monotonic()
            self._served = True
            return True
        return False

    def _wait_ready(self, process: Process) -> bool:
        """Wait until the new worker `process` is ready (True), or gone, not ready in time or told to stop."""
        stop = _StopAsked(self)  # what it asks is `is_set()`
        if not process.wait_until_ready(self.config.timeout_worker_healthcheck, stop):  # type: ignore[arg-type]
            return False
        self._ready[process.pid] = time.monotonic()
        self._served = True
        return True

    def _relocate(self) -> None:
        """Move each live worker on a slot past the count to the lowest free slot: its replacement starts there
        and, once ready, it stops (the slots differ: no wait for a lock, and it serves meanwhile). Else two
        workers share a device while another device has none, until both are replaced. Where the replacement
        is not ready in time, the worker stays where it is.

        Only where slots pick devices: elsewhere (CPU, one GPU) every slot is alike, and a move would load the
        model once more for nothing. The worker serves on under its slot, which no other worker holds (its
        lock): a new worker takes the lowest free slot as ever, and a replacement of this one a slot below."""
        if not self.slots_pick_devices:
            for idx, process in enumerate(self.processes):
                if self._slot(idx) >= len(self.processes) and process.process.is_alive():
                    log.info("worker [%s] serves on under slot %d, past the %d workers kept: slots pick no device",
                             process.pid, self._slot(idx), len(self.processes))
            return
        for idx, old in enumerate(self.processes):
            if self._slot(idx) < len(self.processes) or not old.process.is_alive() or self.stopping:
                continue
            new = self._spawn(self._free_slot(idx))
            self._release_worker_ends()
            if not self._wait_ready(new):
                new.kill()
                new.join()
                self._slots.pop(new)
                self._bury([new.pid])
                self._drop_unkept_results()
                log.error("worker [%s] stays on slot %d: its replacement on a free slot was not ready", old.pid,
                          self._slot(idx))
                return
            log.info("worker [%s] on slot %d replaces worker [%s] on slot %d, past the %d workers kept", new.pid,
                     self._slots[new], old.pid, self._slot(idx), len(self.processes))
            old.terminate()
            old.join()
            self._slots.pop(old)
            self._bury([old.pid])
            self.processes[idx] = new
            self._drop_unkept_results()  # its old slot's results: none of them are moved along

    def _slot(self, idx: int) -> int:
        return self._slots[self.processes[idx]]

    def _live(self) -> int:
        return sum(process.process.is_alive() for process in self.processes)

    def _bury(self, pids: Iterable[int | None]) -> None:
        """Clear what the workers `pids`, which are gone, left in the shared directories: their metric files. Their
        result files stay, in their slots' folders, for the replacements to adopt (`_drop_unkept_results`)."""
        for pid in pids:
            self._ready.pop(pid, None)  # a later process may have its pid
            if pid is None:
                continue
            if self.metrics_dir is not None:
                fold_dead_metrics(self.metrics_dir, pid)

    def _drop_unkept_results(self) -> None:
        """Remove the result folders of the slots that no worker of the list holds, live or awaiting its next start
        (SIGTTOU, a worker moved down a slot, a replacement given another slot): no worker will adopt them. Those of
        a worker that died stay while its slot waits for its replacement, readable by the others meanwhile."""
        if self.results_dir is not None:
            remove_unkept_results(self.results_dir, self._slots.values())

    def _release_worker_ends(self) -> None:
        """Close the parent's copy of each worker's end of the ping pipe (see WorkerSupervisor)."""
        for process in self.processes:
            process.child_conn.close()  # idempotent; uvicorn closes it again on terminate/kill


class _StopAsked:
    """The stop flag `Process.wait_until_ready` looks at (`is_set()`): the supervisor's `stopping`."""

    def __init__(self, supervisor: WorkerProcesses) -> None:
        self._supervisor = supervisor

    def is_set(self) -> bool:
        return self._supervisor.stopping
