"""A device that fails while serving (a CUDA context after an illegal memory access fails every later run), on a
real server over HTTP (`testkit.failing_device`: real onnxruntime sessions, every run failing while a flag file
exists):

- the requests of the failed batches get 503 `inference_unavailable` with Retry-After (the device's fault, not
  theirs: a retry elsewhere can work); after SEGMENT_INFERENCE_FAILURES_TO_UNREADY failed probes /readyz is 503
  `inference_failing` and /segment answers 503 at once, without running;
- after SEGMENT_INFERENCE_UNHEALTHY_AFTER_S of failing /healthz is 503 too (a liveness probe restarts the pod);
- the device mended, the probe's first success makes the server ready and healthy, and answers are exact again;
- all of it in the metrics an alert reads;
- a device that hangs instead (a run that never returns): /healthz 503 `inference_stuck` once a run has been in
  flight for SEGMENT_INFERENCE_UNHEALTHY_AFTER_S, 200 again when it returns;
- a device failing at startup: warm-up is retried, and the server is ready once the device works.

The opposite case, inputs that fail on a working device and must never make the server unready, is in
test_faults.py.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from testkit.images import decode_labels
from testkit.metrics import metric_sum, samples
from testkit.server import ServerProcess
from tests.reliability.device_helpers import mended, wait_for
from tests.reliability.rule_helpers import rule_labels
from tests.service.svc_helpers import make_rule_model, png_bytes, scene

UNHEALTHY_AFTER_S = 1.5


def test_a_failing_device_turns_the_server_unready_then_unhealthy_and_it_recovers(tmp_path: Path) -> None:
    model = make_rule_model(tmp_path / "rule.onnx")
    flag = tmp_path / "device-broken"
    clean = scene(96, 64)  # long side = the model's 96: letterboxing is exact, so the rule gives the answer
    server = ServerProcess(model, command=[sys.executable, "-m", "testkit.failing_device", "--flag", str(flag)],
                           SEGMENT_INTRA_OP_THREADS="1", SEGMENT_INFERENCE_FAILURES_TO_UNREADY="2",
                           SEGMENT_INFERENCE_PROBE_S="0.2", SEGMENT_INFERENCE_UNHEALTHY_AFTER_S=str(UNHEALTHY_AFTER_S),
                           SEGMENT_EXIT_WHEN_UNHEALTHY="false")
    with server, httpx.Client(base_url=server.url, timeout=30) as client, mended(flag):
        server.wait_ready()
        segment = lambda: client.post("/segment", content=png_bytes(clean), params={"output": "labels"})  # noqa: E731
        np.testing.assert_array_equal(decode_labels(segment().content), rule_labels(clean))

        flag.touch()
        answers = [segment() for _ in range(3)]
        tripped = time.monotonic()
        assert [r.status_code for r in answers] == [503, 503, 503], [r.text for r in answers]
        for r in answers:
            error = r.json()["error"]
            assert error["code"] == "inference_unavailable" and "illegal memory access" in error["message"]
            assert r.headers["retry-after"] == "1"

        # Refused before the body is read: a client does not upload for nothing (this body never comes).
        with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=5) as raw:
            raw.sendall(b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                        b"Content-Length: 1000000\r\n\r\n")
            assert raw.recv(4096).startswith(b"HTTP/1.1 503 ")

        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "inference_failing"
        assert ready.json()["inference"]["failing"] and "CUDA failure 700" in ready.json()["inference"]["last_error"]
        assert client.get("/healthz").status_code == 200  # not yet: a short failure only sheds traffic
        unhealthy = wait_for(client, "/healthz", 503, within_s=UNHEALTHY_AFTER_S + 5)
        assert time.monotonic() - tripped >= UNHEALTHY_AFTER_S - 0.3
        assert unhealthy.json()["status"] == "inference_failing"
        metrics = client.get("/metrics").text
        assert samples(metrics, "segment_inference_failing") == {(): 1.0}
        # 2 failed batches (the third request was refused without running), their 2 probes, then the recovery
        # loop's probes every 0.2 s.
        assert metric_sum(metrics, "segment_inference_failures_total", run="batch") == 2
        assert metric_sum(metrics, "segment_inference_failures_total", run="probe") >= 2 + 3
        assert metric_sum(metrics, "segment_rejected_total", reason="inference_unavailable") >= 1

        flag.unlink()
        assert wait_for(client, "/readyz", 200, within_s=3).json()["inference"]["failing"] is False
        assert client.get("/healthz").status_code == 200
        r = segment()
        assert r.status_code == 200
        np.testing.assert_array_equal(decode_labels(r.content), rule_labels(clean))
        assert samples(client.get("/metrics").text, "segment_inference_failing") == {(): 0.0}
    assert "model runs work again after failing" in server.log, server.log


def test_a_hung_device_makes_healthz_fail_until_the_run_returns(tmp_path: Path) -> None:
    model = make_rule_model(tmp_path / "rule.onnx")
    flag = tmp_path / "device-hung"
    clean = scene(96, 64)
    server = ServerProcess(model, command=[sys.executable, "-m", "testkit.failing_device", "--flag", str(flag)],
                           SEGMENT_INTRA_OP_THREADS="1", SEGMENT_REQUEST_TIMEOUT_S="0.5",
                           SEGMENT_INFERENCE_UNHEALTHY_AFTER_S=str(UNHEALTHY_AFTER_S),
                           SEGMENT_EXIT_WHEN_UNHEALTHY="false")
    with server, httpx.Client(base_url=server.url, timeout=30) as client, mended(flag):
        server.wait_ready()
        flag.write_text("hang")
        hung = time.monotonic()
        r = client.post("/segment", content=png_bytes(clean), params={"output": "labels"})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"  # the request gives up in time
        assert client.get("/healthz").status_code == 200
        stuck = wait_for(client, "/healthz", 503, within_s=UNHEALTHY_AFTER_S + 5)
        assert time.monotonic() - hung >= UNHEALTHY_AFTER_S - 0.3
        assert stuck.json()["status"] == "inference_stuck"
        assert stuck.json()["inference"]["running_for_s"] >= UNHEALTHY_AFTER_S - 0.3
        flag.unlink()
        wait_for(client, "/healthz", 200, within_s=3)
        r = client.post("/segment", content=png_bytes(clean), params={"output": "labels"})
        np.testing.assert_array_equal(decode_labels(r.content), rule_labels(clean))


def test_a_warm_up_that_fails_is_retried_until_the_device_works(tmp_path: Path) -> None:
    model = make_rule_model(tmp_path / "rule.onnx")
    flag = tmp_path / "device-broken"
    flag.touch()
    clean = scene(96, 64)
    server = ServerProcess(model, command=[sys.executable, "-m", "testkit.failing_device", "--flag", str(flag)],
                           SEGMENT_INTRA_OP_THREADS="1", SEGMENT_INFERENCE_PROBE_S="0.2",
                           SEGMENT_EXIT_WHEN_UNHEALTHY="false")
    with server, httpx.Client(base_url=server.url, timeout=30) as client, mended(flag):
        deadline, body = time.monotonic() + 60, {}
        while body.get("status") != "warmup_failed" or body["inference"]["consecutive_failures"] < 3:
            assert time.monotonic() < deadline, body  # retried every 0.2 s, each a failed probe
            time.sleep(0.05)
            with contextlib.suppress(httpx.TransportError):  # until it listens
                body = client.get("/readyz").json()
        assert "CUDA failure 700" in body["error"]
        r = client.post("/segment", content=png_bytes(clean))
        assert r.status_code == 503 and r.json()["error"]["code"] == "inference_unavailable"
        flag.unlink()
        assert wait_for(client, "/readyz", 200, within_s=5).json()["inference"]["consecutive_failures"] == 0
        r = client.post("/segment", content=png_bytes(clean), params={"output": "labels"})
        np.testing.assert_array_equal(decode_labels(r.content), rule_labels(clean))
    assert "warm-up succeeded after failing" in server.log, server.log
