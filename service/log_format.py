"""How `segment-serve` writes its log (`SEGMENT_LOG_FORMAT`): `text`, lines for a person at a terminal (the
default), or `json`, one JSON object per line for a log collector (Loki, ELK, Cloud Logging).

A JSON line holds `time` (ISO 8601, UTC), `level`, `logger`, `message` and `pid`; `worker` in a worker of several
(its slot); an exception's traceback in `exc_info`; and an access line (`uvicorn.access`) also `client`, `method`,
`path`, `status` and `request_id`, the `X-Request-ID` its answer carried.

One `logging.config.dictConfig` dictionary covers our loggers (the root) and uvicorn's. uvicorn takes the same one
as `log_config` and applies it again in every worker process it spawns (a fresh interpreter that inherits no
handler), so the format holds in the supervisor and in each worker.
"""

from __future__ import annotations

import copy
import logging
import logging.config
import multiprocessing
import os
from contextvars import ContextVar
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.config import LOG_LEVELS, LOGGING_CONFIG

from .worker_slots import SLOT_VARIABLE

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WORKER_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"  # which of several workers
_REQUEST_ID_HEADER = b"x-request-id"

# The request id of the answer being sent: uvicorn writes the access line inside the app's `send` of
# `http.response.start`, in the request's own task, where this value is visible (`tag_request_ids`).
REQUEST_ID: ContextVar[str | None] = ContextVar("segment_request_id", default=None)


def uvicorn_log_config(log_format: str, log_level: str) -> dict[str, Any]:
    """uvicorn's `log_config`: its own default for text (today's lines, untouched), ours for JSON."""
    if log_format == "json":
        return json_config(log_level)
    return copy.deepcopy(LOGGING_CONFIG)  # uvicorn may write into the one it is given (`use_colors`)


def json_config(log_level: str) -> dict[str, Any]:
    """The dictConfig dictionary of the JSON format: the root logger and uvicorn's, on one formatter."""
    level = LOG_LEVELS[log_level]  # a number: 'trace' is uvicorn's own, unknown to logging until uvicorn names it
    return {
        "version": 1,
        "disable_existing_loggers": False,  # the modules' loggers exist before this runs
        "formatters": {"json": {"()": "service.log_format.json_formatter"}},
        "filters": {"access": {"()": "service.log_format.AccessFields"}},
        "handlers": {
            # stderr and stdout as uvicorn's own handlers write them
            "default": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "json"},
            "access": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout", "formatter": "json",
                       "filters": ["access"]},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["access"], "level": level, "propagate": False},
        },
        "root": {"handlers": ["default"], "level": level},
    }


def configure_logging(log_format: str, log_level: str, *, worker: bool = False) -> None:
    """Configure this process's logging (`worker`: a worker of several, whose text lines name their pid)."""
    if log_format == "json":
        logging.config.dictConfig(json_config(log_level))
        logging.captureWarnings(True)  # a Python warning as one JSON line too, not raw lines on stderr
        return
    logging.basicConfig(level=LOG_LEVELS[log_level], format=WORKER_TEXT_FORMAT if worker else TEXT_FORMAT)


def json_formatter() -> logging.Formatter:
    """The JSON formatter, built in the process that logs, so that a worker finds its own slot."""
    # Imported here: a server logging text never needs python-json-logger.
    from pythonjsonlogger.core import RESERVED_ATTRS
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(
        "%(levelname)s %(name)s %(message)s %(process)d",
        rename_fields={"levelname": "level", "name": "logger", "process": "pid"},
        timestamp="time",  # datetime.isoformat() of the record's time, in UTC, with its offset
        static_fields=worker_field(),
        # uvicorn's startup lines carry the same message with terminal colours as an extra field
        reserved_attrs=[*RESERVED_ATTRS, "color_message"],
    )


def json_line(logger: str, level: int, message: str) -> str:
    """`message` as one JSON log line with the fields of every other (`json_formatter`), formatted here: for a
    line written after `logging.shutdown()` has closed the handlers."""
    record = logging.getLogger(logger).makeRecord(logger, level, "(unknown file)", 0, message, (), None)
    return json_formatter().format(record)


def worker_field() -> dict[str, int]:
    """`{"worker": slot}` in a worker of a supervisor, which sets its slot in the environment it spawns it with;
    nothing elsewhere (the supervisor's own environment holds the slot of the last worker it started)."""
    slot = os.environ.get(SLOT_VARIABLE, "")
    if multiprocessing.parent_process() is None or not slot.isdigit():
        return {}
    return {"worker": int(slot)}


class AccessFields(logging.Filter):
    """Give an access line its parts as fields of their own: uvicorn logs `client method path version status`
    as the record's arguments, and the request id is the one of the answer being sent."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:
            record.client, record.method, record.path, _version, status = args
            record.status = int(status)  # type: ignore[call-overload]
        request_id = REQUEST_ID.get()
        if request_id is not None:
            record.request_id = request_id
        return True


def tag_request_ids(app: ASGIApp) -> ASGIApp:
    """Wrap the outermost app: set `REQUEST_ID` from each answer's `X-Request-ID` as its head is sent, so that the
    access line uvicorn writes then carries it (the id every answer carries, whichever layer answered)."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def tagging_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                for name, value in message.get("headers", ()):
                    if name.lower() == _REQUEST_ID_HEADER:
                        REQUEST_ID.set(value.decode("latin-1"))
                        break
            await send(message)

        await app(scope, receive, tagging_send)

    return wrapped


def logged_app(app: ASGIApp, log_format: str) -> ASGIApp:
    """The app as served: with request ids for the JSON access lines; as it is for text, which shows none."""
    return tag_request_ids(app) if log_format == "json" else app
