"""The contract checked on a loaded onnxruntime session: input and output names, types and ranks, and the
metadata (`service.core.contract` defines them)."""

from __future__ import annotations

import onnxruntime as ort

from .contract import CONFIDENCE_OUTPUT, INPUT_NAME, LABELS_OUTPUT, ContractError, ModelMetadata


def validate_contract(session: ort.InferenceSession) -> ModelMetadata:
    """Check the graph's input/output names, types and ranks and parse its metadata; raise ContractError."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if INPUT_NAME not in inputs:
        raise ContractError(f"model has no input named {INPUT_NAME!r} (inputs: {sorted(inputs)})")
    image = inputs[INPUT_NAME]
    if image.type != "tensor(uint8)" or len(image.shape) != 4 or image.shape[3] != 3:
        raise ContractError(f"input {INPUT_NAME!r} must be uint8 [batch, height, width, 3] RGB, "
                            f"got {image.type} {image.shape}")
    if isinstance(image.shape[0], int):  # symbolic (a name) or unknown (None) is dynamic
        raise ContractError(f"input {INPUT_NAME!r} has a fixed batch size {image.shape[0]}: the contract needs it "
                            "dynamic, as the service runs requests in batches (export with segment-export)")
    if LABELS_OUTPUT not in outputs:
        raise ContractError(f"model has no output named {LABELS_OUTPUT!r} (outputs: {sorted(outputs)})")
    labels = outputs[LABELS_OUTPUT]
    if labels.type != "tensor(uint8)" or len(labels.shape) != 3:
        raise ContractError(f"output {LABELS_OUTPUT!r} must be uint8 [batch, height, width], "
                            f"got {labels.type} {labels.shape}")
    # Optional, but when present it has the labels' type and rank: a float or per-class output is another contract.
    confidence = outputs.get(CONFIDENCE_OUTPUT)
    if confidence is not None and (confidence.type != "tensor(uint8)" or len(confidence.shape) != 3):
        raise ContractError(f"output {CONFIDENCE_OUTPUT!r} must be uint8 [batch, height, width], "
                            f"got {confidence.type} {confidence.shape}")
    props = session.get_modelmeta().custom_metadata_map
    if not props:
        raise ContractError("model has no metadata_props (classes, palette, input_size...); "
                            "export it with `segment-export export`")
    metadata = ModelMetadata.from_props(props)
    # Every image is letterboxed to input_size x input_size: a graph fixed to another height or width would fail
    # every run, warm-up's first, and the labels must come back at the input's height and width.
    size = metadata.input_size
    for name, shape in ((INPUT_NAME, image.shape), (LABELS_OUTPUT, labels.shape)):
        fixed = [d for d in shape[1:3] if isinstance(d, int)]
        if any(d != size for d in fixed):
            raise ContractError(f"{name!r} has a fixed height and width {shape[1:3]} but the metadata 'input_size' "
                                f"is {size}: the service runs every image at {size}x{size}")
    return metadata
