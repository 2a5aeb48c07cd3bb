"""Until warm-up is done, `/segment` is refused (503 `not_ready`, nothing run, no failure counted); a warm-up that
hangs is a stuck device; and warm-up never shares a bound instance's buffers with a batch."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.core.engine import load_engine
from service.core.options import EngineOptions
from service.inference_guard import InferenceHealth
from service.settings import Settings
from testkit.metrics import metric_sum
from tests.service.svc_helpers import LiveServer, held_server, make_rule_model, png_bytes, scene, with_input_size


def held_warm_up_server(tmp_path: Path, **settings: object) -> tuple[LiveServer, threading.Event]:
    """A live server whose model runs wait for the returned event (a slow or hung device): warm-up's first."""
    return held_server(Settings(model_path=make_rule_model(tmp_path / "rule.onnx"), host="127.0.0.1", port=0,
                                intra_op_threads=1, **settings))


def readyz_status(client: httpx.Client) -> str:
    return client.get("/readyz").json()["status"]


def test_requests_before_warm_up_is_done_are_refused_and_count_no_failure(tmp_path: Path) -> None:
    server, release = held_warm_up_server(tmp_path)
    try:
        with server.client() as client:
            deadline = time.monotonic() + 10
            while readyz_status(client) != "warming_up":
                assert time.monotonic() < deadline
                time.sleep(0.02)
            for _ in range(3):
                r = client.post("/segment", content=png_bytes(scene()))
                assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
                assert r.json()["error"]["code"] == "not_ready"
            metrics = client.get("/metrics").text
            assert metric_sum(metrics, "segment_inference_failures_total") == 0  # not taken for a failing device
            assert metric_sum(metrics, "segment_batch_size_count") == 0  # nothing ran
            assert client.get("/healthz").status_code == 200
            release.set()
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline + 20
                time.sleep(0.02)
            assert client.post("/segment", content=png_bytes(scene())).status_code == 200
    finally:
        release.set()
        server.stop()


def test_a_warm_up_that_hangs_is_a_stuck_device(tmp_path: Path) -> None:
    server, release = held_warm_up_server(tmp_path, inference_unhealthy_after_s=1.0)
    try:
        with server.client() as client:
            assert client.get("/healthz").status_code == 200
            deadline = time.monotonic() + 15
            while (health := client.get("/healthz")).status_code == 200:
                assert time.monotonic() < deadline, "a warm-up run hung past inference_unhealthy_after_s"
                time.sleep(0.05)
            assert health.status_code == 503 and health.json()["status"] == "inference_stuck", health.text
            release.set()  # the run returns: healthy and ready again
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline + 15
                time.sleep(0.02)
            assert client.get("/healthz").status_code == 200
    finally:
        release.set()
        server.stop()


def test_warm_up_never_shares_a_bound_instance_with_a_batch(tmp_path: Path) -> None:
    """Bound runs keep their input and labels in buffers of their own instance; a warm-up that ran an instance a
    batch was using would overwrite that batch's input or labels."""
    model = with_input_size(make_rule_model(tmp_path / "rule.onnx"), tmp_path / "big.onnx", 384)
    engine = load_engine(EngineOptions(model_path=model, providers="cpu", intra_op_threads=1, fixed_shapes="on",
                                       max_batch_size=1, io_binding="on", concurrent_batches=2))
    assert engine.runner is not None
    engine.runner.warm_up()
    blue = np.zeros((384, 384, 3), np.uint8)
    blue[..., 2] = 200  # class 3 everywhere; warm-up runs the padding colour, class 0
    expected = engine.run_images([blue])
    assert (expected == 3).all()
    stop = threading.Event()

    def warm_again() -> None:  # as a warm-up retry does, while batches run
        while not stop.is_set():
            engine.runner.warm_up()

    warmer = threading.Thread(target=warm_again)
    warmer.start()
    try:
        wrong = sum(not np.array_equal(engine.run_images([blue]), expected) for _ in range(300))
    finally:
        stop.set()
        warmer.join(30)
    assert wrong == 0, f"{wrong} of 300 batches got labels that were not theirs"


def test_a_warm_up_long_in_all_is_not_a_stuck_device(tmp_path: Path) -> None:
    """Each warm-up run counts as in flight on its own: runs of 0.3 s, 0.9 s in all, never look stuck with a
    0.5 s limit (as one run, a warm-up of many buckets longer than the limit made a healthy process restart)."""
    engine = load_engine(EngineOptions(model_path=make_rule_model(tmp_path / "rule.onnx"), providers="cpu",
                                       intra_op_threads=1))
    run = engine.run

    def slow(batch: np.ndarray) -> np.ndarray:
        time.sleep(0.3)
        return run(batch)

    engine.run = slow  # type: ignore[method-assign]
    health = InferenceHealth(unhealthy_after_s=0.5)
    seen: list[str | None] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(health.unhealthy)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert engine.warm_up((1, 2, 4), each_run=health.running) >= 0.9
    finally:
        done.set()
        watcher.join()
    assert len(seen) > 20 and set(seen) == {None}


def test_bucket_settings_without_fixed_shapes_are_said_to_be_ignored(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """On CPU fixed shapes are off by default, and with them the buckets and filling while busy: say so rather
    than take the settings silently."""
    settings = Settings(model_path=make_rule_model(tmp_path / "rule.onnx"), host="127.0.0.1", port=0,
                        intra_op_threads=1, fill_while_busy=True, batch_buckets="1,4")
    with caplog.at_level(logging.WARNING, logger="service.app"):
        server = LiveServer(settings).start()
        server.stop()
    warned = [r.getMessage() for r in caplog.records if "need fixed shapes" in r.getMessage()]
    assert warned and "SEGMENT_FILL_WHILE_BUSY and SEGMENT_BATCH_BUCKETS" in warned[0], warned
