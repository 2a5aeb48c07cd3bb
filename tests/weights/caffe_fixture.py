"""Write a .caffemodel for a thin DeepLab-v2 with the published MSRA/DeepLab-v2 layer names, using our proto.

The names are spelled out here by hand (not derived from the converter), so the tests check the converter
against an independent statement of the naming scheme.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model_export.architectures import build_model
from model_export.caffe.proto import messages

LAYERS = (1, 2, 4, 1)
WIDTH = 8
NUM_CLASSES = 21
BN_FACTOR = 999.982  # a typical Caffe moving-average factor
# Stage k = 2..5 of the thin net and its block names, as the published files spell them.
BLOCKS = {2: ["a"], 3: ["a", "b"], 4: ["a", "b1", "b2", "b3"], 5: ["a"]}
BRANCHES = {"2a": ("conv1", "bn1"), "2b": ("conv2", "bn2"), "2c": ("conv3", "bn3"),
            "1": ("downsample.0", "downsample.1")}


def reference_model() -> torch.nn.Module:
    return build_model("deeplabv2_thin", NUM_CLASSES, base_width=WIDTH, layers=LAYERS)


def make_weights(seed: int = 0) -> tuple[dict[str, list[np.ndarray]], dict[str, torch.Tensor]]:
    """(caffe layer name -> blobs as Caffe stores them, torch key -> the value it must end up as)."""
    rng = np.random.default_rng(seed)
    shapes = {k: tuple(v.shape) for k, v in reference_model().state_dict().items()}
    caffe: dict[str, list[np.ndarray]] = {}
    truth: dict[str, torch.Tensor] = {}

    def conv_bn(conv_name: str, bn_name: str, scale_name: str, conv_key: str, bn_key: str) -> None:
        shape = shapes[f"{conv_key}.weight"]
        weight = rng.normal(0, np.sqrt(2.0 / np.prod(shape[1:])), shape).astype(np.float32)
        c = shape[0]
        mean = rng.normal(0, 0.2, c).astype(np.float32)
        var = rng.uniform(0.5, 1.5, c).astype(np.float32)
        gamma = rng.uniform(0.5, 1.5, c).astype(np.float32)
        beta = rng.normal(0, 0.2, c).astype(np.float32)
        caffe[conv_name] = [weight]
        caffe[bn_name] = [mean * np.float32(BN_FACTOR), var * np.float32(BN_FACTOR),
                          np.array([BN_FACTOR], np.float32)]
        caffe[scale_name] = [gamma, beta]
        truth.update({f"{conv_key}.weight": weight, f"{bn_key}.running_mean": mean,
                      f"{bn_key}.running_var": var, f"{bn_key}.weight": gamma, f"{bn_key}.bias": beta})

    conv_bn("conv1", "bn_conv1", "scale_conv1", "backbone.conv1", "backbone.bn1")
    for stage, names in BLOCKS.items():
        for index, blk in enumerate(names):
            for branch, (conv, bn) in BRANCHES.items():
                if branch == "1" and index > 0:
                    continue
                prefix = f"backbone.layer{stage - 1}.{index}"
                conv_bn(f"res{stage}{blk}_branch{branch}", f"bn{stage}{blk}_branch{branch}",
                        f"scale{stage}{blk}_branch{branch}", f"{prefix}.{conv}", f"{prefix}.{bn}")
    for i in range(4):
        shape = shapes[f"classifier.convs.{i}.weight"]
        weight = rng.normal(0, 0.05, shape).astype(np.float32)
        bias = rng.normal(0, 0.5, shape[0]).astype(np.float32)
        caffe[f"fc1_voc12_c{i}"] = [weight, bias]
        truth[f"classifier.convs.{i}.weight"] = weight
        truth[f"classifier.convs.{i}.bias"] = bias
    return caffe, {k: torch.from_numpy(v) for k, v in truth.items()}


def _layer_type(name: str) -> str:
    if name.startswith("bn"):
        return "BatchNorm"
    if name.startswith("scale"):
        return "Scale"
    return "Convolution"


def write_caffemodel(path: Path, blobs: dict[str, list[np.ndarray]], msc: bool = True) -> Path:
    """Serialise as a NetParameter (new-style `layer`), with blob-less layers and MSC branch copies mixed in,
    as in the published train2 (MSC) model."""
    net = messages()["NetParameter"](name="deeplabv2_thin_test")
    net.layer.add(name="data", type="ImageData", top=["data", "label"])
    for name, arrays in blobs.items():
        copies = [name] + ([f"{name}_res075", f"{name}_res05"] if msc and name in ("conv1", "fc1_voc12_c0")
                           else [])
        for copy in copies:
            layer = net.layer.add(name=copy, type=_layer_type(name), bottom=["x"], top=[copy])
            for array in arrays:
                blob = layer.blobs.add()
                blob.shape.dim.extend(array.shape)
                # MSC copies get other values: reading them instead of the main branch would show.
                blob.data.extend((array if copy == name else array + 1.0).ravel().tolist())
        if name.startswith("res"):
            net.layer.add(name=f"{name}_relu", type="ReLU", bottom=[name], top=[name])
    net.layer.add(name="fc1_voc12", type="Eltwise", bottom=[f"fc1_voc12_c{i}" for i in range(4)])
    path.write_bytes(net.SerializeToString())
    return path
