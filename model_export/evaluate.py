"""`segment-export evaluate`: mIoU, per-class IoU and pixel accuracy over a whole VOC-layout split.

Two kinds of model:
- an exported `.onnx` file goes through the service's own pipeline (`service.core.pipeline.Pipeline`: contract
  checks, letterbox to the metadata's input size, run, back to the image's size), with engine
  options from the command line only (no `SEGMENT_*` variable changes what is scored). What is measured is
  what is served, with one difference: a dataset image is read as training reads it (`model_export.data.
  load_image`), its stored pixels, because its label is drawn on them; the service turns an upload by its EXIF
  orientation, which would turn the picture against its label.
  Multi-scale testing for ONNX is baked into the graph (`segment-export msc`).
- a training checkpoint (`.pt`, see model_export.checkpoint) runs in PyTorch at the checkpoint's input size
  (`--input-size 0`: native resolution, unpadded), with optional multi-scale + flip testing: softmax
  probabilities averaged (`--fusion mean`) or DeepLab's max over the upsampled logits (`--fusion max`).

Both take `--protocol` (letterbox as served, or DeepLab's native VOC protocol, the default for VOC-class
models; see model_export.protocol) and `--crf` (DeepLab-v2's dense CRF, service.core.crf).

The confusion matrix accumulates over the whole split (model_export.metrics documents undefined classes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from service.core.crf import CrfParams, crf_on_canvas
from service.core.engine import EngineError, load_engine
from service.core.options import DEFAULT_BATCH_SIZE, EngineOptions
from service.core.pipeline import Pipeline
from service.core.resolution import Resolution

from .checkpoint import load_checkpoint_model
from .data import DatasetError, VOCSegmentation, load_image
from .dataset_census import LabelCensus, warn_exif_oriented
from .errors import OPTION, ModelExportError
from .metrics import ConfusionMatrix, SegmentationScores
from .models import SegmentationModel
from .protocol import onnx_protocol_predictor, pad_native, resolve_protocol
from .wrapper import normalize_nchw, preprocessing_constants, upsample_logits

log = logging.getLogger(__name__)

# Dataset images are trusted files: no upload pixel limit (the decode memory budget still applies).
MAX_PIXELS = 1 << 31

# (image paths, decoded-later) -> label maps at original size
Predictor = Callable[[Sequence[Path]], list[np.ndarray]]


def onnx_predictor(model_path: str | Path, threads: int = 0, providers: str = "auto", protocol: str = "letterbox",
                   crf: CrfParams | None = None, resolution: Resolution | None = None) -> tuple[Predictor, list[str]]:
    """Predict through the service engine; returns the predictor and the model's class names.

    `protocol` (see model_export.protocol) and `crf` change the geometry and add the dense CRF; `resolution`
    (letterbox protocol only) segments in tiles above the model's input size, as `POST /segment?resolution=`."""
    # The file as given: `precision=auto` would score its fp16 sibling on a GPU.
    options = EngineOptions(model_path=Path(model_path), providers=providers, precision="fp32",
                            intra_op_threads=threads, fixed_shapes="off")
    try:
        engine = load_engine(options)
    except EngineError as exc:  # ContractError is already a ValueError
        raise ValueError(str(exc)) from None
    pipeline = Pipeline(engine, max_pixels=MAX_PIXELS)
    classes = list(engine.metadata.classes)
    if resolution is not None and (resolve_protocol(protocol, classes) != "letterbox" or crf is not None):
        raise ValueError("--resolution scores the served letterbox in tiles: it needs --protocol letterbox (or auto "
                         "for a model without the VOC classes) and no --crf")
    if resolve_protocol(protocol, classes) != "letterbox" or crf is not None:
        return onnx_protocol_predictor(pipeline, model_path, resolve_protocol(protocol, classes), crf,
                                       load_image), classes

    def predict(paths: Sequence[Path]) -> list[np.ndarray]:
        # The service's letterbox (pad colour, geometry) on the stored pixels.
        return pipeline.label_maps([pipeline.prepare_image(load_image(p), resolution=resolution) for p in paths])

    return predict, classes


@torch.no_grad()
def predict_probs(model: SegmentationModel, image: np.ndarray, scales: Sequence[float] = (1.0,),
                  flip: bool = False, device: torch.device | None = None, fusion: str = "mean") -> torch.Tensor:
    """Softmax probabilities [C, H, W] for one RGB uint8 image over scales (and mirrors).

    `fusion="mean"` averages the per-scale probabilities; `"max"` is DeepLab's MSC: the softmax of the
    element-wise max of the upsampled logits, with floor(H·s) scaled sizes, as `model_export.msc` bakes it
    into an ONNX graph. The images are resized with half-pixel centres; the logits are upsampled as the model's
    export does (`wrapper.upsample_logits`: corner-aligned for a converted Caffe model)."""
    if fusion not in ("mean", "max"):
        raise ValueError(f"fusion must be 'mean' or 'max', got {fusion!r}")
    device = device or torch.device("cpu")
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()[None].to(device)
    h, w = image.shape[:2]
    total = None
    for s in scales:
        if s == 1:
            xs = x
        elif fusion == "max":
            xs = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        else:
            xs = F.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear",
                               align_corners=False)
        xs = normalize_nchw(xs, model.preprocessing)
        for mirrored in (False, True) if flip else (False,):
            inp = xs.flip(-1) if mirrored else xs
            logits = upsample_logits(model, model(inp), (h, w))  # as the exported graph: the model's mapping
            logits = logits.flip(-1) if mirrored else logits
            if fusion == "max":
                total = logits if total is None else torch.maximum(total, logits)
            else:
                probs = torch.softmax(logits, dim=1)
                total = probs if total is None else total + probs
    assert total is not None
    if fusion == "max":
        return torch.softmax(total, dim=1)[0]
    return total[0] / (len(scales) * (2 if flip else 1))


def checkpoint_predictor(path: str | Path, input_size: int | None = None, scales: Sequence[float] = (1.0,),
                         flip: bool = False, device: str = "auto", fusion: str = "mean", protocol: str = "auto",
                         crf: CrfParams | None = None) -> tuple[Predictor, list[str]]:
    """Predict with a training checkpoint in PyTorch. `input_size` None = the checkpoint's own, 0 = native
    resolution without padding; `protocol` letterboxes to it or pads to it (model_export.protocol)."""
    from service.core.letterbox import LetterboxInfo, letterbox, unletterbox

    from .device import pick_device

    model, info = load_checkpoint_model(path)
    dev = pick_device(device)
    model.to(dev)
    size = info.get("input_size", 0) if input_size is None else input_size
    pad = tuple(round(v) for v in preprocessing_constants(model.preprocessing)[0])
    geometry = resolve_protocol(protocol, info["classes"])

    def one(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        if not size:
            canvas, box = image, LetterboxInfo(orig_h=h, orig_w=w, new_h=h, new_w=w, size=max(h, w))
        elif geometry == "native":
            canvas, box = pad_native(image, size, pad)
        else:
            canvas, box = letterbox(image, size, pad)  # type: ignore[arg-type]
        probs = predict_probs(model, canvas, scales, flip, dev, fusion).cpu().numpy()
        labels = crf_on_canvas(canvas, probs, box, crf) if crf is not None else probs.argmax(0).astype(np.uint8)
        return unletterbox(labels, box)

    return (lambda paths: [one(load_image(p)) for p in paths]), list(info["classes"])


def evaluate_split(predict: Predictor, dataset: VOCSegmentation, num_classes: int, *,
                   batch_size: int = DEFAULT_BATCH_SIZE,
                   limit: int | None = None, progress: bool = True,
                   on_prediction: Callable[[str, np.ndarray, np.ndarray], None] | None = None,
                   classes: Sequence[str] | None = None) -> SegmentationScores:
    """Run `predict` over the split and score it; `on_prediction(id, target, pred)` sees every pair.

    DatasetError when the labels scored hold no labelled pixel (the mIoU would be NaN); a warning for a class
    (`classes` names them) that never appears in them, and for labels that are mostly the ignore label."""
    cm = ConfusionMatrix(num_classes)
    census = LabelCensus()
    n = len(dataset) if limit is None else min(limit, len(dataset))
    warn_exif_oriented([dataset.image_path(i) for i in range(n)])
    with tqdm(total=n, desc="evaluate", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, n, batch_size):
            idx = list(range(start, min(n, start + batch_size)))
            preds = predict([dataset.image_path(i) for i in idx])
            for i, pred in zip(idx, preds, strict=True):
                target = dataset.read_label(i)
                if pred.shape != target.shape:
                    raise DatasetError(f"prediction {pred.shape} and label {dataset.label_path(i)} "
                                       f"{target.shape} differ in size")
                cm.update(target, pred)
                census.add(target)
                if on_prediction is not None:
                    on_prediction(dataset.ids[i], target, pred)
            bar.update(len(idx))
            bar.set_postfix(miou=f"{cm.compute().miou:.4f}")
    if cm.out_of_range:  # left out of the scores, as the VOC protocol does, but a mismatch is worth a word
        log.warning("%d ground-truth pixels hold class ids the model does not have (it has %d classes; %d is the "
                    "ignore label): left out of the scores. Is this the dataset the model was trained for?",
                    cm.out_of_range, num_classes, cm.ignore_index)
    what = f"split {dataset.split!r}" + (f" (first {n} images)" if n < len(dataset) else "")
    if not cm.matrix.any():
        raise census.no_labels(what)
    census.warn(classes if classes is not None else [str(i) for i in range(num_classes)], what)
    return cm.compute()


def evaluate_model(model_path: str | Path, data: str | Path, split: str = "val", *,
                   labels_dir: str = "SegmentationClass", scales: Sequence[float] = (1.0,), flip: bool = False,
                   fusion: str = "mean", protocol: str = "auto", crf: CrfParams | None = None,
                   input_size: int | None = None, threads: int = 0, device: str = "auto",
                   batch_size: int = DEFAULT_BATCH_SIZE, limit: int | None = None, progress: bool = True,
                   on_prediction: Callable[[str, np.ndarray, np.ndarray], None] | None = None,
                   resolution: Resolution | None = None) -> tuple[SegmentationScores, list[str]]:
    """Score an `.onnx` file or a training checkpoint on a split; returns the scores and class names."""
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    for option, value in (("batch_size", batch_size), ("limit", limit)):
        if value is not None and value < 1:  # a limit of 0 or less would score nothing and print NaN
            raise ModelExportError(f"{OPTION} must be at least 1, got {value}", option=option)
    if path.suffix == ".onnx":
        checkpoint_only = [name for name, used in (("scales", tuple(scales) != (1.0,)), ("flip", flip),
                                                   ("input_size", input_size is not None)) if used]
        if checkpoint_only:
            raise ModelExportError(f"{OPTION} needs a PyTorch checkpoint; for an ONNX file, bake multi-scale "
                                   "testing into the graph with `segment-export msc`", option=checkpoint_only[0])
        predict, classes = onnx_predictor(path, threads=threads, providers="cpu" if device == "cpu" else "auto",
                                          protocol=protocol, crf=crf, resolution=resolution)
    elif resolution is not None:
        raise ModelExportError(f"{OPTION} scores an exported .onnx file as the service serves it; for a checkpoint, "
                               "--input-size 0 runs at native resolution", option="resolution")
    else:
        predict, classes = checkpoint_predictor(path, input_size, scales, flip, device, fusion, protocol, crf)
    dataset = VOCSegmentation(data, split, labels_dir)
    scores = evaluate_split(predict, dataset, len(classes), batch_size=batch_size, limit=limit,
                            progress=progress, on_prediction=on_prediction, classes=classes)
    return scores, classes


def format_scores(scores: SegmentationScores, classes: list[str]) -> str:
    """A small human-readable table."""
    lines = [f"mIoU {scores.miou:.4f}   pixel accuracy {scores.pixel_accuracy:.4f}   "
             f"mean class accuracy {scores.mean_class_accuracy:.4f}"]
    for name, iou in zip(classes, scores.per_class_iou, strict=True):
        lines.append(f"  {name:<16} {'n/a (absent)' if np.isnan(iou) else f'{iou:.4f}'}")
    return "\n".join(lines)

