"""Several server processes on one port (`SEGMENT_WORKERS`): one interpreter's GIL and event loop are not the limit.

One process runs Python (HTTP parsing, the app, the codec and batching glue) on one interpreter, so however many
cores and GPUs a host has, the Python part of every request is serialised by one GIL. N workers are N complete
servers (each with its own model sessions, batcher, queue bounds and result cache) that accept connections from
one listening socket, supervised by uvicorn's own `Multiprocess`: it restarts a worker that dies, stops them all
on SIGTERM/SIGINT (each drains like a single server) and gives up if a worker cannot start.

Metrics are summed over the workers with prometheus-client's multiprocess mode (a private directory of
memory-mapped files, `PROMETHEUS_MULTIPROC_DIR`), so any worker's `/metrics` answers for all of them. The files
of a worker that is gone are folded into the supervisor's archive (service/metrics_files.py).

On a host with several GPUs the workers spread over them: each worker holds one slot (a lock file) for its life,
and slot k runs on device k mod the number of devices, so a replacement takes the device of the worker it
replaces (on SIGHUP too: each worker stops before its replacement starts). `SEGMENT_WORKERS=auto` (the default)
starts one worker per device when the CUDA provider is there.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterable
from pathlib import Path
from socket import socket
from typing import IO, Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess
from uvicorn.supervisors.multiprocess import Process

from .http_protocol import HardenedHttpToolsProtocol
from .metrics_files import fold_dead_metrics
from .results_shared import remove_worker_results
from .server import answer_cut_off, quiet_startup_failure, server_options
from .settings import Settings
from .worker_slots import SLOTS_DIR_VARIABLE, claim_slot

log = logging.getLogger(__name__)


class WorkerHttpProtocol(HardenedHttpToolsProtocol):
    """The hardened protocol, importable by name: a spawned worker cannot unpickle the class `configured()`
    builds, so each worker's app factory sets these limits from its own settings before it accepts a connection."""


_held_slot: IO[str] | None = None  # this worker's slot lock, held until the process ends
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


def worker_app() -> Any:
    """uvicorn's app factory in each worker: the settings from the environment the supervisor passed on, and
    this worker's slot (its CUDA device)."""
    global _held_slot
    from .app import create_app  # the supervisor itself never loads the app

    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    slots = os.environ.get(SLOTS_DIR_VARIABLE)
    if slots:
        slot, _held_slot = claim_slot(Path(slots), settings.worker_total())
        settings = settings.model_copy(update={"worker_slot": slot})
        log.info("worker slot %d: CUDA device %d (if the CUDA provider runs)", slot, settings.cuda_device())
    app = create_app(settings, warm_before_serving=True)  # siblings serve meanwhile (`_until_warm`)
    count_rejection = app.state.service.metrics.count_rejection
    WorkerHttpProtocol.apply_limits(settings, count_rejection)
    return answer_cut_off(quiet_startup_failure(app), count_rejection)  # as `build_config` does for one process


class WorkerSupervisor(Multiprocess):
    """uvicorn's supervisor, plus:

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
                 metrics_dir: Path | None = None) -> None:
        super().__init__(config, sockets)
        self.results_dir, self.metrics_dir = results_dir, metrics_dir

    def init_processes(self) -> None:
        super().init_processes()
        self._release_worker_ends()

    def restart_all(self) -> None:
        """Replace each worker in turn, stopping it before its replacement starts (the others serve meanwhile).

        uvicorn's own order (the replacement first, ready before the old worker stops) cannot keep the slots: the
        replacement found its predecessor's slot still locked and took another, so two workers shared a CUDA
        device and one device had none; and on a GPU the two would need both models' memory on one device. Like
        uvicorn's, the restart stops at a replacement not ready in time, whose fate is then the keep-alive loop's
        (replaced if it dies; a startup failure stops the server, as at the first start). It stops too once told
        to stop (`stopping`), so that a SIGTERM during a restart does not wait for every other worker's restart."""
        for idx, old in enumerate(self.processes):
            if self.stopping:
                return
            old.terminate()
            old.join()
            self._bury([old.pid])
            new = Process(self.config, self.sockets)
            new.start()
            self.processes[idx] = new
            self._release_worker_ends()
            stop = _StopAsked(self)  # what it asks is `is_set()`
            if not new.wait_until_ready(self.config.timeout_worker_healthcheck, stop):  # type: ignore[arg-type]
                if not self.stopping:
                    log.error("worker [%s] was not ready in time; the restart stops there", new.pid)
                return

    @property
    def stopping(self) -> bool:
        """Whether the server is to stop: told so, or a SIGTERM/SIGINT waits in the signal queue. The main loop
        handles the signals between its rounds, and a restart (SIGHUP) runs inside one: without this, a SIGTERM
        that came during a restart waited until every worker had been replaced (each loading its model), past
        an orchestrator's grace period, which then kills every worker, requests in flight and all."""
        return self.should_exit.is_set() or not STOP_SIGNALS.isdisjoint(self.signal_queue)

    def keep_subprocess_alive(self) -> None:
        before = self._pids()
        super().keep_subprocess_alive()
        self._release_worker_ends()
        self._bury(before - self._pids())

    def handle_ttou(self) -> None:  # one worker fewer (SIGTTOU): it is gone like a dead one
        before = self._pids()
        super().handle_ttou()
        self._bury(before - self._pids())

    def _pids(self) -> set[int | None]:
        return {p.pid for p in self.processes}

    def _bury(self, pids: Iterable[int | None]) -> None:
        """Clear what the workers `pids`, which are gone, left in the shared directories."""
        for pid in pids:
            if pid is None:
                continue
            if self.metrics_dir is not None:
                fold_dead_metrics(self.metrics_dir, pid)
            if self.results_dir is not None:
                remove_worker_results(self.results_dir, pid)

    def _release_worker_ends(self) -> None:
        for process in self.processes:
            process.child_conn.close()  # idempotent; uvicorn closes it again on terminate/kill

    @property
    def failed_to_start(self) -> bool:
        return any(p.exitcode == STARTUP_FAILURE for p in self.processes)


class _StopAsked:
    """The stop flag `Process.wait_until_ready` looks at (`is_set()`): the supervisor's `stopping`."""

    def __init__(self, supervisor: WorkerSupervisor) -> None:
        self._supervisor = supervisor

    def is_set(self) -> bool:
        return self._supervisor.stopping


def _cuda_available(providers: str) -> bool:
    """Whether `providers` (the setting) can give the CUDA provider: asked of onnxruntime only then."""
    spec = providers.strip().lower()
    if spec != "auto" and "cuda" not in spec:
        return False
    import onnxruntime  # here: only where several CUDA devices make the answer matter

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def worker_count(settings: Settings) -> int:
    """`SEGMENT_WORKERS`, 'auto' resolved: one worker per CUDA device the server may use where onnxruntime's CUDA
    provider is available (Triton's default places a model instance on every GPU), else one."""
    if settings.workers != "auto":
        return settings.workers
    devices = settings.cuda_device_list()
    return len(devices) if len(devices) > 1 and _cuda_available(settings.providers) else 1


def worker_config(settings: Settings) -> uvicorn.Config:
    """The uvicorn configuration of the workers: the single server's options, the app and protocol by import
    name (a spawned worker imports them itself)."""
    return uvicorn.Config("service.workers:worker_app", factory=True, http="service.workers:WorkerHttpProtocol",
                          workers=settings.worker_total(), timeout_worker_healthcheck=settings.worker_healthcheck_s,
                          **server_options(settings))


METRICS_ROOM = 64 * 1024 * 1024  # prometheus-client's files: a few MB per worker at most


def shared_parent(room: int) -> str | None:
    """Where the workers' shared files go: /dev/shm (memory; every /segment writes its result there) when it has
    `room` free, else the temporary directory (None). A container's /dev/shm is often 64 MB, too small for the
    default result cache."""
    shm = Path("/dev/shm")
    try:
        if os.access(shm, os.W_OK) and shutil.disk_usage(shm).free >= room:
            return str(shm)
    except OSError:
        pass
    return None


def serve_workers(settings: Settings, overrides: dict[str, Any]) -> int:
    """Run `settings.workers` workers (a count, not 'auto') on one socket until told to stop; the exit status
    (3: one could not start).

    `overrides` (command-line options) reach the workers as the environment variables they stand for."""
    for name, value in {**overrides, "workers": settings.workers}.items():
        os.environ[f"SEGMENT_{name.upper()}"] = str(value)
    parent = shared_parent(settings.result_cache_bytes + METRICS_ROOM)
    with tempfile.TemporaryDirectory(prefix="segment-", dir=parent) as shared:  # private: 0700
        metrics_dir, results_dir, slots_dir = Path(shared, "metrics"), Path(shared, "results"), Path(shared, "slots")
        for directory in (metrics_dir, results_dir, slots_dir):
            directory.mkdir()
        # Each worker process imports prometheus-client afresh (spawn), so it sees this before any metric exists.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        os.environ["SEGMENT_RESULTS_DIR"] = str(results_dir)
        os.environ[SLOTS_DIR_VARIABLE] = str(slots_dir)
        config = worker_config(settings)
        sock: socket = config.bind_socket()
        supervisor = WorkerSupervisor(config, sockets=[sock], results_dir=results_dir, metrics_dir=metrics_dir)
        supervisor.run()
        sock.close()
    if supervisor.failed_to_start:
        log.error("cannot start: a worker failed at startup (its log says why)")
        return STARTUP_FAILURE
    return 0
