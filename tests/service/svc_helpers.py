"""Helpers for the service tests: hand-made ONNX models, images, and a live uvicorn server in a thread (which the
client and web-page tests start too, through `running_server`)."""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import uvicorn
from onnx import TensorProto, helper
from PIL import Image

from service.app import create_app
from service.codec import full_size_pixels
from service.core.contract import ModelMetadata, voc_colormap
from service.core.decode import open_upload
from service.core.engine import Engine, load_engine
from service.core.errors import DecodeError
from service.core.options import DEFAULT_MAX_PIXELS, EngineOptions
from service.core.pipeline import Pipeline
from service.settings import Settings

RULE_CLASSES = ["background", "red", "green", "blue", "stripes"]


def make_rule_model(path: Path, *, input_size: int = 96, metadata: bool = True, input_dtype: int = TensorProto.UINT8,
                    labels_dtype: int = TensorProto.UINT8, fixed_hw: int | None = None,
                    batch: int | str = "batch", fails_every_run: bool = False) -> Path:
    """A small real ONNX graph with a predictable answer: the dominant channel of each pixel is its class
    (R→1, G→2, B→3), pixels whose brightest channel is below 64 are background (0).

    The tiny random DeepLab answers one class everywhere, which would let label-mapping bugs through; this
    model gives rich, known label maps and still goes through onnxruntime and the ONNX contract.

    `fails_every_run`: a model that passes every check at load and fails every run inside onnxruntime. Its labels
    pass through a reshape into rows of 65537 values (a prime: no batch's pixel count is a multiple of it) and
    back to their own shape, which leaves the output's dimensions free, as the contract asks.
    """
    h = fixed_hw or "height"
    w = fixed_hw or "width"
    image = helper.make_tensor_value_info("image", input_dtype, [batch, h, w, 3])
    labels = helper.make_tensor_value_info("labels", labels_dtype, [batch, h, w])
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["x", "axis"], ["peak"], keepdims=0),
        helper.make_node("Less", ["peak", "threshold"], ["dark"]),
        helper.make_node("ArgMax", ["x"], ["channel"], axis=3, keepdims=0),
        helper.make_node("Add", ["channel", "one"], ["cls"]),
        helper.make_node("Where", ["dark", "zero", "cls"], ["chosen"]),
        helper.make_node("Cast", ["chosen"], ["labels"], to=labels_dtype),
    ]
    if fails_every_run:
        nodes[-1:] = [helper.make_node("Reshape", ["chosen", "rows"], ["in_rows"]),
                      helper.make_node("Shape", ["chosen"], ["chosen_shape"]),
                      helper.make_node("Reshape", ["in_rows", "chosen_shape"], ["back"]),
                      helper.make_node("Cast", ["back"], ["labels"], to=labels_dtype)]
    inits = [
        helper.make_tensor("axis", TensorProto.INT64, [1], [3]),
        helper.make_tensor("threshold", TensorProto.FLOAT, [], [64.0]),
        helper.make_tensor("one", TensorProto.INT64, [], [1]),
        helper.make_tensor("zero", TensorProto.INT64, [], [0]),
        helper.make_tensor("rows", TensorProto.INT64, [2], [-1, 65537]),
    ]
    graph = helper.make_graph(nodes, "rule", [image], [labels], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    if metadata:
        meta = ModelMetadata(classes=RULE_CLASSES, palette=voc_colormap(5), input_size=input_size, arch="rule",
                             source="tests: hand-written graph")
        helper.set_model_props(model, meta.to_props())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def with_input_size(src: Path, dst: Path, input_size: int) -> Path:
    """A copy of a contract model whose metadata asks for another inference size."""
    model = onnx.load(str(src))
    for prop in model.metadata_props:
        if prop.key == "input_size":
            prop.value = str(input_size)
    onnx.save(model, str(dst))
    return dst


def decoded_pixels(data: bytes, *, full_resolution: bool) -> int:
    """What the codec's choice of thread pool reads of `data` (`open_upload`, then `full_size_pixels`): its
    pixels at full size, 0 when the checks or the header refuse it (the request then gets that 4xx)."""
    try:
        with open_upload(data, DEFAULT_MAX_PIXELS) as upload:
            return full_size_pixels(upload, full_resolution)
    except DecodeError:
        return 0


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def scene(width: int = 150, height: int = 100) -> np.ndarray:
    """A synthetic RGB scene at any size: dark background, a red square with a blue hole, a green bar and a
    red gradient (whose dark end is background)."""
    img = np.full((height, width, 3), 20, np.uint8)

    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[slice, slice]:
        return slice(int(y0 * height), int(y1 * height)), slice(int(x0 * width), int(x1 * width))

    img[box(0.07, 0.1, 0.4, 0.6)] = (220, 30, 30)
    img[box(0.17, 0.25, 0.3, 0.45)] = (30, 30, 220)
    img[box(0.13, 0.7, 0.87, 0.9)] = (30, 200, 40)
    rows, cols = box(0.53, 0.05, 0.93, 0.5)
    ramp = np.linspace(0, 255, cols.stop - cols.start, dtype=np.uint8)
    img[rows, cols, 0] = ramp[None, :]
    return img


class LiveServer:
    """uvicorn running `create_app(settings)` in a thread, on a socket bound before it starts (no port race)."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        # In-process, a server that stopped itself for ill health would signal the test run (service/watchdog.py).
        self.settings = settings = settings.model_copy(update={"exit_when_unhealthy": False})
        self.app = create_app(settings, engine)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def state(self):
        return self.app.state.service

    def start(self, wait_ready: bool = True) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        if wait_ready:
            with httpx.Client(base_url=self.url) as client:
                while client.get("/readyz").status_code != 200:
                    if time.monotonic() > deadline:
                        raise RuntimeError("server never became ready")
                    time.sleep(0.02)
        return self

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 30), **kw)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


@contextlib.contextmanager
def running_server(model_path: Path, **settings: object) -> Iterator[str]:
    """A LiveServer for `model_path` (2 intra-op and 2 worker threads) until the block ends; yields its URL."""
    server = LiveServer(Settings(model_path=model_path, intra_op_threads=2, worker_threads=2, **settings))
    try:
        yield server.start().url
    finally:
        server.stop()


@contextlib.contextmanager
def rule_model_server(folder: Path, input_size: int = 96) -> Iterator[LiveServer]:
    """A started LiveServer on the rule model at `input_size` (one intra-op and two worker threads), in `folder`,
    until the block ends."""
    model = make_rule_model(folder / "rule.onnx", input_size=input_size)
    live = LiveServer(Settings(model_path=model, host="127.0.0.1", port=0, max_wait_ms=2, intra_op_threads=1,
                               worker_threads=2)).start()
    try:
        yield live
    finally:
        live.stop()


def held_server(options: Settings) -> tuple[LiveServer, threading.Event]:
    """A started live server whose model runs wait for the returned event (a model still loading onto a device, or
    a slow or hung one): warm-up's first run waits, so until it is set `/readyz` is 503."""
    engine = load_engine(options.engine_options())
    release = threading.Event()
    run, check = engine.run, engine.check_labels

    def held(batch: np.ndarray) -> np.ndarray:
        release.wait(30)
        return run(batch)

    def unheld_check(*args: object, **kwargs: object) -> None:
        # The contract check before the server starts is not warm-up: held too, every such server took the hold's
        # whole 30 s to start. Nothing else runs the model until it is done (warm-up starts after it).
        engine.run = run  # type: ignore[method-assign]
        try:
            check(*args, **kwargs)
        finally:
            engine.run = held  # type: ignore[method-assign]

    engine.run = held  # type: ignore[method-assign]
    engine.check_labels = unheld_check  # type: ignore[method-assign]
    return LiveServer(options, engine=engine).start(wait_ready=False), release


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


def rule_pipeline(folder: Path, input_size: int = 32) -> Pipeline:
    """A `Pipeline` (decode, letterbox, render) over the rule model at `input_size`, on CPU with one thread."""
    model = make_rule_model(folder / "rule.onnx", input_size=input_size)
    return Pipeline(load_engine(EngineOptions(model_path=model, providers="cpu", intra_op_threads=1)))
