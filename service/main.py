"""`segment-serve`: run the service under uvicorn with settings from the environment (SEGMENT_*).

SIGTERM/SIGINT: the server stops listening (new connections are refused) and lets in-flight requests finish,
then the lifespan shutdown drains the batcher's queue; only then does the process exit. With `SEGMENT_WORKERS` > 1
a supervisor runs that many such servers on one socket (service/workers.py), closes its own copy of that socket
and passes the signal on to each.

Exit status after a stop: 0 once a Ctrl-C (SIGINT) has drained, in both modes: the server did what it was asked,
and 130 would tell a wrapper script or a process manager that it failed. A second Ctrl-C, which cuts the drain
short, and a Ctrl-C before the server is up exit 130 (interrupted). SIGTERM ends a single process by that signal
once drained (uvicorn's way; process managers count it as a clean stop); the supervisor of several workers exits 0.
A model that warm-up refuses after the port opened exits 3, as every other startup refusal.

SIGHUP: the supervisor of several workers restarts them one at a time. A single process restarts in place: it
drains as on SIGTERM, then executes itself again (`restart_in_place`: same interpreter, command line and
environment, so the same PID, which matters as a container's PID 1) and loads the model file anew; a model that
cannot be served then stops it (exit 3), as at a cold start.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time

from pydantic import ValidationError
from pydantic_settings import BaseSettings
from uvicorn.config import STARTUP_FAILURE  # uvicorn's own exit code when the application cannot start

from .log_format import configure_logging, json_line
from .server import SingleServer, build_config, quiet_startup_failure
from .settings import SECRET_SETTINGS, Settings
from .settings_environment import log_authentication, stray_worker_slot, unknown_variables
from .workers import serve_workers, worker_count

log = logging.getLogger(__name__)
INTERRUPTED = 128 + signal.SIGINT  # what a shell reports for a program interrupted by Ctrl-C
STARTED_ENV = dict(os.environ)  # what a restart in place executes itself with, whatever changed since


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="segment-serve",
        description="Serve a contract-conforming ONNX segmentation model over HTTP. Every setting is also an "
                    "environment variable SEGMENT_<NAME> (e.g. SEGMENT_MODEL_PATH, SEGMENT_MAX_BATCH_SIZE).",
    )
    parser.add_argument("--model", dest="model_path", help="ONNX model file (SEGMENT_MODEL_PATH)")
    parser.add_argument("--host", help="bind address (SEGMENT_HOST, default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port (SEGMENT_PORT, default 8000)")
    return parser.parse_args(argv)


def settings_error(exc: ValidationError) -> str:
    """One line per invalid setting, naming the environment variable a user would set."""
    lines = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err.get("loc") else "?"
        shown = "input" in err and not isinstance(err["input"], dict) and name not in SECRET_SETTINGS
        given = f" (got {err['input']!r})" if shown else ""  # never a secret: this line goes to the logs
        lines.append(f"cannot start: SEGMENT_{name.upper()}: {err['msg']}{given}")
    return "\n".join(lines)


class _LogFormatOnly(BaseSettings):
    """`log_format` alone, read by pydantic-settings as `Settings` reads it (its config: the prefix, names in any
    case), in the same precedence: arguments (the command line's), then the environment."""

    model_config = Settings.model_config | {"extra": "ignore"}  # the other settings are not this one's to judge
    log_format: str = "text"  # a str: ` JSON ` still says what it means where the settings refuse it


def settings_log_format(overrides: dict[str, object]) -> str:
    """'json' or 'text': the log format that settings which do not validate as a whole ask for, read on its own."""
    try:
        value = _LogFormatOnly(**{k: v for k, v in overrides.items() if k == "log_format"}).log_format
    except Exception:  # unreadable on its own too (a source that fails): the default, rather than a traceback
        return "text"
    return "json" if value.strip().lower() == "json" else "text"


def report_settings_error(text: str, log_format: str) -> None:
    """The `cannot start` lines of settings that do not validate: on stderr as they are, or, where the settings'
    sources ask for JSON logs (`settings_log_format`), as JSON log lines (the settings could not be read whole; a
    log collector must not get one raw line from a server that otherwise writes only JSON)."""
    if log_format != "json":
        print(text, file=sys.stderr)
        return
    configure_logging("json", "info")
    for line in text.splitlines():
        log.error(line)


def main(argv: list[str] | None = None) -> None:
    """Entry point of `segment-serve`."""
    try:
        serve(argv)
    except KeyboardInterrupt:  # Ctrl-C while loading, before the server handles it, or a second one (no drain)
        sys.exit(INTERRUPTED)


def serve(argv: list[str] | None) -> None:
    """Read the settings and serve until told to stop (several workers, or one server in this process)."""
    args = parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        report_settings_error(settings_error(exc), settings_log_format(overrides))
        sys.exit(STARTUP_FAILURE)
    configure_logging(settings.log_format, settings.log_level)
    for warning in unknown_variables(os.environ):  # here, once: the workers of a supervisor do not run main()
        log.warning(warning)
    log_authentication(settings)
    workers = worker_count(settings)
    if workers == 1 and (stray := stray_worker_slot(settings)):  # a supervisor sets each worker's own
        log.warning(stray)
    if workers > 1:
        sys.exit(serve_workers(settings.model_copy(update={"workers": workers}), overrides))
    # A SIGHUP before the server handles it: the model is not loaded yet, so there is nothing to reload; ignored,
    # rather than the default, which kills.
    signal.signal(signal.SIGHUP, lambda _sig, _frame: log.info("SIGHUP while starting: ignored, no model loaded yet"))
    from .app import create_app  # here: a supervisor of several workers never loads the app (resident 110 -> 54 MB)

    app = create_app(settings)
    metrics = app.state.service.metrics
    config = build_config(quiet_startup_failure(app), settings,
                          on_reject=metrics.count_rejection)
    server = SingleServer(config)
    try:
        server.run()
    except KeyboardInterrupt:
        # uvicorn raises the SIGINT it stopped for again once it has drained, as though it had not handled it; the
        # supervisor of several workers exits 0 then. A second Ctrl-C forced the stop: interrupted.
        if server.force_exit:
            raise
    if not server.started or server.refused:
        sys.exit(STARTUP_FAILURE)
    if server.restart:
        restart_in_place(settings.log_format)


def restart_in_place(log_format: str) -> None:
    """Execute this process's command line again, drained (SIGHUP): same interpreter, arguments (`sys.orig_argv`,
    `-m service.main` included) and environment (as this process was started with), so the same PID. Where that
    fails, exit 1 with a line in `log_format`."""
    # Ignored across the exec (a handled signal is reset to the default, which kills) until the new process's
    # `serve` handles it: a second SIGHUP while it starts must not kill a container's PID 1.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _stop_resource_tracker()
    for fd in _open_fds():  # a descriptor left inheritable by a library (a device's) would outlive the exec
        with contextlib.suppress(OSError):
            os.set_inheritable(fd, False)
    logging.shutdown()  # flushes every handler: the lines before the exec are not lost in a buffer
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], STARTED_ENV)
    except OSError as exc:  # the interpreter gone (an upgrade under a running server): stop, to be restarted
        line = f"cannot restart in place: {exc}; exiting"
        # logging is shut down by now: the JSON line is formatted here, as the handlers would have
        print(json_line(__name__, logging.ERROR, line) if log_format == "json" else line, file=sys.stderr)
        sys.exit(1)


def _stop_resource_tracker(wait_s: float = 5.0) -> None:
    """Stop and reap multiprocessing's resource tracker, a child of this process once the CRF pool has started.
    Across the exec it would see its pipe close and exit, and the new program, which never waits for a child it
    did not start, would keep it as a zombie: one more after every restart, each holding a PID slot. Python 3.12
    has `_stop` for this; 3.11 holds the same `_fd`/`_pid` (both private, so read with care)."""
    from multiprocessing import resource_tracker

    tracker = resource_tracker._resource_tracker
    stop = getattr(tracker, "_stop", None)
    if callable(stop):
        with contextlib.suppress(Exception):
            stop()
        return
    fd, pid = getattr(tracker, "_fd", None), getattr(tracker, "_pid", None)
    if fd is None or pid is None:
        return  # never started
    with contextlib.suppress(OSError):
        os.close(fd)  # end of its pipe: it unlinks what is still registered, then exits
    tracker._fd = tracker._pid = None
    deadline = time.monotonic() + wait_s
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:  # stuck: a zombie-free exec matters more than its cleanup
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.01)


def _open_fds() -> list[int]:
    try:
        return [fd for fd in map(int, os.listdir("/proc/self/fd")) if fd > 2]
    except OSError:  # no /proc
        return list(range(3, 1024))


if __name__ == "__main__":
    main()
