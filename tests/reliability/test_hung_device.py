"""A hung device (a model run that never returns) next to the requests that keep coming: once the run has
outlived a whole request timeout on every inference slot, nothing queued could even start in time, so /readyz
must turn unready (a load balancer routes elsewhere) and /segment answer 503 at once, rather than each request
waiting its whole timeout for a 504; and both recover as soon as the run returns.

A real `segment-serve` process (`testkit.failing_device`: real onnxruntime sessions whose runs block while a flag
file says `hang`) over real sockets.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import numpy as np

from testkit.images import decode_labels
from testkit.rawhttp import connect, http_request, read_responses
from testkit.server import ServerProcess
from tests.reliability.device_helpers import mended, wait_for
from tests.reliability.rule_helpers import rule_labels
from tests.service.svc_helpers import make_rule_model, png_bytes, scene


def test_a_run_that_outlives_the_request_timeout_makes_the_server_unready_until_it_returns(tmp_path: Path) -> None:
    flag = tmp_path / "device"
    clean = scene(96, 64)  # long side = the model's 96: the rule model's answer is exact
    server = ServerProcess(make_rule_model(tmp_path / "rule.onnx"),
                           command=[sys.executable, "-m", "testkit.failing_device", "--flag", str(flag)],
                           SEGMENT_INTRA_OP_THREADS="1", SEGMENT_REQUEST_TIMEOUT_S="1", SEGMENT_MAX_QUEUE="64",
                           SEGMENT_EXIT_WHEN_UNHEALTHY="false")
    with server, mended(flag), httpx.Client(base_url=server.url, timeout=30) as client:
        server.wait_ready()
        segment = lambda: client.post("/segment", content=png_bytes(clean), params={"output": "labels"})  # noqa: E731
        flag.write_text("hang")
        first = segment()
        assert first.status_code == 504 and first.json()["error"]["code"] == "timeout"  # its run hangs on
        unready = wait_for(client, "/readyz", 503, within_s=5)
        assert unready.json()["status"] == "overloaded" and unready.json()["queue_depth"] == 0
        for _ in range(3):  # however many come: none waits for a timeout that cannot be met
            started = time.monotonic()
            r = segment()
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "inference_unavailable" and int(r.headers["retry-after"]) >= 1
            assert time.monotonic() - started < 0.9  # refused, not timed out after the request timeout (1 s)
        # Refused before its upload is read: headers announcing a body that never comes get the 503 at once.
        sock = connect(server.url)
        sock.sendall(http_request("POST /segment HTTP/1.1\nHost: x\nContent-Type: image/png\n"
                                  "Content-Length: 100000"))
        started = time.monotonic()
        ((status, _, body),) = read_responses(sock, 1, timeout=5)
        took = time.monotonic() - started
        sock.close()
        assert status == 503 and b"inference_unavailable" in body and took < 2, (status, body, took)
        flag.unlink()  # the run returns
        wait_for(client, "/readyz", 200, within_s=5)
        r = segment()
        assert r.status_code == 200, r.text
        np.testing.assert_array_equal(decode_labels(r.content), rule_labels(clean))
