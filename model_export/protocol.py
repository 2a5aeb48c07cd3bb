"""Evaluation geometry (letterbox or DeepLab's native protocol) and optional CRF for ONNX models.

- `letterbox` is what the service does: the long side is resized to the metadata's `input_size`, the image
  sits top-left, the rest is mean-padded; labels are cropped and resized back.
- `native` is DeepLab's VOC protocol: never resized. The image sits top-left on a canvas of at least
  `input_size` in each dimension (513 for VOC), padded with the mean (which the in-graph normalisation maps to
  zero, as Caffe's mean padding is zero after subtraction); labels are cropped back. VOC's 500-px images are
  scored at their own resolution, not upscaled 2.6 %.
- `auto` picks `native` for models with the 21 VOC classes and `letterbox` otherwise.

With a CRF, the ONNX file is opened a second time with the logits (the ArgMax's input, which the graph
already computes at the input size) as an extra output; the contract file itself is never changed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.core.contract import INPUT_NAME, VOC_CLASSES
from service.core.crf import CrfParams, crf_on_canvas
from service.core.letterbox import LetterboxInfo, unletterbox
from service.core.pipeline import Pipeline

PROTOCOLS = ("auto", "letterbox", "native")


def resolve_protocol(protocol: str, classes: Sequence[str]) -> str:
    """`auto` -> `native` for VOC-class models, `letterbox` otherwise."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "auto":
        return "native" if list(classes) == list(VOC_CLASSES) else "letterbox"
    return protocol


def pad_native(image: np.ndarray, size: int, pad_rgb: Sequence[int]) -> tuple[np.ndarray, LetterboxInfo]:
    """The image unresized, top-left on a mean-filled canvas of max(size, H) × max(size, W)."""
    h, w = image.shape[:2]
    canvas = np.empty((max(size, h), max(size, w), 3), np.uint8)
    canvas[...] = np.asarray(pad_rgb, np.uint8)
    canvas[:h, :w] = image
    return canvas, LetterboxInfo(orig_h=h, orig_w=w, new_h=h, new_w=w, size=max(canvas.shape[:2]))


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    """Numerically stable softmax."""
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def logits_session(model_path: str | Path, engine: Any) -> tuple[Any, str]:
    """A second ORT session on the same file with the upsampled logits as an extra output."""
    import onnx
    import onnxruntime as ort

    from .msc import logits_name

    proto = onnx.load(str(model_path))
    name = logits_name(proto.graph)
    proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    if engine.intra_op_threads:
        opts.intra_op_num_threads = engine.intra_op_threads
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=[engine.provider])
    return session, name


def onnx_protocol_predictor(pipeline: Pipeline, model_path: str | Path, protocol: str, crf: CrfParams | None,
                            load: Callable[[Path], np.ndarray]) -> Callable[[Sequence[Path]], list[np.ndarray]]:
    """Predict image by image with the given geometry (and CRF); labels at original size. `load` reads a dataset
    image's RGB pixels (stored, as its label is drawn on them: model_export.data.load_image)."""
    engine = pipeline.engine
    session, logits_name = logits_session(model_path, engine) if crf is not None else (None, "")

    def one(path: Path) -> np.ndarray:
        image = load(path)
        if protocol == "native":
            canvas, info = pad_native(image, engine.input_size, engine.metadata.pad_rgb)
        else:
            prepared = pipeline.prepare_image(image)  # the service's letterbox
            canvas, info = prepared.tensor, prepared.info
        if session is None:
            labels = pipeline.infer([canvas])[0]
        else:
            (logits,) = session.run([logits_name], {INPUT_NAME: canvas[None]})
            labels = crf_on_canvas(canvas, softmax(logits[0]), info, crf)  # type: ignore[arg-type]
        return unletterbox(labels, info)

    return lambda paths: [one(p) for p in paths]
