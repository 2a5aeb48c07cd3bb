"""An emulated accelerator behind the real service: `python -m testkit.accelerator [--scale 4] [--input-size 513]`
runs `segment-serve` (settings from SEGMENT_*, fixed shapes on) whose bucket sessions hold one emulated device for
the batch times of raw onnxruntime on an H200 (deeplabv3_resnet101 at 513, fp16, NHWC) × `scale`, releasing the
GIL as a CUDA wait does, and answer a real label map. `--input-size` letterboxes to that size instead of the
embedded model's (DeepLab's usual 513 makes the host's decode, letterbox, unletterbox and PNG work what it is on
a GPU host). Everything else (HTTP, decode, letterbox, buckets, batch plan, batches in flight, unletterbox, PNG
encode) is the service's own code: what it measures is whether the service's design keeps a device busy, with
the device's and this host's speed taken out.

By default the device runs one batch at a time. `--overlap` emulates a GPU on which batches in flight overlap
(`testkit.shared_device`: a 2.6 ms gap per batch, × `scale`, that other batches' compute hides, fitted to the
H200's gain from two threads on one session).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from testkit.photos import PHOTOS, photo
from testkit.server import ServerProcess
from testkit.shared_device import H200_GAP_S, SharedDevice

# Raw onnxruntime on an H200, seconds per batch of 1, 2, 4, 8, 16 (docs/bench/gpu_h200.json).
H200_MS = {1: 4.6, 2: 7.2, 4: 12.5, 8: 22.1, 16: 41.8}


# The GPU defaults the emulation runs with: buckets up to 16, two batches in flight.
GPU_LIKE_ENV = {"SEGMENT_FIXED_SHAPES": "on", "SEGMENT_MAX_BATCH_SIZE": "16", "SEGMENT_CONCURRENT_BATCHES": "2",
                "SEGMENT_INTRA_OP_THREADS": "1", "SEGMENT_MAX_QUEUE": "256"}


def emulated_server(scale: float, input_size: int | None = None, overlap: bool = False,
                    **overrides: str) -> ServerProcess:
    """A `segment-serve` child on the emulated device (`GPU_LIKE_ENV`, then `overrides`), letterboxing to
    `input_size` (default: the embedded model's), batches overlapping if `overlap`; not yet ready."""
    command = [sys.executable, "-m", "testkit.accelerator", "--scale", str(scale)]
    if input_size:
        command += ["--input-size", str(input_size)]
    if overlap:
        command.append("--overlap")
    return ServerProcess(None, command=command, **{**GPU_LIKE_ENV, **overrides})


def with_input_size(model: Path, size: int, folder: Path) -> Path:
    """A copy of `model` whose contract letterboxes to `size`: the embedded model is fully convolutional (free
    height and width), so only its `input_size` metadata changes."""
    import onnx

    proto = onnx.load(str(model))
    for prop in proto.metadata_props:
        if prop.key == "input_size":
            prop.value = str(size)
    path = folder / model.name
    onnx.save(proto, str(path))
    return path


def cached_copy(model: Path, size: int) -> Path:
    """`with_input_size`'s copy in the temporary directory, named after the model's bytes and `size` and made
    once: a temporary folder per server would outlive it, since uvicorn re-raises the SIGTERM that stops it
    before any cleanup runs."""
    digest = hashlib.sha256(model.read_bytes()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"segment-accelerator-{digest}-{size}" / model.name
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as scratch:  # servers starting at once never see half
            os.replace(with_input_size(model, size, Path(scratch)), path)
    return path


class SerialDevice:
    """One batch at a time at full speed, as a GPU runs one batch's kernels."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def run(self, seconds: float, gap_s: float) -> None:
        with self._lock:
            time.sleep(seconds)


class EmulatedSession:
    """Stands in for one bucket's onnxruntime session: each run holds the emulated device for the bucket's time,
    and every row gets the same real labels."""

    def __init__(self, device: SerialDevice | SharedDevice, seconds: float, gap_s: float, labels: np.ndarray,
                 size: int) -> None:
        self._device, self._seconds, self._gap_s = device, seconds, gap_s
        self._labels = np.ascontiguousarray(np.broadcast_to(labels, (size, *labels.shape)))

    def run(self, _names: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        (batch,) = feeds.values()
        if batch.shape[0] != self._labels.shape[0]:
            raise ValueError(f"a {self._labels.shape[0]}-image bucket session got {batch.shape[0]} images")
        self._device.run(self._seconds, self._gap_s)
        return [self._labels.copy()]


def serve(scale: float, input_size: int | None = None, overlap: bool = False) -> None:
    """Run the service on the embedded model's contract (at `input_size` if given) with emulated bucket sessions
    on one device, overlapping batches if `overlap` (blocks)."""
    import uvicorn

    from service.app import create_app
    from service.core.engine import load_engine
    from service.core.letterbox import letterbox
    from service.server import build_config
    from service.settings import Settings

    settings = Settings()
    if input_size:
        settings = settings.model_copy(update={"model_path": cached_copy(settings.model_path, input_size)})
    engine = load_engine(settings.engine_options())
    if engine.runner is None:
        raise SystemExit("the emulated accelerator needs SEGMENT_FIXED_SHAPES=on")
    size = engine.input_size
    tensor, _ = letterbox(photo(PHOTOS[0], size=(1024, 768)), size, engine.metadata.pad_rgb)
    labels = engine.session.run(["labels"], {"image": tensor[None]})[0][0]  # a real answer, once
    device = SharedDevice() if overlap else SerialDevice()
    times = {n: H200_MS.get(n, H200_MS[16] * n / 16) * scale / 1000 for n in engine.runner.sizes}
    gap_s = H200_GAP_S * scale
    engine.runner._make_bucket_session = (  # type: ignore[method-assign]
        lambda n: EmulatedSession(device, times[n], gap_s, labels, n))
    uvicorn.Server(build_config(create_app(settings, engine=engine), settings)).run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=4.0, help="batch times = the H200's × this")
    parser.add_argument("--input-size", type=int, help="letterbox size (default: the embedded model's)")
    parser.add_argument("--overlap", action="store_true", help="batches in flight overlap, as on a GPU")
    args = parser.parse_args()
    serve(args.scale, args.input_size, args.overlap)
