"""docs/CONTRACT.md's letterbox rule, followed by hand with OpenCV and a bare onnxruntime session, gives exactly the
masks the service answers: the rule is what someone outside the service needs to reproduce them."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from model_export.synthetic import render_scene
from service.local import LocalSegmenter
from service.settings import default_model_path
from testkit import REPO
from testkit.images import decode_labels, encode


def documented_labels(session: ort.InferenceSession, image: np.ndarray) -> np.ndarray:
    """The four steps of CONTRACT.md's "Letterbox" section, written from the text alone."""
    props = session.get_modelmeta().custom_metadata_map
    size, mean = int(props["input_size"]), json.loads(props["mean"])
    h, w = image.shape[:2]
    scale = size / max(h, w)  # 1
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    if (new_h, new_w) == (h, w):  # 2
        content = image
    else:
        interpolation = cv2.INTER_AREA if scale < 0.75 else cv2.INTER_LINEAR
        content = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    canvas = np.empty((size, size, 3), np.uint8)  # 3
    canvas[...] = [round(v) for v in mean]
    canvas[:new_h, :new_w] = content
    labels = session.run(["labels"], {"image": canvas[None]})[0][0]
    return cv2.resize(np.ascontiguousarray(labels[:new_h, :new_w]), (w, h),  # 4
                      interpolation=cv2.INTER_NEAREST_EXACT)


@pytest.fixture(scope="module")
def segmenter() -> LocalSegmenter:
    return LocalSegmenter(default_model_path(), providers="cpu", threads=1)


# Heights x widths: enlarged (scale > 1), shrunk mildly (INTER_LINEAR), shrunk below 3/4 (INTER_AREA), a 1-pixel
# short side, and exactly the input size (copied).
@pytest.mark.parametrize("shape", [(77, 101), (300, 131), (400, 600), (768, 1024), (3, 900), (320, 320)])
def test_the_documented_letterbox_reproduces_the_served_mask_exactly(segmenter: LocalSegmenter,
                                                                     shape: tuple[int, int]) -> None:
    image, _ = render_scene(7, sum(shape))
    image = np.ascontiguousarray(cv2.resize(image, shape[::-1], interpolation=cv2.INTER_LINEAR))
    served = decode_labels(segmenter.segment(encode(image, "PNG"), "labels").content)
    session = ort.InferenceSession(str(default_model_path()), providers=["CPUExecutionProvider"])
    expected = documented_labels(session, image)
    assert served.shape == expected.shape == shape
    assert len(np.unique(served)) > 1 or shape[0] < 8  # a scene with shapes in it, not a blank mask
    assert np.array_equal(served, expected), f"{np.mean(served != expected):.2%} of pixels differ"


def test_the_contract_states_the_rule_the_test_follows() -> None:
    text = (REPO / "docs" / "CONTRACT.md").read_text()
    section = text[text.index("## Letterbox"):]
    for fact in ("cv2.INTER_AREA", "below 0.75", "cv2.INTER_LINEAR", "top left", "round(mean)",
                 "cv2.INTER_NEAREST_EXACT", "max(1, round(H × scale))"):
        assert fact in section, fact
