"""Export a SegmentationModel to the ONNX contract (docs/CONTRACT.md)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch

from service import __version__
from service.core.contract import (
    CONFIDENCE_OUTPUT,
    INPUT_NAME,
    LABELS_OUTPUT,
    VOC_CLASSES,
    ModelMetadata,
    voc_colormap,
)

from .atomic import atomic_path
from .catalog import DEFAULT_OPSET, default_input_size
from .checkpoint import nonfinite_tensors
from .errors import OPTION, ModelExportError
from .models import SegmentationModel, output_classes
from .wrapper import ExportWrapper, preprocessing_constants, upsampling_name

log = logging.getLogger(__name__)

MIN_OPSET = 17  # the contract's operators (Resize, ArgMax... as it uses them)
# The highest opset torch's TorchScript exporter (`dynamo=False`, which export_onnx uses) supports: above it torch
# warns that the opset is unsupported, and above its own highest it fails with a traceback.
MAX_OPSET: int = getattr(getattr(torch.onnx, "_constants", None), "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)


class NonFiniteWeightsError(ModelExportError):
    """The model's weights hold NaN or infinity: every answer of the exported model would be garbage."""


def check_finite(model: torch.nn.Module, what: str) -> None:
    """NonFiniteWeightsError naming `what` (the weights' source) if a parameter or buffer is NaN or infinite."""
    bad = nonfinite_tensors(model.state_dict())
    if bad:
        raise NonFiniteWeightsError(
            f"{what} holds non-finite weights (NaN or infinity in {len(bad)} tensors, e.g. {bad[0]}): the exported "
            "model would answer garbage. Export a checkpoint saved before training diverged, or train again")


def check_opset(opset: int) -> None:
    """ModelExportError (option `opset`) for an opset outside what the contract needs and torch's exporter writes."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ModelExportError(f"{OPTION} {opset} is not supported: the contract needs opset >= {MIN_OPSET} and "
                               f"torch {torch.__version__.split('+')[0]}'s exporter writes at most {MAX_OPSET} "
                               f"(choose {MIN_OPSET} to {MAX_OPSET})", option="opset")


def check_outputs(num_classes: int, what: str) -> None:
    """ModelExportError for a head of fewer than 2 outputs: the graph labels each pixel with the ArgMax over the
    class outputs, so one output (a sigmoid head) would label every pixel 0 whatever its logit."""
    if num_classes < 2:
        raise ModelExportError(
            f"{what} has {num_classes} output{'s' if num_classes != 1 else ''}: the exported model labels each pixel "
            "with the highest-scoring class, so a one-output (sigmoid) head would label every pixel 0. A binary "
            "model needs 2 classes, background and foreground: train it with 2")


def default_classes(num_classes: int) -> list[str]:
    """VOC names for 21-class models, generic names otherwise."""
    if num_classes == len(VOC_CLASSES):
        return list(VOC_CLASSES)
    return ["background"] + [f"class_{i}" for i in range(1, num_classes)]


def build_metadata(model: SegmentationModel, *, num_classes: int, classes: Sequence[str] | None = None,
                   palette: Sequence[Sequence[int]] | None = None, input_size: int | None = None,
                   source: str = "random-init", source_sha256: str = "",
                   extra: dict[str, str] | None = None) -> ModelMetadata:
    """Metadata for a model: its normalisation and logit upsampling come from the model's own conventions."""
    mean, std, order = preprocessing_constants(model.preprocessing)
    try:
        predicted = output_classes(model)
    except IndexError:  # a head with no convolution (a stand-in in tests): nothing to check against
        predicted = num_classes
    if num_classes != predicted:
        raise ValueError(f"num_classes {num_classes} for a model that predicts {predicted} classes")
    check_outputs(predicted, f"the {model.arch} model's head")
    names = list(classes) if classes is not None else default_classes(num_classes)
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a model with {num_classes} outputs")
    colours = [list(c) for c in palette] if palette is not None else voc_colormap(num_classes)
    # An unknown arch is an error, not resnet50's size; 0 is refused by the metadata, not taken for "not given".
    size = input_size if input_size is not None else default_input_size(model.arch)
    return ModelMetadata(
        classes=names, palette=colours, input_size=size, arch=model.arch, source=source,
        source_sha256=source_sha256, mean=list(mean), std=list(std), channel_order=order,
        # How the graph maps logit cells to pixels, for the record: the Resize node does it, the service reads none.
        project_version=__version__, extra={**(extra or {}), "upsampling": upsampling_name(model)},
    )


def export_onnx(model: SegmentationModel, out_path: str | Path, metadata: ModelMetadata, *,
                confidence: bool = False, opset: int = DEFAULT_OPSET,
                example_hw: tuple[int, int] = (97, 131)) -> Path:
    """Trace `model` wrapped in the contract's pre/post-processing and write a checked ONNX file.

    The example input is batch 2 and an odd, non-square size so that no dimension gets specialised.
    """
    check_opset(opset)
    try:
        check_outputs(output_classes(model), f"the {metadata.arch} model's head")
    except IndexError:  # a head with no convolution (a stand-in in tests): build_metadata's count stands
        check_outputs(len(metadata.classes), f"the {metadata.arch} model")
    check_finite(model, f"the {metadata.arch} model ({metadata.source})")  # whichever command exports it
    out_path = Path(out_path)
    wrapper = ExportWrapper(model.eval(), confidence=confidence).eval()
    example = torch.randint(0, 256, (2, *example_hw, 3), dtype=torch.uint8)
    outputs = [LABELS_OUTPUT, CONFIDENCE_OUTPUT] if confidence else [LABELS_OUTPUT]
    dynamic = {INPUT_NAME: {0: "batch", 1: "height", 2: "width"}}
    dynamic.update({name: {0: "batch", 1: "height", 2: "width"} for name in outputs})
    start = time.perf_counter()
    # torch writes a bare graph, which gets its metadata and checks only afterwards: a file the user names (often
    # the served model) is replaced only by the finished one, never by torch's draft.
    with atomic_path(out_path) as draft, torch.no_grad():
        torch.onnx.export(
            wrapper, (example,), str(draft), input_names=[INPUT_NAME], output_names=outputs,
            dynamic_axes=dynamic, opset_version=opset, dynamo=False, do_constant_folding=True,
        )
        proto = onnx.load(str(draft))
        meta = metadata.to_props()
        meta["confidence"] = "true" if confidence else "false"
        onnx.helper.set_model_props(proto, meta)
        proto.doc_string = f"{metadata.arch} segmentation model, ONNX contract v1 (uint8 NHWC RGB -> uint8 labels)"
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(draft))
    log.info("exported %s in %.1fs (%.1f MB)", out_path, time.perf_counter() - start,
             out_path.stat().st_size / 1e6)
    return out_path


def read_metadata(path: str | Path) -> ModelMetadata:
    """Read the contract metadata back from an ONNX file."""
    proto = onnx.load(str(path), load_external_data=False)
    return ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props})
