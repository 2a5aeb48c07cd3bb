"""Signals and exit status of a single `segment-serve` process (no supervisor), through real processes: SIGHUP
restarts it in place (requests in flight answered, same PID, the model file read again), and a model refused by
warm-up after the port opened exits 3 like every other startup refusal."""

from __future__ import annotations

import io
import os
import shutil
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from service.core.contract import ModelMetadata, voc_colormap
from testkit.metrics import metric_sum
from testkit.server import ServerProcess, held_runs_environ
from tests.service.svc_helpers import png_bytes, scene

SEGMENT_SERVE = Path(sys.executable).with_name("segment-serve")
RESTART_LINE = "SIGHUP: restarting in place"


def readyz(server: ServerProcess) -> dict | None:
    """/readyz's body when it is 200 (on a new connection: the old process may still hold one), else None."""
    try:
        r = httpx.get(f"{server.url}/readyz", timeout=5)
    except httpx.TransportError:
        return None
    return r.json() if r.status_code == 200 else None


def start_time(server: ServerProcess) -> float:
    return metric_sum(httpx.get(f"{server.url}/metrics", timeout=10).text, "segment_worker_start_time_seconds")


def test_sighup_restarts_in_place_after_answering_requests_in_flight(tiny_onnx_model: Path, rule_model: Path,
                                                                     tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    shutil.copyfile(tiny_onnx_model, model)
    images = [scene(100 + 10 * i, 70) for i in range(4)]
    hold = tmp_path / "hold"  # model runs wait while it exists: the four requests are in flight at the signal
    # The installed entry point, as a container's PID 1 runs it.
    with ServerProcess(model, command=[str(SEGMENT_SERVE)], log_level="info", SEGMENT_MAX_BATCH_SIZE="2",
                       SEGMENT_MAX_WAIT_MS="5", **held_runs_environ(hold)) as server:
        server.wait_ready()
        hold.touch()
        before = readyz(server)
        assert before is not None and before["arch"] == "deeplabv3_thin"
        started = start_time(server)

        def post(image: np.ndarray) -> httpx.Response:
            return httpx.post(f"{server.url}/segment", content=png_bytes(image), timeout=60)

        with ThreadPoolExecutor(len(images)) as pool:
            futures = [pool.submit(post, image) for image in images]
            deadline = time.monotonic() + 20
            while metric_sum(httpx.get(f"{server.url}/metrics").text, "segment_inflight_requests") < len(images):
                assert time.monotonic() < deadline, server.log
                time.sleep(0.01)
            # Another model in the file's place (as a deployment swaps it), then the restart that loads it.
            shutil.copyfile(rule_model, tmp_path / "next.onnx")
            os.replace(tmp_path / "next.onnx", model)
            server.proc.send_signal(signal.SIGHUP)
            wait_for_line(server, RESTART_LINE)
            hold.unlink()
            responses = [f.result() for f in futures]
        assert [r.status_code for r in responses] == [200] * len(images), server.log
        for image, r in zip(images, responses, strict=True):
            assert Image.open(io.BytesIO(r.content)).size == (image.shape[1], 70)

        deadline = time.monotonic() + 60
        while (after := readyz(server)) is None or after["arch"] != "rule":
            assert server.proc.poll() is None and time.monotonic() < deadline, server.log
            time.sleep(0.05)
        assert after["pid"] == before["pid"] == server.pid  # the same process, executed again
        assert start_time(server) > started
        r = httpx.post(f"{server.url}/segment", params={"output": "labels"}, content=png_bytes(scene()), timeout=30)
        assert r.status_code == 200, r.text
        # The rule model labels the scene's colours apart; the random DeepLab labelled every pixel alike.
        assert len(np.unique(np.asarray(Image.open(io.BytesIO(r.content))))) >= 3
        assert server.log.count(RESTART_LINE) == 1, server.log
        assert server.terminate() in (0, -signal.SIGTERM), server.log
    assert "Traceback" not in server.log, server.log


@pytest.mark.parametrize(("stop", "status"), [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, 0)])
def test_a_stop_during_a_restarts_drain_stops(rule_model: Path, tmp_path: Path, stop: signal.Signals,
                                              status: int) -> None:
    # Model runs wait while the hold file exists: both requests are certainly in flight through the restart and
    # the stop, however fast the machine (a slow model let both finish between two polls now and then).
    hold = tmp_path / "hold"
    with ServerProcess(rule_model, log_level="info", SEGMENT_MAX_BATCH_SIZE="1", **held_runs_environ(hold)) as server:
        server.wait_ready()
        hold.touch()
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(httpx.post, f"{server.url}/segment", content=png_bytes(scene()), timeout=60)
                       for _ in range(2)]
            deadline = time.monotonic() + 20
            while metric_sum(httpx.get(f"{server.url}/metrics").text, "segment_inflight_requests") < 2:
                assert time.monotonic() < deadline, server.log
                time.sleep(0.01)
            server.proc.send_signal(signal.SIGHUP)
            wait_for_line(server, RESTART_LINE)
            server.proc.send_signal(stop)  # a first Ctrl-C too: drained, not cut short as a second one is
            time.sleep(0.5)
            assert not any(f.done() for f in futures), server.log  # still held: the stop came during the drain
            hold.unlink()
            assert [f.result().status_code for f in futures] == [200, 200], server.log
        assert server.proc.wait(60) == status, server.log
    server._reader.join(5)
    assert server.log.count("Started server process") == 1, server.log  # not executed again


def wait_for_line(server: ServerProcess, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log:
        assert server.proc.poll() is None and time.monotonic() < deadline, server.log
        time.sleep(0.01)


def test_a_restart_whose_model_file_is_gone_exits_3(rule_model: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    shutil.copyfile(rule_model, model)
    with ServerProcess(model, log_level="info") as server:  # `python -m service.main`: executed again as such
        server.wait_ready()
        model.unlink()
        server.proc.send_signal(signal.SIGHUP)
        assert server.proc.wait(60) == 3, server.log
    server._reader.join(5)
    assert RESTART_LINE in server.log and "cannot start: SEGMENT_MODEL_PATH" in server.log, server.log


def half_size_labels_model(path: Path) -> Path:
    """A model on the contract on paper whose labels come back at half the input's height and width: only a run
    of a fixed-shape bucket in warm-up, after the port opened, finds it out."""
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[3], keepdims=1),
        helper.make_node("Transpose", ["mean"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("MaxPool", ["nchw"], ["pooled"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Squeeze", ["pooled", "channel"], ["grey"]),
        helper.make_node("Div", ["grey", "c128"], ["scaled"]),
        helper.make_node("Floor", ["scaled"], ["cls"]),
        helper.make_node("Cast", ["cls"], ["labels"], to=TensorProto.UINT8),
    ]
    graph = helper.make_graph(
        nodes, "halfres", [helper.make_tensor_value_info("image", TensorProto.UINT8, ["b", "h", "w", 3])],
        [helper.make_tensor_value_info("labels", TensorProto.UINT8, ["b", "h2", "w2"])],
        initializer=[helper.make_tensor("c128", TensorProto.FLOAT, [], [128.0]),
                     helper.make_tensor("channel", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = ModelMetadata(classes=["bg", "fg"], palette=voc_colormap(2), input_size=64, arch="halfres",
                         source="tests: labels at half size")
    helper.set_model_props(model, meta.to_props())
    onnx.save(model, str(path))
    return path


def test_a_model_refused_in_warm_up_exits_3(tmp_path: Path) -> None:
    model = half_size_labels_model(tmp_path / "halfres.onnx")
    with ServerProcess(model, command=[str(SEGMENT_SERVE)], log_level="info", SEGMENT_FIXED_SHAPES="on",
                       SEGMENT_MAX_BATCH_SIZE="2") as server:
        assert server.proc.wait(60) == 3, server.log  # not 143, as though stopped by SIGTERM on purpose
    server._reader.join(5)
    lines = [line for line in server.log.splitlines() if "cannot start" in line]
    assert len(lines) == 1 and "labels (1, 32, 32)" in lines[0], server.log
    assert "Uvicorn running" in server.log  # the case at hand: the port had opened
