"""`segment-serve`: run the service under uvicorn with settings from the environment (SEGMENT_*).

SIGTERM/SIGINT: the server stops listening (new connections are refused) and lets in-flight requests finish,
then the lifespan shutdown drains the batcher's queue; only then does the process exit. With `SEGMENT_WORKERS` > 1
a supervisor runs that many such servers on one socket (service/workers.py), closes its own copy of that socket
and passes the signal on to each.

Exit status after a stop: 0 once a Ctrl-C (SIGINT) has drained, in both modes: the server did what it was asked,
and 130 would tell a wrapper script or a process manager that it failed. A second Ctrl-C, which cuts the drain
short, and a Ctrl-C before the server is up exit 130 (interrupted). SIGTERM ends a single process by that signal
once drained (uvicorn's way; process managers count it as a clean stop); the supervisor of several workers exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import uvicorn
from pydantic import ValidationError
from uvicorn.config import STARTUP_FAILURE  # uvicorn's own exit code when the application cannot start

from .server import build_config, quiet_startup_failure
from .settings import Settings, unknown_variables
from .workers import serve_workers, worker_count

log = logging.getLogger(__name__)
INTERRUPTED = 128 + signal.SIGINT  # what a shell reports for a program interrupted by Ctrl-C


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
        given = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        lines.append(f"cannot start: SEGMENT_{name.upper()}: {err['msg']}{given}")
    return "\n".join(lines)


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
        print(settings_error(exc), file=sys.stderr)
        sys.exit(STARTUP_FAILURE)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for warning in unknown_variables(os.environ):  # here, once: the workers of a supervisor do not run main()
        log.warning(warning)
    workers = worker_count(settings)
    if workers > 1:
        sys.exit(serve_workers(settings.model_copy(update={"workers": workers}), overrides))
    from .app import create_app  # here: a supervisor of several workers never loads the app (resident 110 -> 54 MB)

    app = create_app(settings)
    metrics = app.state.service.metrics
    config = build_config(quiet_startup_failure(app), settings,
                          on_reject=metrics.count_rejection)
    server = uvicorn.Server(config)
    try:
        server.run()
    except KeyboardInterrupt:
        # uvicorn raises the SIGINT it stopped for again once it has drained, as though it had not handled it; the
        # supervisor of several workers exits 0 then. A second Ctrl-C forced the stop: interrupted.
        if server.force_exit:
            raise
    if not server.started:
        sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    main()
