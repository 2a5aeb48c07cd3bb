"""Hostile and faulty clients against a real `segment-serve` process on loopback, over raw sockets: stalled
uploads, heads cut off or oversized, result refetch storms, clients hanging up mid-upload, SIGTERM with a stalled
upload, and startup errors. Deadlines are set short (1-1.5 s) so that every case takes seconds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from service.app import create_app
from service.core.engine import load_engine
from service.server import build_config
from service.settings import Settings
from testkit import REPO, rawhttp
from testkit.load import probe
from testkit.metrics import metric_sum
from testkit.rawhttp import http_request, read_response, status_of
from testkit.server import ServerProcess
from tests.service.svc_helpers import png_bytes, scene

HEAD_S, BODY_S = 1.0, 1.5
ENV = {"SEGMENT_HEADER_TIMEOUT_S": str(HEAD_S), "SEGMENT_BODY_TIMEOUT_S": str(BODY_S), "SEGMENT_MAX_QUEUE": "4",
       "SEGMENT_MAX_BATCH_SIZE": "8", "SEGMENT_INTRA_OP_THREADS": "1", "SEGMENT_MAX_RESULT_RENDERS": "1"}
TINY = png_bytes(scene(32, 24))


@pytest.fixture(scope="module")
def server(rel_rule_model: Path) -> Iterator[ServerProcess]:
    with ServerProcess(rel_rule_model, **ENV) as proc:
        yield proc.wait_ready()


def connect(server: ServerProcess) -> socket.socket:
    return rawhttp.connect(server.url)


def stalled_upload(server: ServerProcess, declared: int = 624, sent: int = 100) -> socket.socket:
    sock = connect(server)
    sock.sendall(http_request(f"POST /segment HTTP/1.1\nHost: x\nContent-Type: image/png\n"
                              f"Content-Length: {declared}", b"\0" * sent))
    return sock


def error_of(raw: bytes) -> dict:
    return json.loads(raw.partition(b"\r\n\r\n")[2])["error"]


def tiny_ok(url: str) -> bool:
    r = httpx.post(f"{url}/segment", content=TINY, params={"output": "stats"}, timeout=10)
    return r.status_code == 200


def test_stalled_uploads_neither_lock_out_nor_unready(server: ServerProcess) -> None:
    """40 uploads stall after 100 of 624 bytes (the admission bound here is 16): others are still served, the
    server stays ready, and each stalled upload gets 408 `body_timeout` and a closed connection."""
    before = server.metrics()
    stalled = [stalled_upload(server) for _ in range(40)]
    t0 = time.perf_counter()
    try:
        time.sleep(0.3)
        assert all(tiny_ok(server.url) for _ in range(3))
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        for sock in stalled:
            raw, _ = read_response(sock, timeout=BODY_S + 5)
            assert status_of(raw) == 408, raw[:200]
            assert b"connection: close" in raw.lower() and error_of(raw)["code"] == "body_timeout"
    finally:
        for sock in stalled:
            sock.close()
    assert time.perf_counter() - t0 < BODY_S + 5  # closed by the server, not by our read timeout
    added = metric_sum(server.metrics(), "segment_requests_total", route="/segment", status="408") - metric_sum(
        before, "segment_requests_total", route="/segment", status="408")
    assert added == 40


def test_upload_budget_bounds_bodies_in_flight(rel_rule_model: Path) -> None:
    """Bodies still arriving share a budget of the bytes they have sent: beyond it 503 `overloaded` (Retry-After)
    before reading, and readiness is unaffected; once the deadline frees it, uploads are served again."""
    with ServerProcess(rel_rule_model, **ENV, SEGMENT_UPLOAD_BUFFER_BYTES="2000") as proc:
        proc.wait_ready()
        stalled = [stalled_upload(proc, sent=600) for _ in range(3)]  # 3 × 600 sent = 1800 of 2000
        try:
            time.sleep(0.3)
            r = httpx.post(f"{proc.url}/segment", content=b"\0" * 624, headers={"Content-Type": "image/png"})
            assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded", r.text
            assert int(r.headers["retry-after"]) >= 1
            assert httpx.get(f"{proc.url}/readyz").status_code == 200
            for sock in stalled:
                assert status_of(read_response(sock, BODY_S + 5)[0]) == 408
        finally:
            for sock in stalled:
                sock.close()
        assert tiny_ok(proc.url)


def test_heads_cut_off_or_never_sent_are_closed(server: ServerProcess) -> None:
    partial = connect(server)
    partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    idle = connect(server)
    keepalive = connect(server)  # a head cut off after a first request on the same connection
    keepalive.sendall(http_request("GET /healthz HTTP/1.1\nHost: x"))
    keepalive.settimeout(5)
    first = b""
    while not first.endswith(b"}"):
        first += keepalive.recv(4096)
    assert status_of(first) == 200
    keepalive.sendall(b"GET /healthz HTTP/1.1\r\nHo")
    for sock, expected in ((partial, 408), (idle, 0), (keepalive, 408)):
        raw, took = read_response(sock, timeout=HEAD_S + 5)
        sock.close()
        assert status_of(raw) == expected and took < HEAD_S + 4, (raw[:200], took)
        if expected:
            assert error_of(raw)["code"] == "header_timeout"


def test_oversized_heads_get_json_errors_without_stalling_others(server: ServerProcess) -> None:
    cases = [(http_request("GET /healthz HTTP/1.1\nHost: x\nX-Big: " + "a" * 65536), 431, "headers_too_large"),
             (http_request("GET /" + "a" * 100_000 + " HTTP/1.1\nHost: x"), 414, "uri_too_long")]
    for data, status, code in cases:
        sock = connect(server)
        sock.sendall(data)
        raw, _ = read_response(sock, 5)
        sock.close()
        assert status_of(raw) == status and error_of(raw)["code"] == code, raw[:300]
    # A 64 MiB header, streamed: refused after the limit; /healthz meanwhile answers at once.
    big = connect(server)
    big.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
    sent = 0
    t0 = time.perf_counter()
    try:
        while sent < 64 << 20:
            sent += big.send(b"a" * (1 << 20))
    except OSError:
        pass  # the server answered and closed
    # What the kernel's socket buffers absorbed before the refusal reached us: far less than the header.
    assert sent < 32 << 20 and time.perf_counter() - t0 < 5
    assert status_of(read_response(big, 5)[0]) == 431
    big.close()
    health = probe(server.url, b"", 5, path="/healthz", pause_s=0)
    assert max(health.latencies_ms) < 500 and set(health.statuses) == {200}
    ok = httpx.get(f"{server.url}/healthz", headers={"X-Normal": "a" * 8000})  # ordinary big headers pass
    assert ok.status_code == 200


def test_result_refetches_are_bounded(server: ServerProcess) -> None:
    """Concurrent overlay refetches of a large result: beyond the render limit 503 `overloaded` with
    Retry-After, not a queue in front of /segment; a tiny /segment meanwhile is answered."""
    rng = np.random.default_rng(0)
    big = png_bytes(rng.integers(0, 255, (2000, 3000, 3), dtype=np.uint8))
    r = httpx.post(f"{server.url}/segment", content=big, params={"output": "stats"}, timeout=60)
    assert r.status_code == 200, r.text
    path = f"/results/{r.json()['id']}/overlay.png"

    async def storm() -> tuple[list[httpx.Response], float]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            fetches = [asyncio.ensure_future(client.get(path)) for _ in range(6)]
            await asyncio.sleep(0.05)
            t0 = time.perf_counter()
            tiny = await client.post("/segment", content=TINY, params={"output": "stats"})
            took = time.perf_counter() - t0
            assert tiny.status_code == 200
            return await asyncio.gather(*fetches), took

    responses, tiny_s = asyncio.run(storm())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.json()["error"]["code"] == "overloaded" and int(refused.headers["retry-after"]) >= 1
    assert tiny_s < 2.0, tiny_s


def test_client_abort_is_499_without_traceback(server: ServerProcess) -> None:
    before, log_from = server.metrics(), len(server.lines)
    for _ in range(5):
        sock = stalled_upload(server, declared=200_000, sent=50_000)
        time.sleep(0.1)
        sock.close()
    deadline = time.monotonic() + 10
    while True:
        after = server.metrics()
        added = {s: metric_sum(after, "segment_requests_total", route="/segment", status=s)
                 - metric_sum(before, "segment_requests_total", route="/segment", status=s) for s in ("499", "500")}
        if added["499"] >= 5 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert added == {"499": 5, "500": 0}
    assert metric_sum(after, "segment_rejected_total", reason="client_closed") >= 5
    log = "".join(server.lines[log_from:])
    assert "Traceback" not in log and "ERROR" not in log, log[-2000:]


def test_sigterm_with_a_stalled_upload_exits_within_the_body_deadline(rel_rule_model: Path) -> None:
    proc = ServerProcess(rel_rule_model, **ENV, SEGMENT_LOG_LEVEL="info").wait_ready()
    sock = stalled_upload(proc)
    time.sleep(0.2)
    t0 = time.perf_counter()
    # uvicorn re-raises the captured SIGTERM once shutdown is complete: "killed by SIGTERM" is a clean exit.
    assert proc.terminate(timeout=30) in (0, -signal.SIGTERM)
    assert time.perf_counter() - t0 < BODY_S + 5, proc.log
    assert "drained and stopped" in proc.log and "timeout graceful shutdown exceeded" not in proc.log, proc.log
    assert status_of(read_response(sock, 1)[0]) == 408  # the stalled upload was answered, not dropped
    sock.close()


@pytest.mark.parametrize("env, names", [
    ({"SEGMENT_MAX_BATCH_SIZE": "abc"}, "SEGMENT_MAX_BATCH_SIZE"),
    ({"SEGMENT_MODEL_PATH": "/nonexistent/model.onnx"}, "not found"),
    # Each of these got past the settings and failed later with a traceback (exit 1).
    ({"SEGMENT_LOG_LEVEL": "warn"}, "SEGMENT_LOG_LEVEL"),
    ({"SEGMENT_CUDA_OPTIONS": "device_id=abc"}, "SEGMENT_CUDA_OPTIONS"),
    ({"SEGMENT_SHUTDOWN_TIMEOUT_S": "inf"}, "SEGMENT_SHUTDOWN_TIMEOUT_S"),
], ids=["bad-setting", "missing-model", "log-level", "device-id", "shutdown-timeout"])
def test_startup_errors_are_one_clear_line(env: dict[str, str], names: str, rel_rule_model: Path) -> None:
    full = {"SEGMENT_MODEL_PATH": str(rel_rule_model), "SEGMENT_PORT": "0", "SEGMENT_HOST": "127.0.0.1", **env}
    done = subprocess.run([sys.executable, "-m", "service.main"], env={**_clean_env(), **full}, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    out = done.stdout + done.stderr
    assert done.returncode == 3, out
    assert names in out and "cannot start" in out and "Traceback" not in out, out
    assert len([line for line in out.splitlines() if re.search(r"cannot start", line)]) == 1


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SEGMENT_")}


def test_a_crash_answers_500_and_keeps_the_connection(rel_rule_model: Path) -> None:
    """An unhandled error is a JSON 500 on a connection that stays usable (it used to be closed without
    `Connection: close`, so the client's next request on it failed). Real uvicorn, as `segment-serve` configures
    it, with one extra route that crashes."""
    settings = Settings(model_path=rel_rule_model, intra_op_threads=1)
    app = create_app(settings)

    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/boom", boom)
    with in_process_server(app, settings) as address:
        client = socket.create_connection(address, timeout=10)
        answers = []
        for path in ("/boom", "/healthz"):
            client.sendall(http_request(f"GET {path} HTTP/1.1\nHost: x"))
            raw = b""
            while b"\r\n\r\n" not in raw or not raw.endswith(b"}"):
                chunk = client.recv(4096)
                assert chunk, f"connection closed after {answers}"
                raw += chunk
            answers.append(raw)
        client.close()
        metrics = httpx.get(f"http://{address[0]}:{address[1]}/metrics", timeout=10).text
    assert status_of(answers[0]) == 500 and error_of(answers[0])["code"] == "internal_error"
    # Counted as every other refusal, under its route (the alert on 5xx and the rejections panel see it).
    assert metric_sum(metrics, "segment_rejected_total", reason="internal_error") == 1
    assert metric_sum(metrics, "segment_requests_total", route="/boom", status="500") == 1
    assert b"connection: close" not in answers[0].lower()
    assert status_of(answers[1]) == 200


def test_an_answered_upload_cannot_hold_its_connection_by_trickling(server: ServerProcess) -> None:
    """A body answered before it was read (here 413 for its declared size) is discarded only until the
    keep-alive timeout (5 s): trickling bytes no longer keeps the connection open for ever."""
    sock = connect(server)
    sock.sendall(http_request("POST /segment HTTP/1.1\nHost: x\nContent-Type: image/png\n"
                              f"Content-Length: {30 << 20}", b"\0" * 100))
    sock.settimeout(0.2)
    got, closed, t0 = b"", False, time.perf_counter()
    while time.perf_counter() - t0 < 12:
        try:
            sock.sendall(b"\0" * 10)
            chunk = sock.recv(4096)
            if not chunk:
                closed = True
                break
            got += chunk
        except TimeoutError:
            continue
        except OSError:
            closed = True
            break
    sock.close()
    assert status_of(got) == 413 and closed and time.perf_counter() - t0 < 9, (got[:100], closed)


@contextlib.contextmanager
def in_process_server(app: object, settings: Settings) -> Iterator[tuple[str, int]]:
    """Real uvicorn as `segment-serve` configures it, in a thread of this process (so that the test can reach into
    the engine): the address it listens on, once ready."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(build_config(app, settings))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        host, port = sock.getsockname()
        deadline = time.monotonic() + 30
        while not ready(f"http://{host}:{port}") and time.monotonic() < deadline:
            time.sleep(0.05)
        yield host, port
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.TransportError:  # not listening yet
        return False


class ErrorRecords(logging.Handler):
    """The ERROR records logged while attached (to uvicorn's loggers, which do not propagate, and to the root)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_hang_up_with_a_request_pipelined_behind_the_upload_skips_its_image(rel_rule_model: Path) -> None:
    """Clients that pipeline a GET behind their /segment and hang up while it waits for the device: their images
    are skipped, as without the GET, and nothing is written to the closed connections. uvicorn told only the
    queued GET of the hang-up, so every image ran (4 of 4) and each answer raised RuntimeError on the closed
    transport, logged as ERROR tracebacks."""
    settings = Settings(model_path=rel_rule_model, intra_op_threads=1, max_batch_size=1, concurrent_batches=1,
                        exit_when_unhealthy=False)
    engine = load_engine(settings.engine_options())
    run_images, runs = engine.run_images, []

    def slow_device(images: Sequence[np.ndarray]) -> np.ndarray:
        time.sleep(0.5)
        runs.append(len(images))
        return run_images(images)

    engine.run_images = slow_device  # type: ignore[method-assign]
    post = http_request(f"POST /segment?output=stats HTTP/1.1\nHost: x\nContent-Type: image/png\n"
                        f"Content-Length: {len(TINY)}", TINY)
    errors = ErrorRecords()
    with in_process_server(create_app(settings, engine), settings) as address:
        for name in ("uvicorn", ""):
            logging.getLogger(name).addHandler(errors)
        try:
            clients = [socket.create_connection(address, timeout=10) for _ in range(4)]
            for client in clients:
                client.sendall(post + http_request("GET /healthz HTTP/1.1\nHost: x"))
            time.sleep(0.15)
            for client in clients:
                client.close()
            time.sleep(4 * 0.5 + 1)  # long enough for all four to have run
        finally:
            for name in ("uvicorn", ""):
                logging.getLogger(name).removeHandler(errors)
    assert len(runs) <= 1, runs  # only an image already on the device when its client left
    assert not errors.records, [r.getMessage() for r in errors.records]
