"""Key-layout parity with torchvision, end to end through `segment-export pretrained`.

torchvision's own deeplabv3_resnet50 (random init, aux head) is saved the way the published file is, served
by a real HTTP server under the torchvision '<name>-<sha256 prefix>.pth' convention, downloaded, converted and
exported by the CLI; the ONNX labels must equal torchvision's eager `out` argmax on real photographs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torchvision.models.segmentation import deeplabv3_resnet50

from model_export.cli import main as cli_main
from model_export.export import read_metadata
from model_export.torch_io import sha256_file
from model_export.weights import load_weights
from service.core.contract import VOC_CLASSES
from testkit.photos import photo
from tests.weights.http_server import serve

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def torchvision_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=True).eval()


@pytest.fixture(scope="module")
def exported(torchvision_model, tmp_path_factory) -> Iterator[tuple[Path, str, str, Path]]:
    """Serve the saved state_dict, run `segment-export pretrained --url ...`; (onnx, url, sha256, cached)."""
    tmp_path = tmp_path_factory.mktemp("tv")
    root = tmp_path / "www"
    root.mkdir()
    tmp = root / "tmp.pth"
    torch.save(torchvision_model.state_dict(), tmp)
    digest = sha256_file(tmp)
    name = f"deeplabv3_resnet50_coco-{digest[:8]}.pth"
    tmp.rename(root / name)
    out = tmp_path / "tv.onnx"
    with serve(root) as base:
        code = cli_main(["pretrained", "deeplabv3_resnet50", "--url", base + name,
                         "--cache-dir", str(tmp_path / "cache"), "-o", str(out)])
    assert code == 0
    (root / name).unlink()  # the cached copy is what the tests use from here on
    yield out, base + name, digest, tmp_path / "cache" / name


def test_published_layout_loads_strict_with_and_without_aux(torchvision_model, exported) -> None:
    _, _, digest, cached = exported
    reference = torchvision_model.state_dict()
    model, info = load_weights(cached)  # arch inferred from the layer3 depth
    assert info["arch"] == "deeplabv3_resnet50" and info["sha256"] == digest
    ours = model.state_dict()
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in reference)
    lean, _ = load_weights(cached, keep_aux=False)
    assert lean.aux_classifier is None


def test_onnx_labels_match_torchvision_eager_on_photos(torchvision_model, exported) -> None:
    out, url, digest, _ = exported
    meta = read_metadata(out)
    assert meta.source == url and meta.source_sha256 == digest
    assert meta.classes == list(VOC_CLASSES) and meta.arch == "deeplabv3_resnet50"
    assert meta.channel_order == "RGB" and meta.input_size == 520
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    agree = total = 0
    for size in ((129, 97), (160, 120)):
        batch = np.stack([photo("chelsea.png", size), photo("coffee.png", size)])
        (labels,) = session.run(["labels"], {"image": batch})
        # torchvision's own preprocessing (ToTensor + Normalize) and its own upsampled `out`.
        x = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
        with torch.no_grad():
            expected = torchvision_model(x)["out"].argmax(1).numpy()
        assert labels.dtype == np.uint8 and labels.shape == expected.shape
        agree += int((labels == expected).sum())
        total += expected.size
    assert agree / total >= 0.999, f"agreement {agree / total:.5f}"
    # A degenerate model (one class everywhere) would make agreement meaningless.
    assert len(np.unique(expected)) > 1
