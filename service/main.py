"""`segment-serve`: run the service under uvicorn with settings from the environment (SEGMENT_*).

SIGTERM/SIGINT: uvicorn stops accepting connections and lets in-flight requests finish, then the lifespan
shutdown drains the batcher's queue; only then does the process exit.
"""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from .app import create_app
from .settings import Settings

STARTUP_FAILURE = 3  # uvicorn's own exit code when the application cannot start


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


def main(argv: list[str] | None = None) -> None:
    """Entry point of `segment-serve`."""
    args = parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = Settings(**overrides)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level, lifespan="on",
        # Bound the drain: a request can't take longer than its own timeout plus encode.
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
        proxy_headers=True, server_header=False,
    )
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    main()
