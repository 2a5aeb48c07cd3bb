"""The GPU benchmark's references: the model (exported fp32 + fp16), raw onnxruntime per batch size in both
layouts, IOBinding / CUDA graphs, and PyTorch eager fp16 channels_last, all on the same weights.

torch is imported inside the functions, so the load-generator processes that import this package stay light.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.core.contract import INPUT_NAME, LABELS_OUTPUT
from service.core.sessions import CPU, CUDA, bucket_cuda_options, create_session, fixed_dims

Runner = Callable[[np.ndarray], object]


def providers(provider: str) -> list[str]:
    """The provider, then CPU for any node it cannot run (as the service asks)."""
    return [provider] if provider == CPU else [provider, CPU]


def on_provider(session: ort.InferenceSession, provider: str) -> ort.InferenceSession:
    """`session`, checked to run on `provider`: where the CUDA provider cannot be loaded (a library missing or of
    the wrong version) onnxruntime makes the session on the CPU with only a logged error, and every figure of the
    stage would be a CPU one, taking minutes per batch size at the GPU's sizes."""
    active = session.get_providers()[0]
    if active != provider:
        raise RuntimeError(f"the session runs on {active}, not {provider} (see onnxruntime's log above)")
    return session


def synthetic_photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth, photo-like RGB image (gradients and blobs): what BN calibration and uploads need, no files."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.zeros((height, width, 3), np.float32)
    for channel in range(3):
        fx, fy, phase = [*rng.uniform(0.002, 0.02, 2).tolist(), rng.uniform(0, 6.28)]
        image[..., channel] = 128 + 60 * np.sin(xx * fx + yy * fy + phase)
    for _ in range(12):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(20, height / 3)
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        image[mask] = rng.uniform(0, 255, 3)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def export_models(workdir: Path, arch: str, input_size: int, device: str) -> tuple[dict[str, Any], Any]:
    """Export `arch` (seeded random weights, BatchNorm statistics recalibrated on photo-like images so fp16
    activations stay in range) to model.onnx and its fp16 sibling model.fp16.onnx. Returns the facts and the
    eager model."""
    import torch

    from model_export.architectures import build_model
    from model_export.export import build_metadata, export_onnx
    from model_export.quantize import _props, _write_props, convert_fp16
    from model_export.wrapper import ExportWrapper

    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_model(arch, num_classes=21)
    start = time.perf_counter()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the calibration batches
    wrapper = ExportWrapper(model).to(device).train()
    with torch.no_grad():
        for i in range(8):
            batch = np.stack([synthetic_photo(input_size, input_size, seed=4 * i + j) for j in range(4)])
            wrapper(torch.from_numpy(batch).to(device))
    model = model.cpu().eval()
    calibrate_s = time.perf_counter() - start
    meta = build_metadata(model, num_classes=21, input_size=input_size,
                          source="bench: random init, seed 0, BatchNorm recalibrated on synthetic photos")
    start = time.perf_counter()
    fp32 = export_onnx(model, workdir / "model.onnx", meta)
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    fp16 = workdir / "model.fp16.onnx"
    convert_fp16(fp32, fp16)
    props = _props(fp32)
    props["precision"] = "fp16"
    _write_props(fp16, props)
    fp16_s = time.perf_counter() - start
    return {"arch": arch, "input_size": input_size, "fp32": str(fp32), "fp16": str(fp16),
            "fp32_mb": fp32.stat().st_size / 1e6, "fp16_mb": fp16.stat().st_size / 1e6,
            "bn_calibration_s": calibrate_s, "export_s": export_s, "fp16_convert_s": fp16_s}, model


def throughput(run: Runner, batch: np.ndarray, seconds: float, min_runs: int = 10, threads: int = 1) -> float:
    """Images per second of `run(batch)` after three warm runs, over at least `seconds` and `min_runs`,
    from `threads` threads at once."""
    # Each thread warms up itself before the clock starts: onnxruntime's CUDA provider captures a CUDA graph (and
    # makes its cuDNN/cuBLAS handles) per thread, so a warm-up on another thread would leave that inside the timing.
    start_line = threading.Barrier(threads + 1)

    def loop() -> int:
        try:
            for _ in range(3):
                run(batch)
        except BaseException:
            start_line.abort()  # the caller stops waiting, and reads this error from the result
            raise
        start_line.wait()
        runs = 0
        deadline = time.perf_counter() + seconds
        while runs < min_runs or time.perf_counter() < deadline:
            run(batch)
            runs += 1
        return runs

    with ThreadPoolExecutor(threads) as pool:
        counts = [pool.submit(loop) for _ in range(threads)]
        with contextlib.suppress(threading.BrokenBarrierError):
            start_line.wait()
        start = time.perf_counter()
        total = sum(count.result() for count in counts)
    return total * len(batch) / (time.perf_counter() - start)


@functools.cache
def _input_shape(model: Path) -> list[int | str | None]:
    """The model's input shape, read once per model from a session that optimises nothing (a fully optimised CPU
    session of a ResNet-101 takes seconds to build, and each bucket asked for it again)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(model), options, providers=[CPU]).get_inputs()[0].shape


def pinned_dims(model: Path, size: int, input_size: int) -> dict[str, int]:
    """The free-dimension overrides the service's bucket sessions use for a batch of `size`."""
    return fixed_dims(_input_shape(model), size, input_size, input_size)


def raw_ort(model: Path, sizes: list[int], input_size: int, seconds: float, provider: str,
            layouts: dict[str, dict[str, str]], fixed: tuple[str, ...] = ()) -> dict[str, dict[int, float]]:
    """img/s of raw onnxruntime per batch size and layout, one session per size (one shape each), with the
    service's own session and provider options; the layouts named in `fixed` also have their dimensions fixed
    as the service's bucket sessions do."""
    out: dict[str, dict[int, float]] = {}
    rng = np.random.default_rng(0)
    for layout, options in layouts.items():
        out[layout] = {}
        for size in sizes:
            dims = pinned_dims(model, size, input_size) if layout in fixed else None
            session = on_provider(create_session(model, providers(provider), intra_op_threads=4,
                                                 cuda_options=options, fixed_dims=dims), provider)
            batch = np.stack([synthetic_photo(input_size, input_size, int(s)) for s in rng.integers(0, 99, size)])
            out[layout][size] = throughput(lambda b, s=session: s.run([LABELS_OUTPUT], {INPUT_NAME: b}), batch,
                                           seconds)
            del session
    return out


def two_threads(model: Path, size: int, input_size: int, seconds: float, provider: str) -> float:
    """img/s of two threads running batches of `size` on one NHWC session (what concurrent batches buy)."""
    session = on_provider(create_session(model, providers(provider), intra_op_threads=4), provider)
    batch = np.stack([synthetic_photo(input_size, input_size, i) for i in range(size)])
    return throughput(lambda b: session.run([LABELS_OUTPUT], {INPUT_NAME: b}), batch, seconds, threads=2)


def bound_variants(model: Path, size: int, input_size: int, seconds: float) -> dict[str, float | str]:
    """IOBinding with device buffers (input copied in, labels copied out each run), with and without a CUDA
    graph, on a session with its dimensions fixed (as the service's buckets; without that onnxruntime refused
    the graph capture: shape nodes ran on the CPU); img/s, or the error that stopped a variant."""
    out: dict[str, float | str] = {}
    batch = np.stack([synthetic_photo(input_size, input_size, i) for i in range(size)])
    dims = pinned_dims(model, size, input_size)
    for name in ("iobinding", "cuda_graph"):
        try:  # the session and provider options of the service's bound buckets
            session = on_provider(create_session(model, [CUDA], 4, bucket_cuda_options(cuda_graph=name == "cuda_graph"),
                                                 fixed_dims=dims), CUDA)
            x = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0)
            y = ort.OrtValue.ortvalue_from_shape_and_type((size, input_size, input_size), np.uint8, "cuda", 0)
            binding = session.io_binding()
            binding.bind_ortvalue_input(INPUT_NAME, x)
            binding.bind_ortvalue_output(LABELS_OUTPUT, y)

            def run(b: np.ndarray, s: ort.InferenceSession = session, x: ort.OrtValue = x, y: ort.OrtValue = y,
                    binding: Any = binding) -> object:
                x.update_inplace(b)
                s.run_with_iobinding(binding)
                return y.numpy()

            out[name] = throughput(run, batch, seconds)
            del session
        except Exception as exc:  # an experiment: record why it could not run
            out[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return out


def bound_stage(model: Path, input_size: int, seconds: float) -> dict[int, dict[str, float | str]]:
    """`bound_variants` at batch 8 and 16: the `bound` stage of `bench.gpu_bench`, run in a process of its own."""
    return {n: bound_variants(model, n, input_size, seconds) for n in (8, 16)}


def eager(model: Any, sizes: list[int], input_size: int, seconds: float, device: str) -> dict[int, float]:
    """img/s of PyTorch eager on the same weights and the same contract (uint8 in, labels out, copies
    included): fp16 autocast and channels_last on CUDA, fp32 on CPU."""
    import torch

    from model_export.wrapper import ExportWrapper

    wrapper = ExportWrapper(model).to(device).eval()
    if device == "cuda":
        wrapper = wrapper.to(memory_format=torch.channels_last)
    out: dict[int, float] = {}
    for size in sizes:
        batch = np.stack([synthetic_photo(input_size, input_size, i) for i in range(size)])

        def run(b: np.ndarray) -> object:
            with torch.inference_mode(), torch.autocast(device, dtype=torch.float16, enabled=device == "cuda"):
                return wrapper(torch.from_numpy(b).to(device)).cpu()

        out[size] = throughput(run, batch, seconds)
    return out


def release_gpu_memory() -> None:
    """Give the eager model's cached GPU memory back before the service runs beside this process. Never raises:
    a stage that broke this process's CUDA context (an illegal memory access is sticky) makes this fail too, and
    the stages after it, the service's among them, run in processes of their own and must still run."""
    import gc

    import torch

    gc.collect()
    try:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception as exc:  # any CUDA failure: reported, and the run goes on
        print(f"GPU memory not released ({type(exc).__name__}: {exc}); the next stages go on", flush=True)
