"""`SEGMENT_LOG_FORMAT=json` through real `segment-serve` processes: every line the server writes through logging,
one process or a supervisor and its workers, at startup, per request and at shutdown, is one JSON object with the
fields a log collector indexes; access lines carry the request's parts and the `X-Request-ID` it was answered with.
The default stays text, and an unknown format stops the start."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.log_format import json_formatter
from testkit import REPO
from testkit.server import ServerProcess
from tests.service.svc_helpers import png_bytes, scene

REQUIRED = {"time", "level", "logger", "message", "pid"}


def json_lines(log: str) -> list[dict[str, Any]]:
    """Every non-empty line of `log` as a JSON object with the required fields (an assertion error names the
    first line that is not)."""
    records = []
    for line in filter(str.strip, log.splitlines()):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {line!r}\n{log}") from None
        assert isinstance(record, dict) and record.keys() >= REQUIRED, line
        assert datetime.fromisoformat(record["time"]).utcoffset() is not None, line  # ISO 8601 with its zone
        records.append(record)
    assert records, "nothing logged"
    return records


def requests_answered(server: ServerProcess) -> dict[str, tuple[str, int]]:
    """POST a PNG (200) and garbage bytes (415) to /segment; {request id: (path, status)} of the answers."""
    answers = {}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for body, status in ((png_bytes(scene()), 200), (b"not an image at all", 415)):
            r = client.post("/segment", content=body, headers={"Content-Type": "image/png"})
            assert r.status_code == status, r.text
            answers[r.headers["X-Request-ID"]] = ("/segment", status)
    return answers


def check_access_lines(records: list[dict[str, Any]], answers: dict[str, tuple[str, int]]) -> None:
    """Each answer has its access line, with its parts as fields of their own and its request id."""
    access = {r.get("request_id"): r for r in records if r["logger"] == "uvicorn.access"}
    for request_id, (path, status) in answers.items():
        line = access.get(request_id)
        assert line is not None, f"no access line with request_id {request_id}: {list(access.values())}"
        assert (line["method"], line["path"], line["status"]) == ("POST", path, status), line
        assert line["client"].startswith("127.0.0.1:"), line


def test_one_process_logs_json_lines_with_request_ids(rule_model: Path) -> None:
    with ServerProcess(rule_model, log_level="info", SEGMENT_LOG_FORMAT="json", SEGMENT_INTRA_OP_THREADS="1") as server:
        server.wait_ready()
        answers = requests_answered(server)
        assert server.terminate() == -15  # SIGTERM, drained: shutdown lines logged too
    records = json_lines(server.log)
    messages = [r["message"] for r in records]
    assert any("Started server process" in m for m in messages), messages  # startup
    assert any("Finished server process" in m for m in messages), messages  # shutdown
    assert {r["pid"] for r in records} == {server.pid}
    assert not any("worker" in r for r in records), "one process serving alone is no worker"
    check_access_lines(records, answers)


def test_supervisor_and_workers_log_json_lines(rule_model: Path) -> None:
    # A slot in the supervisor's own environment names no worker: the supervisor sets each worker's own.
    with ServerProcess(rule_model, log_level="info", SEGMENT_LOG_FORMAT="json", SEGMENT_WORKERS="2",
                       SEGMENT_INTRA_OP_THREADS="1", SEGMENT_WORKER_THREADS="2", SEGMENT_WORKER_SLOT="7") as server:
        server.wait_ready()
        answers = requests_answered(server)
        assert server.terminate() == 0
    records = json_lines(server.log)
    supervisor = [r for r in records if r["pid"] == server.pid]
    workers = [r for r in records if r["pid"] != server.pid]
    assert supervisor and not any("worker" in r for r in supervisor), supervisor
    assert {r["pid"] for r in workers} == server.worker_pids, "each worker's lines, and no other process's"
    assert all(r.get("worker") in (0, 1) for r in workers), [r for r in workers if r.get("worker") not in (0, 1)]
    assert {r["worker"] for r in workers} == {0, 1}
    check_access_lines(records, answers)


def test_trace_level_in_json(rule_model: Path) -> None:
    """uvicorn's own level below debug, before uvicorn has named it, comes out as JSON with its name."""
    with ServerProcess(rule_model, log_level="trace", SEGMENT_LOG_FORMAT="json",
                       SEGMENT_INTRA_OP_THREADS="1") as server:
        server.wait_ready()
        server.terminate()
    records = json_lines(server.log)
    assert any(r["level"] == "TRACE" for r in records), [r["level"] for r in records]  # uvicorn's connection lines


def test_text_stays_the_default(rule_model: Path) -> None:
    with ServerProcess(rule_model, log_level="info", SEGMENT_INTRA_OP_THREADS="1") as server:
        server.wait_ready()
        server.terminate()
    lines = [line for line in server.log.splitlines() if line.strip()]
    assert lines, server.log
    for line in lines[:3]:
        try:
            json.loads(line)
        except json.JSONDecodeError:
            continue
        raise AssertionError(f"a JSON line in the default format: {line!r}")
    assert any(line.startswith("INFO:     Started server process") for line in lines), server.log  # uvicorn's own
    assert any(" INFO service.settings_environment: " in line for line in lines), server.log  # ours


def test_unknown_format_is_refused_at_startup(rule_model: Path) -> None:
    server = ServerProcess(rule_model, log_level="info", SEGMENT_LOG_FORMAT="xml")
    try:
        assert server.proc.wait(30) == 3, server.log
    finally:
        server.terminate()
    (line,) = [line for line in server.log.splitlines() if "cannot start" in line]
    assert line.startswith("cannot start: SEGMENT_LOG_FORMAT: ") and "'xml'" in line, line


def test_an_exception_is_one_json_line_with_its_traceback() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    log = logging.getLogger("tests.json_logs.exception")
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            raise ValueError("bad value")
        except ValueError:
            log.exception("it failed: %s", "badly")
    finally:
        log.removeHandler(handler)
    (line,) = stream.getvalue().splitlines()  # the traceback inside the one line, never on lines of its own
    record = json.loads(line)
    assert record["message"] == "it failed: badly" and record["level"] == "ERROR", record
    assert "Traceback (most recent call last)" in record["exc_info"], record
    assert "ValueError: bad value" in record["exc_info"], record


def test_settings_that_do_not_validate_are_reported_as_json_lines(rule_model: Path) -> None:
    """The settings could not be read whole, `SEGMENT_LOG_FORMAT` among them: the environment's word is taken."""
    with ServerProcess(rule_model, log_level="info", SEGMENT_LOG_FORMAT="JSON", SEGMENT_MAX_QUEUE="-5") as server:
        assert server.proc.wait(60) == 3
        server._reader.join(5)
    records = json_lines(server.log)
    assert any(r["message"].startswith("cannot start: SEGMENT_MAX_QUEUE") and r["level"] == "ERROR"
               for r in records), server.log


def test_a_server_logging_text_does_not_need_the_json_formatter() -> None:
    """A host without python-json-logger still serves with the default format: nothing imports it until JSON."""
    code = ("import sys, service.main, service.server, service.workers, service.app; "
            "assert 'pythonjsonlogger' not in sys.modules, sorted(m for m in sys.modules if 'json' in m)")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr[-2000:]


def environment_without_log_format() -> dict[str, str]:
    """This process's environment less any `SEGMENT_LOG_FORMAT`, in any case (the settings read names in any)."""
    return {k: v for k, v in os.environ.items() if k.lower() != "segment_log_format"}


def test_settings_that_do_not_validate_follow_the_format_as_the_settings_read_it(rule_model: Path) -> None:
    """The settings read variable names in any case: the report reads the format as they do, not one spelling."""
    with ServerProcess(rule_model, base_env=environment_without_log_format(), log_level="info",
                       segment_log_format="json", SEGMENT_MAX_QUEUE="-5") as server:
        assert server.proc.wait(60) == 3
        server._reader.join(5)
    records = json_lines(server.log)
    assert any(r["message"].startswith("cannot start: SEGMENT_MAX_QUEUE") and r["level"] == "ERROR"
               for r in records), server.log


# A server that has drained for a restart in place (SIGHUP) finds its interpreter gone, as after an upgrade under
# it: `restart_in_place` executes `sys.executable`, here a path that does not exist.
FAILED_RESTART = """
import logging, sys
from service.log_format import configure_logging
from service.main import restart_in_place
configure_logging(sys.argv[1], "info")
logging.getLogger("service.main").info("drained")
sys.executable = sys.argv[2]
restart_in_place(sys.argv[1])
"""


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_restart_in_place_that_cannot_execute_says_so_in_the_log_format(tmp_path: Path, log_format: str) -> None:
    missing = tmp_path / "python3"
    child = subprocess.Popen([sys.executable, "-c", FAILED_RESTART, log_format, str(missing)], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 1, stderr
    expected = f"cannot restart in place: [Errno 2] No such file or directory: '{missing}'; exiting"
    if log_format == "json":
        drained, failed = json_lines(stderr)  # nothing else, and no raw line
        assert drained["message"] == "drained", drained
        assert (failed["level"], failed["logger"], failed["message"]) == ("ERROR", "service.main", expected), failed
        assert failed["pid"] == child.pid and failed.keys() == drained.keys(), (drained, failed)
    else:
        drained, failed = stderr.splitlines()
        assert drained.endswith(" INFO service.main: drained"), stderr
        assert failed == expected, stderr
