"""API keys as a deployment gets them wrong, through real `segment-serve` processes and a real server:

- a value of only commas or spaces (`${KEY},` with KEY unset, a Secret holding a space) would have turned
  authentication off without a word: refused, as a key that is not printable ASCII (no header carries it as written),
  and neither refusal repeats the keys into the log;
- the first lines say whether authentication is on, and warn when it is off on every interface;
- an empty `X-API-Key` beside a valid bearer token no longer hides the token;
- `SEGMENT_LOG_LEVEL=trace`, one of the documented levels, starts (it stopped with a traceback), and its ASGI trace
  logs carry no key."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from testkit.server import ServerProcess
from tests.service.svc_helpers import running_server
from tests.service.test_startup_refusals import refusal

KEY = "k-4f1b9c"


@pytest.mark.parametrize("value", [",", " ", " , ,"])
def test_keys_of_only_commas_or_spaces_are_refused(tiny_onnx_model: Path, value: str) -> None:
    line = refusal(tiny_onnx_model, SEGMENT_API_KEYS=value)
    assert "SEGMENT_API_KEYS" in line and "holds no key" in line and "set it empty" in line, line


def test_a_key_no_header_can_carry_is_refused_without_being_logged(tiny_onnx_model: Path) -> None:
    line = refusal(tiny_onnx_model, SEGMENT_API_KEYS=f"{KEY},clé-secrète")
    assert "key 2 is not printable ASCII" in line, line
    assert KEY not in line and "secr" not in line, line  # the log line repeats no key


def test_the_first_lines_say_whether_keys_are_needed(tiny_onnx_model: Path) -> None:
    for env, expected in (({"SEGMENT_API_KEYS": f"{KEY},other"}, "INFO service.settings_environment: authentication "
                                                                  "on: 2 API key(s)"),
                          ({"SEGMENT_HOST": "0.0.0.0"}, "WARNING service.settings_environment: authentication off "
                                                        "(SEGMENT_API_KEYS is empty): every route is open")):
        with ServerProcess(tiny_onnx_model, log_level="info", **env) as server:
            server.wait_ready(60)
            assert expected in server.log, server.log
            assert KEY not in server.log


def test_an_empty_x_api_key_does_not_hide_a_valid_bearer_token(tiny_onnx_model: Path) -> None:
    with running_server(tiny_onnx_model, api_keys=[KEY]) as url:
        def status(**headers: str) -> int:
            return httpx.get(f"{url}/classes", headers=headers, timeout=10).status_code

        assert status(authorization=f"Bearer {KEY}", **{"x-api-key": ""}) == 200
        assert status(authorization=f"Bearer {KEY}", **{"x-api-key": "stale"}) == 200
        assert status(**{"x-api-key": KEY}) == 200
        assert status(**{"x-api-key": "stale"}) == 401
        assert status(authorization="Bearer stale", **{"x-api-key": ""}) == 401
        assert status() == 401


def test_trace_logging_starts_and_logs_no_key(tiny_onnx_model: Path) -> None:
    with ServerProcess(tiny_onnx_model, log_level="trace", SEGMENT_API_KEYS=KEY) as server:
        server.wait_ready(60)
        r = httpx.get(f"{server.url}/classes", headers={"x-api-key": KEY, "authorization": f"Bearer {KEY}"},
                      timeout=10)
        assert r.status_code == 200
        assert server.terminate() == -signal.SIGTERM, server.log  # a single process ends by the signal
    assert "'path': '/classes'" in server.log and "Traceback" not in server.log, server.log  # the request's trace
    assert KEY not in server.log
