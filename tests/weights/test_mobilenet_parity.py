"""torchvision's MobileNetV3 segmentation models through `segment-export pretrained`, with the same proof as
resnet50: torchvision's own model (random init, BN given real statistics) saved as the published file is,
served over real HTTP under the '<name>-<sha256 prefix>.pth' convention, downloaded, loaded strict and
exported; the ONNX labels must equal torchvision's eager `out` argmax on real photographs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision.models.segmentation as tv_seg

from model_export.cli import main as cli_main
from model_export.export import read_metadata
from model_export.torch_io import sha256_file
from model_export.weights import load_weights
from service.core.contract import VOC_CLASSES
from testkit.photos import PHOTOS, photo
from tests.weights.http_server import serve

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
ARCHS = {"deeplabv3_mobilenet_v3_large": {"aux_loss": True}, "lraspp_mobilenet_v3_large": {}}


def _normalise(batch: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0 - MEAN) / STD


def _torchvision_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = getattr(tv_seg, name)(weights=None, weights_backbone=None, **ARCHS[name])
    # Real running statistics, as trained weights have: default ones make a random net predict one class.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(_normalise(np.stack([photo(p, (160, 128)) for p in PHOTOS])))
    return model.eval()


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_pretrained_mobilenet_matches_torchvision_eager(name: str, tmp_path: Path) -> None:
    reference = _torchvision_model(name)
    root = tmp_path / "www"
    root.mkdir()
    tmp = root / "tmp.pth"
    torch.save(reference.state_dict(), tmp)
    digest = sha256_file(tmp)
    file_name = f"{name}-{digest[:8]}.pth"
    tmp.rename(root / file_name)
    out = tmp_path / f"{name}.onnx"
    with serve(root) as base:
        assert cli_main(["pretrained", name, "--url", base + file_name, "--cache-dir", str(tmp_path / "cache"),
                         "-o", str(out)]) == 0
    meta = read_metadata(out)
    assert meta.arch == name and meta.classes == list(VOC_CLASSES) and meta.input_size == 520
    assert meta.source_sha256 == digest and meta.channel_order == "RGB"
    # The file loads strict with the architecture inferred from its keys.
    model, info = load_weights(tmp_path / "cache" / file_name)
    assert info["arch"] == name and model.state_dict().keys() == reference.state_dict().keys()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    agree = total = 0
    seen: set[int] = set()
    for size in ((131, 97), (320, 240)):  # (width, height), odd and even
        batch = np.stack([photo("chelsea.png", size), photo("coffee.png", size)])
        (labels,) = session.run(["labels"], {"image": batch})
        with torch.no_grad():
            expected = reference(_normalise(batch))["out"].argmax(1).numpy()
        assert labels.dtype == np.uint8 and labels.shape == expected.shape
        agree += int((labels == expected).sum())
        total += expected.size
        seen |= set(np.unique(expected).tolist())
    assert agree / total >= 0.999, f"agreement {agree / total:.5f}"
    assert len(seen) > 2  # a degenerate model would make agreement meaningless


def test_published_table_names_torchvision_files() -> None:
    from model_export.weights import PUBLISHED, published_url

    assert published_url("lraspp_mobilenet_v3_large").endswith("/lraspp_mobilenet_v3_large-d234d4ea.pth")
    assert PUBLISHED["deeplabv3_mobilenet_v3_large"] == "deeplabv3_mobilenet_v3_large-fc3c493d.pth"
