"""DeepLab-v2 Caffe import: a thin net written as a real .caffemodel with the published names, converted."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model_export.caffe import CaffeError, convert_caffemodel
from model_export.caffe.convert import block_names
from model_export.caffe.proto import SCHEMA
from model_export.cli import main as cli_main
from model_export.export import read_metadata
from model_export.wrapper import ExportWrapper
from service.core.contract import VOC_CLASSES
from testkit.photos import photo
from tests.weights.caffe_fixture import (
    BN_FACTOR,
    LAYERS,
    WIDTH,
    make_weights,
    reference_model,
    write_caffemodel,
)

BGR_MEAN = np.array([104.008, 116.669, 122.675], np.float32)


@pytest.fixture(scope="module")
def caffe_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    blobs, truth = make_weights()
    path = write_caffemodel(tmp_path_factory.mktemp("caffe") / "thin.caffemodel", blobs)
    return path, truth


def test_published_block_naming() -> None:
    assert block_names(3) == ["a", "b", "c"]  # res2, res5 of ResNet-101
    assert block_names(4) == ["a", "b1", "b2", "b3"]  # res3
    assert block_names(23)[-1] == "b22"  # res4


def test_converted_model_equals_direct_build_parameter_by_parameter(caffe_file) -> None:
    path, truth = caffe_file
    model, info = convert_caffemodel(path)
    assert model.preprocessing == "caffe"
    assert info["layers"] == LAYERS and info["base_width"] == WIDTH and info["num_classes"] == 21
    assert sorted(info["skipped"]) == ["conv1_res05", "conv1_res075", "fc1_voc12_c0_res05",
                                       "fc1_voc12_c0_res075"]
    direct = reference_model()
    missing, unexpected = direct.load_state_dict(truth, strict=False)
    assert unexpected == [] and all(k.endswith("num_batches_tracked") for k in missing)
    ours, ref = model.state_dict(), direct.state_dict()
    assert ours.keys() == ref.keys()
    for key, value in ref.items():
        if key.endswith(("running_mean", "running_var")):
            # stored as value * factor in float32 and divided back: equal up to float32 rounding
            torch.testing.assert_close(ours[key], value, rtol=2e-7, atol=0, msg=key)
        else:
            assert torch.equal(ours[key], value), key


def test_cli_export_matches_eager_on_photos(caffe_file, tmp_path) -> None:
    path, _ = caffe_file
    out = tmp_path / "voc12.onnx"
    assert cli_main(["convert-caffe", str(path), "-o", str(out)]) == 0
    meta = read_metadata(out)
    assert meta.channel_order == "BGR" and meta.std == [1.0, 1.0, 1.0]
    assert meta.mean == [122.675, 116.669, 104.008]  # RGB order in the metadata
    assert meta.classes == list(VOC_CLASSES) and meta.source == "caffe:thin.caffemodel"
    assert len(meta.source_sha256) == 64 and meta.input_size == 513
    model, _ = convert_caffemodel(path)
    wrapper = ExportWrapper(model).eval()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    agree = total = 0
    classes_seen: set[int] = set()
    for size in ((129, 97), (160, 120)):
        batch = np.stack([photo("astronaut.png", size), photo("rocket.jpg", size)])
        (labels,) = session.run(["labels"], {"image": batch})
        with torch.no_grad():
            expected = wrapper(torch.from_numpy(batch)).numpy()
        agree += int((labels == expected).sum())
        total += expected.size
        classes_seen |= set(np.unique(expected).tolist())
    assert agree / total >= 0.999, f"agreement {agree / total:.5f}"
    assert len(classes_seen) > 1


class _Observe(torch.nn.Module):
    """Makes the preprocessed input observable: 'logits' are the 3 normalised channels, scaled."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": x * self.scale}


def test_bgr_mean_preprocessing_in_graph_matches_numpy(tmp_path) -> None:
    from model_export.export import build_metadata, export_onnx
    from model_export.models import SegmentationModel

    scale = 0.05
    model = SegmentationModel(_Observe(scale), torch.nn.Identity(), None, "deeplabv2_thin", "caffe", 1)
    meta = build_metadata(model, num_classes=3, classes=["b", "g", "r"], input_size=64, source="test")
    out = export_onnx(model, tmp_path / "observe.onnx", meta, confidence=True)
    # Photos on which each of B, G, R (mean-subtracted) is the largest channel somewhere.
    image = np.stack([photo("astronaut.png", (160, 120)), photo("rocket.jpg", (160, 120))])
    labels, confidence = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        ["labels", "confidence"], {"image": image})
    # NumPy reference of the DeepLab-v2 Caffe input: BGR channel order, mean subtracted, no scaling.
    reference = image[..., ::-1].astype(np.float32) - BGR_MEAN
    logits = reference * scale
    soft = np.exp(logits - logits.max(-1, keepdims=True))
    soft /= soft.sum(-1, keepdims=True)
    expected_labels = logits.argmax(-1)
    expected_conf = np.round(soft.max(-1) * 255)
    assert (labels == expected_labels).mean() >= 0.999
    assert np.abs(confidence.astype(int) - expected_conf).max() <= 1
    # Not a vacuous check: all three channels win somewhere.
    assert set(np.unique(expected_labels)) == {0, 1, 2}


def test_missing_extra_and_misshapen_layers_are_listed(tmp_path, capsys) -> None:
    blobs, _ = make_weights()
    del blobs["res4b2_branch2b"]
    blobs["fc8_unknown"] = [np.zeros((3, 3), np.float32)]
    blobs["scale3b_branch2c"] = [np.ones(5, np.float32), np.zeros(5, np.float32)]
    path = write_caffemodel(tmp_path / "bad.caffemodel", blobs)
    with pytest.raises(CaffeError) as err:
        convert_caffemodel(path)
    msg = str(err.value)
    assert "1 missing layers: res4b2_branch2b" in msg
    assert "1 extra layers: fc8_unknown" in msg
    assert "scale3b_branch2c blob 0 (5,) vs model (64,)" in msg
    assert cli_main(["convert-caffe", str(path), "-o", str(tmp_path / "x.onnx")]) == 2
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1 and "res4b2_branch2b" in stderr and "Traceback" not in stderr


def test_truncated_caffemodel_fails_clearly(caffe_file, tmp_path) -> None:
    path, _ = caffe_file
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(path.read_bytes()[:-1001])
    with pytest.raises(CaffeError, match=r"not a readable \.caffemodel|missing layers"):
        convert_caffemodel(cut)


def test_bn_factor_and_conv_bias_follow_caffe(tmp_path) -> None:
    blobs, truth = make_weights()
    bias = np.linspace(-1, 1, WIDTH).astype(np.float32)
    blobs["conv1"].append(bias)  # some MSRA releases give conv1 a bias; it folds into bn_conv1's mean
    mean, var, _ = blobs["bn2a_branch2a"]
    blobs["bn2a_branch2a"] = [mean, var, np.zeros(1, np.float32)]  # Caffe: factor 0 -> zero statistics
    model, _ = convert_caffemodel(write_caffemodel(tmp_path / "b.caffemodel", blobs, msc=False))
    state = model.state_dict()
    torch.testing.assert_close(state["backbone.bn1.running_mean"],
                               truth["backbone.bn1.running_mean"] - torch.from_numpy(bias))
    assert not state["backbone.layer1.0.bn1.running_var"].any()
    assert BN_FACTOR != 1.0


def test_proto_file_matches_runtime_schema() -> None:
    text = (Path(__file__).parents[2] / "model_export" / "caffe" / "caffe_subset.proto").read_text()
    from_file: dict[str, list[tuple[str, str, str, int, bool]]] = {}
    for message, body in re.findall(r"message (\w+) \{(.*?)\n\}", text, re.S):
        from_file[message] = [(label, type_, name, int(number), "packed = true" in opts)
                              for label, type_, name, number, opts in
                              re.findall(r"(optional|repeated) (\w+) (\w+) = (\d+)(.*?);", body)]
    assert from_file == SCHEMA


def test_resnet101_layer_names_follow_the_published_model() -> None:
    from model_export.architectures import build_model
    from model_export.caffe.convert import layer_map

    rows = layer_map(build_model("deeplabv2_resnet101", 21))
    convs = [row[0] for row in rows]
    assert len(convs) == 1 + 3 * (3 + 4 + 23 + 3) + 4  # stem, 3 per block, one branch1 per stage
    for name in ("res2c_branch2c", "res3b3_branch2a", "res4b22_branch2c", "res5a_branch1", "res5c_branch2b"):
        assert name in convs
    assert "res3d_branch2a" not in convs and "res4b23_branch2a" not in convs
    assert ("res4b22_branch2c", "bn4b22_branch2c", "scale4b22_branch2c", "backbone.layer3.22.conv3",
            "backbone.layer3.22.bn3") in rows
