"""The record in a `segment` output folder of what its files were made with (`.segment-run.json`): the output
kind, the options and the model. A rerun compares itself with it, so that resuming never mixes files made one
way with files made another.

Options are compared by their effective values (`--format jpeg` is what an overlay without `--format` gets), so
that a record written before the values were filled in still resumes. A model is known by what the server tells
of it (`GET /classes`: file name, architecture, precision, input size, source, the file's sha256), and a local file
by the same; two records conflict where they disagree on something both hold (a server older than the sha256 does
not tell it). A record without a model (written by an earlier version) resumes with any, and the model is
recorded from then on.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from clients.batch_outputs import output_encoding
from clients.batch_writes import write_atomic
from service.client import SegmentApiError, SegmentClient, SegmentClientError, SegmentTlsError
from service.core.output_kinds import OUTPUT_KINDS, RenderOptions

RUN_FILE = ".segment-run.json"
MODEL_KEY = "model"
# The fields of `GET /classes` that tell one model from another, and the record's names for them.
_SERVER_FIELDS = {"name": "model", "arch": "arch", "precision": "precision", "input_size": "input_size",
                  "source": "source", "sha256": "sha256"}
_RENDER_DEFAULTS = {f.name: getattr(RenderOptions(), f.name) for f in dataclasses.fields(RenderOptions)}


def effective_options(options: dict[str, Any]) -> dict[str, Any]:
    """`options` with each value the service would use in place of one left out (None): the kind's default
    format, the default opacity and tolerance. `crf` only when on, as a folder written before the flag existed
    recorded it. The model is not an option (see `model_conflict`)."""
    values = {key: value for key, value in options.items() if key != MODEL_KEY}
    if values.get("output") in OUTPUT_KINDS:
        values["format"] = output_encoding(values["output"], values.get("format")).format
    for key in ("alpha", "tolerance", "min_area"):  # min_area's default depends on the image: None stays None
        if values.get(key) is None:
            values[key] = _RENDER_DEFAULTS[key]
    if not values.get("crf"):
        values.pop("crf", None)
    return values


def server_model(classes: dict[str, Any]) -> dict[str, Any]:
    """The model a server serves, from its `GET /classes` answer."""
    return {key: classes[field] for key, field in _SERVER_FIELDS.items() if field in classes}


def local_model(engine: Any) -> dict[str, Any]:
    """The model of a `service.core.engine.Engine` loaded here, as a server serving it tells of it."""
    return server_model(engine.description())


def run_model(backend: Any, client: SegmentClient | None) -> dict[str, Any] | str:
    """Which model makes a run's files, or why it cannot be told: the server's (`client`), else the model of the
    `LocalSegmenter` `backend`. A server is asked once, with `GET /classes`, which also tells a refused API key at
    once: otherwise every file would fail on its own with the same 401."""
    if client is None:
        return local_model(backend.engine)
    try:
        return server_model(client.classes())
    except SegmentApiError as exc:
        if exc.code == "unauthorized":
            return f"{client.url} refused the API key (--api-key or $SEGMENT_API_KEY): {exc.message}"
        return f"{client.url} does not say which model it serves: {exc.code}: {exc.message}"
    except SegmentClientError as exc:
        return f"{client.url} does not say which model it serves: {exc}"


def server_not_ready(client: SegmentClient, timeout: float = 30.0) -> str | None:
    """Why the server is not ready within `timeout` seconds, or None when it is. A certificate that is not accepted,
    or a server that does not speak TLS, is told at once, by name: waiting would not mend it, and "not reachable"
    would not say what to fix."""
    try:
        client.wait_ready(timeout=timeout)
    except SegmentTlsError as exc:
        return str(exc)
    except SegmentClientError:
        return f"{client.url} is not reachable or not ready"
    return None


def read_record(out: Path) -> dict[str, Any] | str | None:
    """The record in `out`, None when there is none, or why it cannot be read. Read once per run: the options
    and the model are compared with the same record."""
    try:
        recorded = json.loads((out / RUN_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # written atomically, so only a hand edit or a disk fault gets here
        return f"{out / RUN_FILE} cannot be read ({exc})"
    if not isinstance(recorded, dict):
        return f"{out / RUN_FILE} is not a record of a run"
    return recorded


def options_conflict(out: Path, recorded: dict[str, Any] | str | None, options: dict[str, Any]) -> str | None:
    """Why the files in `out`, whose record is `recorded` (see `read_record`), may not be resumed with `options`,
    or None: the same effective options, or no run recorded."""
    if recorded is None or isinstance(recorded, str):
        return recorded
    then, now = effective_options(recorded), effective_options(options)
    if then == now:
        return None
    changes = [f"--{key.replace('_', '-')} {_shown(then.get(key))} then, {_shown(now.get(key))} now"
               for key in {**then, **now} if then.get(key) != now.get(key)]  # a flag given once
    return f"{out} holds files made with other options ({'; '.join(changes)})"


def model_conflict(out: Path, recorded: dict[str, Any] | str | None, model: dict[str, Any]) -> str | None:
    """Why the files in `out`, whose record is `recorded`, may not be resumed with `model`, or None: no model
    recorded, or one that agrees with `model` on everything both records hold."""
    if recorded is None or isinstance(recorded, str):
        return recorded
    then = recorded.get(MODEL_KEY)
    if not isinstance(then, dict):  # recorded before models were: nothing to tell them apart by
        return None
    differing = [key for key in then if key in model and then[key] != model[key]]
    if not differing:
        return None
    return f"{out} holds files made by another model ({_model_shown(then, differing)} then, " \
           f"{_model_shown(model, differing)} now)"


def _model_shown(model: dict[str, Any], differing: list[str]) -> str:
    """The model's name and the fields that tell it apart."""
    # A digest's first 12 digits tell two files apart as well as all 64, and keep the line readable.
    details = [f"{key} {str(model[key])[:12] if key == 'sha256' else model[key]}" for key in differing
               if key != "name"]
    return str(model.get("name", "?")) + (f" ({', '.join(details)})" if details else "")


def _shown(value: object) -> str:
    return "default" if value is None else str(value)


def record_run(out: Path, options: dict[str, Any], model: dict[str, Any]) -> bool:
    """Write the run's effective options and its model into `out` (see `options_conflict`, `model_conflict`);
    False, said why, when it cannot be written."""
    record = {**effective_options(options), MODEL_KEY: model}
    try:
        write_atomic(out / RUN_FILE, (json.dumps(record, indent=1) + "\n").encode())
    except OSError as exc:
        print(f"segment: cannot write to {out}: {exc}", file=sys.stderr)
        return False
    return True
