"""Several server processes on one port (`SEGMENT_WORKERS`): one interpreter's GIL and event loop are not the limit.

One process runs Python (HTTP parsing, the app, the codec and batching glue) on one interpreter, so however many
cores and GPUs a host has, the Python part of every request is serialised by one GIL. N workers are N complete
servers (each with its own model sessions, batcher, queue bounds and share of the result cache) that accept
connections from one listening socket, supervised by uvicorn's `Multiprocess` (service/worker_supervisor.py): it
restarts a worker that dies, tries again later a replacement that fails at startup while the others serve, stops
them all on SIGTERM/SIGINT (the port refuses new connections from then on, and each worker drains like a single
server) and gives up if no worker can start.

Metrics are summed over the workers with prometheus-client's multiprocess mode (a private directory of
memory-mapped files, `PROMETHEUS_MULTIPROC_DIR`), so any worker's `/metrics` answers for all of them. The files
of a worker that is gone are folded into the supervisor's archive (service/metrics_files.py).

On a host with several GPUs the workers spread over them: each worker holds one slot for its life, which the supervisor
hands out (service/worker_slots.py), and slot k runs on device k mod the number of devices, so a replacement takes the
device of the worker it replaces (on SIGHUP too: each worker stops before its replacement starts), and after SIGTTOU a
worker left past the count moves to a lower slot. Where slots pick no device (the CPU, one GPU) a worker past the count
serves on where it is. `SEGMENT_WORKERS=auto` (the default) starts one worker per device when the CUDA provider is
there.

The shared files live in a private folder that the supervisor and its workers hold while they run; a server that
starts sweeps away the folders of servers killed outright (service/worker_shared.py).
"""

from __future__ import annotations

import logging
import os
from socket import socket
from typing import IO, Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from .http_protocol import HardenedHttpToolsProtocol
from .log_format import configure_logging, logged_app
from .results_shared import SharedResultsCache
from .server import answer_cut_off, quiet_startup_failure, server_options
from .settings import Settings
from .worker_census import CensusCollector, kept_workers, read_census
from .worker_shared import METRICS_ROOM, hold, shared_folder
from .worker_slots import SLOTS_DIR_VARIABLE, hold_slot, supervisor_dir
from .worker_supervisor import WorkerSupervisor

log = logging.getLogger(__name__)


class WorkerHttpProtocol(HardenedHttpToolsProtocol):
    """The hardened protocol, importable by name: a spawned worker cannot unpickle the class `configured()`
    builds, so each worker's app factory sets these limits from its own settings before it accepts a connection."""


_held: list[IO[Any]] = []  # this worker's slot lock and its hold on the shared folder, kept until the process ends


def worker_app() -> Any:
    """uvicorn's app factory in each worker: the settings from the environment the supervisor passed on, and
    this worker's slot (its CUDA device)."""
    from .app import create_app  # the supervisor itself never loads the app

    settings = Settings()
    configure_logging(settings.log_format, settings.log_level, worker=True)
    directory = supervisor_dir()
    if directory is not None:
        _held.append(hold(directory.parent))  # the shared folder is in use while this worker runs
        # The count the supervisor keeps now: SIGTTIN and SIGTTOU change it, the environment has the first one
        # (its codec threads, its share of the result cache).
        if (census := read_census(directory)) is not None:
            settings = settings.model_copy(update={"workers": census.configured})
        slot = settings.worker_slot or 0  # the supervisor's choice (SEGMENT_WORKER_SLOT)
        _held.append(hold_slot(directory, slot))
        log.info("worker slot %d: CUDA device %d (if the CUDA provider runs)", slot, settings.cuda_device())
    app = create_app(settings, warm_before_serving=True)  # siblings serve meanwhile (`_until_warm`)
    service = app.state.service
    if directory is not None:  # what the supervisor tells of the whole server (service/worker_census.py)
        service.metrics.register(CensusCollector(directory))
        if isinstance(service.cache, SharedResultsCache):  # its share follows the number of workers
            service.cache.follow(settings.result_cache_bytes, kept_workers(directory))
    count_rejection = service.metrics.count_rejection
    WorkerHttpProtocol.apply_limits(settings, count_rejection)
    # as `build_config` does for one process
    return logged_app(answer_cut_off(quiet_startup_failure(app), count_rejection), settings.log_format)


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


def slots_pick_devices(settings: Settings) -> bool:
    """Whether a worker's slot picks its CUDA device: several devices, and onnxruntime's CUDA provider there (asked
    only then, as `worker_count` does). Elsewhere every slot runs the same (the CPU, or the one GPU)."""
    return len(settings.cuda_device_list()) > 1 and _cuda_available(settings.providers)


def serve_workers(settings: Settings, overrides: dict[str, Any]) -> int:
    """Run `settings.workers` workers (a count, not 'auto') on one socket until told to stop; the exit status
    (3: a worker failed at startup before any served, or later every one of them did).

    `overrides` (command-line options) reach the workers as the environment variables they stand for."""
    for name, value in {**overrides, "workers": settings.workers}.items():
        os.environ[f"SEGMENT_{name.upper()}"] = str(value)
    with shared_folder(settings.result_cache_bytes + METRICS_ROOM) as shared:  # private: 0700
        metrics_dir, results_dir, slots_dir = shared / "metrics", shared / "results", shared / "slots"
        for directory in (metrics_dir, results_dir, slots_dir):
            directory.mkdir()
        # Each worker process imports prometheus-client afresh (spawn), so it sees this before any metric exists.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        os.environ["SEGMENT_RESULTS_DIR"] = str(results_dir)
        os.environ[SLOTS_DIR_VARIABLE] = str(slots_dir)
        config = worker_config(settings)
        sock: socket = config.bind_socket()
        with sock:  # closed already once the supervisor stops (`terminate_all`): a stop refuses new connections
            supervisor = WorkerSupervisor(config, sockets=[sock], results_dir=results_dir, metrics_dir=metrics_dir,
                                          census_dir=slots_dir, result_bytes=settings.result_cache_bytes,
                                          slots_pick_devices=slots_pick_devices(settings))
            supervisor.run()
    if supervisor.failed_to_start:
        if not supervisor.served:  # else the supervisor said why it stopped
            log.error("cannot start: a worker failed at startup (its log says why)")
        return STARTUP_FAILURE
    return 0
