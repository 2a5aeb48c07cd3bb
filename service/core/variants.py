"""A precision variant picked beside the given model file (`x.fp16.onnx`, `x.int8.onnx` for `x.onnx`) must be the
same model: a retrained `x.onnx` rolled out beside the fp16 file of the model before it made a GPU server (where
`auto` picks the fp16 file) serve the old model under the new file's name, silently.

A variant's metadata is a copy of its fp32 file's (model_export.quantize), so the two agree on everything that
tells one model from another: the weights' `source` and `source_sha256`, `arch`, `classes`, `palette`, input size
and normalisation. Bytes cannot be compared: the fp32 file of `segment-export export --precision fp16` is a
temporary one, never the `x.onnx` beside it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort

from .contract import ModelMetadata
from .engine_resolve import EngineError

log = logging.getLogger(__name__)

# Always present (required, or with a default).
_MODEL_FIELDS = ("arch", "classes", "palette", "input_size", "mean", "std", "channel_order", "source")
# Compared only when both files carry them: older exports lack some of them, and a key added later must not
# refuse a variant of the same weights exported before it.
_OPTIONAL_KEYS = ("source_sha256", "confidence", "msc_scales", "msc_flip", "upsampling")


def differences(given: ModelMetadata, variant: ModelMetadata) -> list[str]:
    """The metadata keys on which the two files disagree about which model they are."""
    found = [name for name in _MODEL_FIELDS if getattr(given, name) != getattr(variant, name)]
    for key in _OPTIONAL_KEYS:
        mine = given.source_sha256 if key == "source_sha256" else given.extra.get(key, "")
        theirs = variant.source_sha256 if key == "source_sha256" else variant.extra.get(key, "")
        if mine and theirs and mine != theirs:
            found.append(key)
    return found


def read_metadata(path: Path) -> ModelMetadata:
    """The contract metadata of a model file, from a CPU session that optimises nothing (it is read once, never
    run; on a GPU server it must not take device memory)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map)


def check_variant(given: Path, variant: Path, variant_metadata: ModelMetadata) -> None:
    """Refuse `variant`, picked for `given`, when its metadata names another model (EngineError, `precision`).
    A deployment that ships the variant alone (no `given` file) has nothing to compare it with: it is served."""
    if not given.exists():
        log.info("%s is not there: %s is served without a check against it", given, variant.name)
        return
    try:
        given_metadata = read_metadata(given)
    except Exception as exc:  # ORT raises its own exception types; the file given is what must load
        raise EngineError(f"{given} cannot be read to check its {variant_metadata.precision} variant "
                          f"{variant.name} against it: {exc}", "model_path") from None
    found = differences(given_metadata, variant_metadata)
    if not found:
        if not (given_metadata.source_sha256 and variant_metadata.source_sha256):
            # Two exports of random weights, or files that do not record their weights: alike on paper only.
            log.warning("%s and %s do not both record the sha256 of their weights (source_sha256): served as a "
                        "variant of it on their other metadata alone", variant.name, given.name)
        return
    shown = ", ".join(f"{key} ({_short(given_metadata, key)} against {_short(variant_metadata, key)})"
                      for key in found)
    raise EngineError(
        f"{variant.name} ({variant_metadata.precision}) is not a variant of {given.name}: their metadata differ in "
        f"{shown}, so it was made from another model (the file beside it from before a retraining?). Export the "
        f"variant again from the same weights (segment-export export --precision {variant_metadata.precision}), "
        f"remove it, or set SEGMENT_PRECISION=fp32 to serve {given.name} itself", "precision")


def _short(meta: ModelMetadata, key: str) -> str:
    value = meta.source_sha256 if key == "source_sha256" else getattr(meta, key, None)
    if value is None:
        value = meta.extra.get(key, "")
    text = str(list(value) if isinstance(value, tuple) else value)
    return text[:12] if key == "source_sha256" else (text if len(text) <= 40 else text[:37] + "...")
