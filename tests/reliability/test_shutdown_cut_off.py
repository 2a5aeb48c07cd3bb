"""SIGTERM while requests are still in the server when its graceful-shutdown timeout (SEGMENT_SHUTDOWN_TIMEOUT_S)
runs out: uvicorn cancels them. Each must still get an answer a client can act on, 503 `shutting_down` in the
error envelope with Retry-After (it was not served; a retry elsewhere will be), not uvicorn's plain-text 500
with a traceback in the log; and the process must then exit, not wait on for the batch still on the device,
whose requests nobody waits for any more.

A real `segment-serve` process (`testkit.failing_device`: real onnxruntime sessions, whose runs block while a flag
file says `hang`), real sockets, a real signal.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from starlette.types import Message, Receive, Scope, Send

from service.metrics import Metrics
from service.middleware import RequestContextMiddleware
from service.server import answer_cut_off
from testkit.metrics import metric_sum, samples
from testkit.server import ServerProcess
from tests.reliability.device_helpers import mended
from tests.service.svc_helpers import make_rule_model, png_bytes, scene


def hung_device_server(tmp_path: Path, flag: Path, request_timeout_s: float) -> ServerProcess:
    """A server whose model runs hang while `flag` says so, with a 1 s graceful-shutdown timeout."""
    return ServerProcess(make_rule_model(tmp_path / "rule.onnx"),
                         command=[sys.executable, "-m", "testkit.failing_device", "--flag", str(flag)],
                         SEGMENT_INTRA_OP_THREADS="1", SEGMENT_MAX_BATCH_SIZE="2", SEGMENT_SHUTDOWN_TIMEOUT_S="1",
                         SEGMENT_REQUEST_TIMEOUT_S=str(request_timeout_s), SEGMENT_EXIT_WHEN_UNHEALTHY="false",
                         log_level="info")


def test_requests_cut_off_by_the_shutdown_timeout_get_503_with_retry_after(tmp_path: Path) -> None:
    flag = tmp_path / "device"
    server = hung_device_server(tmp_path, flag, request_timeout_s=4)
    body = png_bytes(scene(96, 64))

    async def cut_off() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            sent = [asyncio.ensure_future(client.post("/segment", content=body, headers={"X-Request-ID": f"cut-{i}"}))
                    for i in range(4)]
            deadline = time.monotonic() + 15
            # One batch on the hung device, the other two requests queued behind it.
            while metric_sum((await client.get("/metrics")).text, "segment_inflight_requests") < 4:
                assert time.monotonic() < deadline, server.log
                await asyncio.sleep(0.02)
            server.proc.send_signal(signal.SIGTERM)
            return list(await asyncio.gather(*sent))

    with server, mended(flag):
        server.wait_ready()
        flag.write_text("hang")
        answers = asyncio.run(cut_off())
        assert server.proc.wait(30) in (0, -signal.SIGTERM)
    server._reader.join(5)
    for i, r in enumerate(answers):
        assert r.status_code == 503, r.text
        assert r.headers["content-type"] == "application/json", r.headers
        assert r.json()["error"]["code"] == "shutting_down" and r.json()["error"]["request_id"] == f"cut-{i}"
        assert r.headers["x-request-id"] == f"cut-{i}"
        assert int(r.headers["retry-after"]) >= 1 and r.headers["connection"] == "close"
    assert "Exception in ASGI application" not in server.log and "Traceback" not in server.log, server.log
    assert "Application shutdown complete" in server.log


def test_a_batch_nobody_waits_for_does_not_keep_the_process_past_the_shutdown_timeout(tmp_path: Path) -> None:
    """The drain after uvicorn's graceful shutdown waited for the batch on the hung device for the whole request
    timeout (30 s by default, on top of the 25 s shutdown timeout: past compose's 30 s grace period), though
    its request had been answered already."""
    flag = tmp_path / "device"
    server = hung_device_server(tmp_path, flag, request_timeout_s=30)
    with server, mended(flag), httpx.Client(base_url=server.url, timeout=30) as client:
        server.wait_ready()
        flag.write_text("hang")
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(client.post, "/segment", content=png_bytes(scene(96, 64)))
            deadline = time.monotonic() + 15
            while metric_sum(client.get("/metrics").text, "segment_batches_in_flight") < 1:
                assert time.monotonic() < deadline, server.log
                time.sleep(0.02)
            signalled = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            assert answer.result().status_code == 503
        status = server.proc.wait(60)
        stopped_after = time.monotonic() - signalled
    assert status in (0, -signal.SIGTERM), server.log
    # The 1 s shutdown timeout, the 1 s given to a run still going, and room for a loaded machine; not 30 s more.
    assert stopped_after < 8, (stopped_after, server.log)


def test_a_request_cut_off_by_the_shutdown_is_counted_as_the_503_it_is_answered() -> None:
    """Counted as uvicorn cancels it: `segment_requests_total` says 503, as answered, not 500 (which would count
    toward the 5xx alert on every rollout that cut requests off), and the refusal is counted once."""
    metrics = Metrics()
    entered = asyncio.Event()

    async def never_answers(scope: Scope, receive: Receive, send: Send) -> None:
        entered.set()
        await asyncio.Event().wait()

    stack = answer_cut_off(RequestContextMiddleware(never_answers, metrics=metrics), metrics.count_rejection)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def cut_off() -> None:
        scope = {"type": "http", "method": "POST", "path": "/segment", "headers": [], "query_string": b""}
        task = asyncio.create_task(stack(scope, receive, send))
        await entered.wait()
        task.cancel()  # what uvicorn does to the requests left when its graceful-shutdown timeout ends
        await task

    asyncio.run(cut_off())
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 503
    text = metrics.render().decode()
    requests = {dict(k)["status"]: v for k, v in samples(text, "segment_requests_total").items() if v}
    assert requests == {"503": 1.0}, requests
    rejected = {dict(k)["reason"]: v for k, v in samples(text, "segment_rejected_total").items() if v}
    assert rejected == {"shutting_down": 1.0}, rejected
