"""`POST /segment?crf=true`: DeepLab-v2's dense CRF refines the mask, exactly as `service.core.crf` computes it on the
letterboxed image; a server without the crf extra answers 501 `crf_unavailable` and keeps serving."""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
from PIL import Image

import service.routes.segment as segment_route
from service.core import crf
from service.core.engine import load_engine
from service.core.options import EngineOptions
from service.core.outputs.labelmap import LabelMap
from service.core.pipeline import Pipeline
from service.settings import default_model_path
from testkit.photos import photo


def _jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def test_crf_refines_the_mask_as_the_library_computes_it(serve) -> None:
    model = default_model_path()
    server = serve(model)
    data = _jpeg(photo("coffee.png", (400, 300)))
    with server.client() as client:
        plain = client.post("/segment", content=data, params={"output": "labels"})
        refined = client.post("/segment", content=data, params={"output": "labels", "crf": "true"})
    assert plain.status_code == refined.status_code == 200, refined.text
    got = np.asarray(Image.open(io.BytesIO(refined.content)))
    # The same computation by hand: the service's decode, the model, then the CRF on the letterboxed image.
    engine = load_engine(EngineOptions(model_path=model, providers="cpu"))
    prepared = Pipeline(engine).preprocess(data)
    tensor, info = prepared.tensor, prepared.info
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    labels = session.run(None, {"image": tensor[None]})[0][0]
    probs = crf.probs_from_labels(labels, engine.metadata.num_classes)
    expected = LabelMap.from_model(crf.crf_on_canvas(tensor, probs, info, crf.CrfParams()), info).full
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(got, np.asarray(Image.open(io.BytesIO(plain.content))))  # the CRF changed edges


def test_without_the_crf_extra_the_answer_is_501(serve, rule_model, monkeypatch) -> None:
    monkeypatch.setattr(segment_route, "crf_available", lambda: False)
    server = serve(rule_model)
    with server.client() as client:
        r = client.post("/segment", content=_jpeg(photo("coffee.png", (64, 48))), params={"crf": "true"})
        assert r.status_code == 501 and r.json()["error"]["code"] == "crf_unavailable"
        assert client.post("/segment", content=_jpeg(photo("coffee.png", (64, 48)))).status_code == 200
