"""Contract metadata round-trips through the ONNX file, and malformed metadata is refused clearly."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from model_export.architectures import build_model
from model_export.export import build_metadata, export_onnx, read_metadata
from service.core.contract import VOC_CLASSES, ContractError, ModelMetadata, voc_colormap


def test_voc_colormap_matches_the_published_palette() -> None:
    cmap = voc_colormap(256)
    # Well-known VOC entries: background, aeroplane, person, tvmonitor, and the 255 "void" colour.
    assert cmap[0] == [0, 0, 0]
    assert cmap[1] == [128, 0, 0]
    assert cmap[15] == [192, 128, 128]
    assert cmap[20] == [0, 64, 128]
    assert cmap[255] == [224, 224, 192]


def test_metadata_round_trips_bit_for_bit(tmp_path: Path) -> None:
    model = build_model("deeplabv3_thin", num_classes=21).eval()
    meta = build_metadata(model, num_classes=21, input_size=300, source="tests", source_sha256="ab" * 32)
    path = export_onnx(model, tmp_path / "m.onnx", meta)
    back = read_metadata(path)
    assert back.classes == list(VOC_CLASSES)
    assert back.palette == voc_colormap(21)
    assert back.to_props() == {**meta.to_props(), "confidence": "false"}
    # What the service sees through onnxruntime is the same.
    props = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
    assert ModelMetadata.from_props(props.custom_metadata_map) == back
    assert json.loads(props.custom_metadata_map["mean"]) == [123.675, 116.28, 103.53]
    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17


def test_caffe_preprocessing_is_recorded() -> None:
    model = build_model("deeplabv2_thin", num_classes=21)
    model.preprocessing = "caffe"
    meta = build_metadata(model, num_classes=21)
    assert meta.channel_order == "BGR"
    assert meta.std == [1.0, 1.0, 1.0]
    assert meta.mean == [122.675, 116.669, 104.008]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p.pop("classes"), "missing ['classes']"),
        (lambda p: p.update(palette="[[0,0]]"), "palette"),
        (lambda p: p.update(classes="not json"), "'classes' is not valid JSON"),
        (lambda p: p.update(input_size="-3"), "input_size"),
        (lambda p: p.update(std="[1, 0, 1]"), "std"),
        (lambda p: p.update(channel_order="GBR"), "channel_order"),
    ],
)
def test_malformed_metadata_is_refused_with_a_clear_message(mutate, message: str) -> None:
    props = build_metadata(build_model("deeplabv3_thin", num_classes=3), num_classes=3).to_props()
    mutate(props)
    with pytest.raises(ContractError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ModelMetadata.from_props(props)


def test_too_many_classes_for_uint8_is_refused() -> None:
    with pytest.raises(ContractError, match="uint8"):
        ModelMetadata(classes=[str(i) for i in range(300)], palette=voc_colormap(300), input_size=64,
                      arch="x", source="y")
