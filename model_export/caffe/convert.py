"""Convert the DeepLab-v2 ResNet-101 Caffe weights (`.caffemodel`) into our `deeplabv2_resnet101`.

Layer naming (the MSRA ResNet convention that DeepLab-v2 kept):

- stem: `conv1`, `bn_conv1`, `scale_conv1` -> `backbone.conv1`, `backbone.bn1`;
- stage k = 2..5 is `backbone.layer{k-1}`. Its blocks are named `a`, then `b`, `c` when the stage has at most
  three blocks (res2, res5 of ResNet-101), or `b1` .. `b{n-1}` when it has more (res3: a, b1..b3;
  res4: a, b1..b22). A thin test net with layers (1, 2, 4, 1) is therefore res2a; res3a, res3b;
  res4a, res4b1..b3; res5a;
- per block `res{k}{blk}_branch{2a,2b,2c}` -> `conv1/2/3` and `branch1` -> `downsample.0` (first block);
  each has `bn{k}{blk}_branch*` (BatchNorm) and `scale{k}{blk}_branch*` (Scale) -> `bn1/2/3`, `downsample.1`;
- the ASPP: `fc1_voc12_c0`..`c3` (weights and biases) -> `classifier.convs.0..3` (rates 6, 12, 18, 24).
- an initialisation file (DeepLab-v2's `init.caffemodel`) has no ASPP but a single 1×1 (or fully connected)
  pre-training classifier instead; it is left out and the ASPP starts as the seed starts it, N(0, 0.01) with
  zero bias, for fine-tuning (`segment-export convert-caffe --checkpoint`, then `train --init`).

Caffe's BatchNorm keeps (mean * f, variance * f, f); like Caffe we divide by f, and f == 0 means zero
statistics (Caffe multiplies by 0 then). The Scale layer holds gamma and beta. The MSC model's
`*_res075` / `*_res05` branches share the main branch's weights and are skipped.
The weights expect BGR input minus the mean (104.008, 116.669, 122.675), no std: the model is built with
preprocessing "caffe" and the export wrapper bakes exactly that into the graph. A trained file's model upsamples
its logits corner-aligned (`upsample_align_corners`), as Caffe's Interp layer did in training and testing.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..architectures import build_model
from ..errors import ModelExportError
from ..models import SegmentationModel
from ..torch_io import Mismatch
from .proto import messages

log = logging.getLogger(__name__)

MSC_SUFFIX = re.compile(r"_res(075|05)$")
DEFAULT_HEAD = "fc1_voc12"
_BLOCK = re.compile(r"^res(\d)([a-z])(\d*)_branch2a$")
_HEAD = re.compile(r"^(fc1\w*)_c0$")
_BACKBONE = re.compile(r"^(res|bn|scale)\d[a-z]\d*_branch(1|2[abc])$")
_MAX_LISTED = 10


class CaffeError(ModelExportError):
    """A .caffemodel cannot be read or does not fit the model; the message lists what is wrong."""


@dataclass
class CaffeLayer:
    """One layer that carries parameters."""

    name: str
    type: str
    blobs: list[np.ndarray]
    legacy_shape: bool = False


def _blob_array(blob: Any) -> tuple[np.ndarray, bool]:
    values = blob.data if len(blob.data) else blob.double_data
    array = np.asarray(values, dtype=np.float32)
    if blob.HasField("shape"):
        return array.reshape([int(d) for d in blob.shape.dim]), False
    dims = [blob.num, blob.channels, blob.height, blob.width]
    return array.reshape([int(d) for d in dims]) if np.prod(dims) == array.size else array, True


def read_caffemodel(path: str | Path) -> tuple[dict[str, CaffeLayer], list[str]]:
    """Layers that carry blobs, by name, plus the names of the skipped MSC branch layers."""
    path = Path(path)
    if not path.is_file():
        raise CaffeError(f"caffemodel {path} does not exist")
    net = messages()["NetParameter"]()
    try:
        net.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf's DecodeError and friends
        raise CaffeError(f"{path} is not a readable .caffemodel (truncated or not protobuf?): {exc}") from None
    layers: dict[str, CaffeLayer] = {}
    skipped = []
    for layer in [*net.layer, *net.layers]:
        if not len(layer.blobs):
            continue
        if MSC_SUFFIX.search(layer.name):
            skipped.append(layer.name)
            continue
        arrays = [_blob_array(b) for b in layer.blobs]
        layers[layer.name] = CaffeLayer(layer.name, str(layer.type), [a for a, _ in arrays],
                                        any(legacy for _, legacy in arrays))
    if not layers:
        raise CaffeError(f"{path} holds no layers with parameters: not a trained .caffemodel")
    return layers, skipped


def block_names(count: int) -> list[str]:
    """MSRA block names of a stage: a, b, c for short stages; a, b1, b2, ... for longer ones."""
    if count <= 3:
        return ["a", "b", "c"][:count]
    return ["a"] + [f"b{i}" for i in range(1, count)]


def _is_backbone(name: str) -> bool:
    return name in ("conv1", "bn_conv1", "scale_conv1") or _BACKBONE.match(name) is not None


def pretraining_head(layers: dict[str, CaffeLayer]) -> str | None:
    """The one non-backbone layer of an initialisation file, if it is a 1×1 conv or fully connected layer."""
    others = [name for name in layers if not _is_backbone(name)]
    if len(others) != 1:
        return None
    weight = layers[others[0]].blobs[0]
    return others[0] if weight.ndim == 2 or (weight.ndim == 4 and weight.shape[2:] == (1, 1)) else None


def infer_layout(layers: dict[str, CaffeLayer]) -> tuple[tuple[int, ...], int, int | None, str | None]:
    """(blocks per stage, stem width, number of classes, head prefix) read from the layer names/blobs.
    Classes and head are None for an initialisation file (no ASPP, one 1×1 pre-training classifier)."""
    counts = Counter(m.group(1) for name in layers if (m := _BLOCK.match(name)))
    stages = tuple(counts.get(str(k), 0) for k in range(2, 6))
    heads = sorted({m.group(1) for name in layers if (m := _HEAD.match(name))})
    problems = []
    if "conv1" not in layers:
        problems.append("no 'conv1' layer")
    if 0 in stages:
        problems.append(f"blocks per stage res2..res5 = {stages}")
    if len(heads) > 1 or (not heads and pretraining_head(layers) is None):
        problems.append(f"expected one ASPP head '<prefix>_c0' or a single 1x1 pre-training classifier, "
                        f"found {heads or 'none'}")
    if problems:
        raise CaffeError("not a DeepLab-v2 ResNet caffemodel: " + "; ".join(problems))
    width = int(layers["conv1"].blobs[0].shape[0])
    if not heads:
        return stages, width, None, None
    num_classes = int(layers[f"{heads[0]}_c0"].blobs[0].shape[0])
    return stages, width, num_classes, heads[0]


def build_target(stages: tuple[int, ...], width: int, num_classes: int) -> SegmentationModel:
    """deeplabv2_resnet101 for the published layout, else the same design at the file's depth/width."""
    if stages == (3, 4, 23, 3) and width == 64:
        model = build_model("deeplabv2_resnet101", num_classes)
    else:
        model = build_model("deeplabv2_thin", num_classes, base_width=width, layers=stages)
    model.preprocessing = "caffe"
    return model


def layer_map(model: SegmentationModel) -> list[tuple[str, str, str, str, str]]:
    """(caffe conv, caffe BatchNorm, caffe Scale, torch conv prefix, torch BN prefix) per backbone conv."""
    body = model.backbone
    rows = [("conv1", "bn_conv1", "scale_conv1", "backbone.conv1", "backbone.bn1")]
    for index in range(1, 5):
        stage = getattr(body, f"layer{index}")
        for block, tag in zip(stage, block_names(len(stage)), strict=True):
            base = f"{index + 1}{tag}"
            prefix = f"backbone.layer{index}.{block_index(tag)}"
            for branch, conv, bn in (("2a", "conv1", "bn1"), ("2b", "conv2", "bn2"), ("2c", "conv3", "bn3")):
                rows.append((f"res{base}_branch{branch}", f"bn{base}_branch{branch}",
                             f"scale{base}_branch{branch}", f"{prefix}.{conv}", f"{prefix}.{bn}"))
            if block.downsample is not None:
                rows.append((f"res{base}_branch1", f"bn{base}_branch1", f"scale{base}_branch1",
                             f"{prefix}.downsample.0", f"{prefix}.downsample.1"))
    return rows


def block_index(tag: str) -> int:
    """Index of a block inside its stage, from its MSRA tag (a -> 0, b/b1 -> 1, c/b2 -> 2, ...)."""
    return int(tag[1:]) if tag[1:] else ord(tag) - ord("a")


class _Collector:
    """Gathers every problem before failing, so one error lists them all."""

    def __init__(self, layers: dict[str, CaffeLayer]) -> None:
        self.layers = layers
        self.used: set[str] = set()
        self.missing: list[str] = []
        self.shapes: list[str] = []

    def blobs(self, name: str, min_count: int) -> list[np.ndarray] | None:
        layer = self.layers.get(name)
        if layer is None:
            self.missing.append(name)
            return None
        self.used.add(name)
        if len(layer.blobs) < min_count:
            self.shapes.append(f"{name}: {len(layer.blobs)} blobs, expected {min_count}")
            return None
        return layer.blobs

    def fit(self, name: str, index: int, array: np.ndarray, target: torch.Tensor) -> torch.Tensor | None:
        shape = tuple(target.shape)
        if tuple(array.shape) == shape or (self.layers[name].legacy_shape and array.size == target.numel()):
            return torch.from_numpy(np.ascontiguousarray(array).reshape(shape).copy())
        self.shapes.append(f"{name} blob {index} {tuple(array.shape)} vs model {shape}")
        return None


def caffe_state_dict(layers: dict[str, CaffeLayer], model: SegmentationModel,
                     head: str | None = DEFAULT_HEAD) -> dict[str, torch.Tensor]:
    """The model's state_dict filled from the Caffe layers; CaffeError lists missing, extra and misshapen.
    `head` None: an initialisation file; its pre-training classifier is left out, the ASPP keeps its init."""
    target = model.state_dict()
    state = dict(target)
    col = _Collector(layers)

    def put(name: str, index: int, key: str, array: np.ndarray) -> None:
        value = col.fit(name, index, array, target[key])
        if value is not None:
            state[key] = value

    for conv, bn, scale, conv_key, bn_key in layer_map(model):
        conv_blobs = col.blobs(conv, 1)
        bn_blobs = col.blobs(bn, 3)
        scale_blobs = col.blobs(scale, 1)
        if conv_blobs is not None:
            put(conv, 0, f"{conv_key}.weight", conv_blobs[0])
        if bn_blobs is not None:
            factor = float(np.asarray(bn_blobs[2]).reshape(-1)[0])
            inv = 0.0 if factor == 0 else 1.0 / factor  # Caffe's own rule for a zero factor
            mean = bn_blobs[0] * inv
            if conv_blobs is not None and len(conv_blobs) > 1:
                # A conv bias before BN folds exactly into the mean: BN(Wx + b) uses (Wx + b - mean).
                mean = mean - conv_blobs[1].reshape(mean.shape)
            put(bn, 0, f"{bn_key}.running_mean", mean)
            put(bn, 1, f"{bn_key}.running_var", bn_blobs[1] * inv)
        if scale_blobs is not None:
            put(scale, 0, f"{bn_key}.weight", scale_blobs[0])
            beta = scale_blobs[1] if len(scale_blobs) > 1 else np.zeros_like(scale_blobs[0])
            put(scale, 1, f"{bn_key}.bias", beta)
    if head is None:
        col.used.update(name for name in layers if not _is_backbone(name))
    for index in range(len(model.classifier.convs) if head is not None else 0):
        name = f"{head}_c{index}"
        blobs = col.blobs(name, 2)
        if blobs is not None:
            put(name, 0, f"classifier.convs.{index}.weight", blobs[0])
            put(name, 1, f"classifier.convs.{index}.bias", blobs[1])
    extra = sorted(set(layers) - col.used)
    mismatch = Mismatch(missing=col.missing, unexpected=extra, shapes=col.shapes)
    if mismatch:
        raise CaffeError(f"caffemodel does not fit {model.arch}: "
                         + mismatch.describe(noun="layers", unexpected_word="extra", limit=_MAX_LISTED))
    return state


def convert_caffemodel(path: str | Path, num_classes: int | None = None,
                       ) -> tuple[SegmentationModel, dict[str, Any]]:
    """Read a DeepLab-v2 .caffemodel and return the eval-mode model (preprocessing "caffe") and info.

    `num_classes` sizes a fresh ASPP for an initialisation file (default 21); a trained file must agree."""
    layers, skipped = read_caffemodel(path)
    stages, width, found, head = infer_layout(layers)
    if found is not None and num_classes not in (None, found):
        raise CaffeError(f"{Path(path).name} has {found} classes, not {num_classes}")
    num_classes = found or num_classes or 21
    model = build_target(stages, width, num_classes)
    model.load_state_dict(caffe_state_dict(layers, model, head), strict=True)
    # Caffe's Interp upsamples corner-aligned: at DeepLab's 8k+1 sizes logit cell i stands for pixel 8i, and the
    # weights were trained and tested so. A fresh ASPP (initialisation file) learns our trainer's centres instead.
    model.upsample_align_corners = head is not None
    if skipped:
        log.info("skipped %d MSC branch layers that share the main branch's weights", len(skipped))
    info = {"arch": model.arch, "num_classes": num_classes, "layers": stages, "base_width": width,
            "head": head, "skipped": skipped,
            "pretraining_head": None if head else pretraining_head(layers),
            "model_kwargs": {} if model.arch == "deeplabv2_resnet101" else {"base_width": width,
                                                                             "layers": list(stages)}}
    return model.eval(), info
