"""`segment-serve`: run the service under uvicorn with settings from the environment (SEGMENT_*).

SIGTERM/SIGINT: uvicorn stops accepting connections and lets in-flight requests finish, then the lifespan
shutdown drains the batcher's queue; only then does the process exit. With `SEGMENT_WORKERS` > 1 a supervisor
runs that many such servers on one socket (service/workers.py) and passes the signal on to each.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import uvicorn
from pydantic import ValidationError
from uvicorn.config import STARTUP_FAILURE  # uvicorn's own exit code when the application cannot start

from .server import build_config, quiet_startup_failure
from .settings import Settings, unknown_variables
from .workers import serve_workers, worker_count

log = logging.getLogger(__name__)


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
    server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    main()
