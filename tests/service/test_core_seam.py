"""The seam between the core (`service.core`), the HTTP layer (`service`) and the offline tools (`model_export`):
what each may import, that offline tools ignore the service's environment, and that the output-kind table is the
one source of the route's choices, its OpenAPI, Accept negotiation, `GET /outputs` and the clients."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from clients.batch import output_suffix
from service import client as sdk
from service.core.errors import DECODE_ERROR_CODES, DecodeError
from service.core.output_kinds import OUTPUT_KINDS, OUTPUTS, describe, negotiate
from service.errors import DECODE_STATUS, ApiError

REPO = Path(__file__).resolve().parents[2]
HTTP_AND_TORCH = ("fastapi", "starlette", "uvicorn", "h11", "httptools", "pydantic_settings", "torch")


def _loaded_after(imports: str) -> list[str]:
    """Top-level module names loaded by a fresh interpreter after running `imports`."""
    code = f"import sys\n{imports}\nprint(__import__('json').dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         check=True)
    return json.loads(out.stdout)


def test_the_core_imports_neither_http_nor_torch() -> None:
    modules = _loaded_after("import service.core.pipeline, service.core.output_kinds, service.core.crf, "
                            "service.core.sessions, service.core.fixed_shapes")
    assert not [m for m in modules if m.split(".")[0] in HTTP_AND_TORCH]
    assert [m for m in modules if m.startswith("service.")] == sorted(
        m for m in modules if m.startswith("service.core"))


def test_the_output_table_needs_no_server_codecs() -> None:
    """The client reads the table: it must load with the client install's dependencies only."""
    modules = _loaded_after("import service.core.output_kinds, service.client")
    heavy = ("cv2", "onnxruntime", "shapely", "simplejpeg", "zlib_ng", "fastapi")
    assert not [m for m in modules if m.split(".")[0] in heavy]


def test_offline_tools_use_the_core_never_the_http_layer() -> None:
    modules = _loaded_after("import model_export.evaluate, model_export.calibration, model_export.protocol, "
                            "model_export.export, model_export.quantize, model_export.msc, model_export.train")
    service_modules = [m for m in modules if m == "service" or m.startswith("service.")]
    assert "service.core.pipeline" in service_modules
    assert [m for m in service_modules if m != "service" and not m.startswith("service.core")] == []
    assert not [m for m in modules if m.split(".")[0] in ("fastapi", "starlette", "pydantic_settings")]


def test_evaluate_ignores_the_service_environment(rule_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`SEGMENT_*` variables configure the server only: they must not change (or break) what evaluate scores."""
    from model_export.evaluate import onnx_predictor
    from tests.service.svc_helpers import png_bytes, scene

    image = scene(120, 90)
    path = rule_model.parent / "scene.png"
    path.write_bytes(png_bytes(image))
    predict, classes = onnx_predictor(rule_model, providers="cpu")
    clean = predict([path])[0]
    for name, value in {"SEGMENT_PRECISION": "int8", "SEGMENT_PROVIDERS": "no-such-provider",
                        "SEGMENT_MAX_PIXELS": "10", "SEGMENT_FIXED_SHAPES": "on"}.items():
        monkeypatch.setenv(name, value)
    predict_again, classes_again = onnx_predictor(rule_model, providers="cpu")
    assert classes_again == classes
    assert (predict_again([path])[0] == clean).all() and clean.shape == (90, 120)


def test_every_decode_error_code_has_an_http_status() -> None:
    assert set(DECODE_STATUS) == set(DECODE_ERROR_CODES)
    for code in DECODE_ERROR_CODES:
        api = ApiError.from_decode(DecodeError(code, "x"))
        assert (api.code, api.message) == (code, "x") and 400 <= api.status < 600
    with pytest.raises(ValueError, match="unknown decode error code"):
        DecodeError("no_such_code", "x")


def test_the_output_table_drives_route_openapi_accept_and_clients(rule_server) -> None:
    with httpx.Client(base_url=rule_server.url, timeout=30) as client:
        spec = client.get("/openapi.json").json()
        listed = client.get("/outputs").json()["outputs"]
    (result_name,) = [p for p in spec["paths"]["/results/{result_id}/{name}"]["get"]["parameters"]
                      if p["name"] == "name"]
    assert result_name["schema"]["enum"] == [f"{k.name}.png" for k in OUTPUT_KINDS.values() if not k.is_json]
    segment = spec["paths"]["/segment"]["post"]
    (output_param,) = [p for p in segment["parameters"] if p["name"] == "output"]
    enum = next(s["enum"] for s in output_param["schema"]["anyOf"] if "enum" in s)
    assert tuple(enum) == OUTPUTS == tuple(OUTPUT_KINDS)
    media = {e.media_type for kind in OUTPUT_KINDS.values() for e in kind.encodings}
    assert set(segment["responses"]["200"]["content"]) == media
    assert listed == describe()
    assert sdk.OUTPUTS == OUTPUTS
    for kind in OUTPUT_KINDS.values():
        for media_type in kind.accept:
            assert negotiate(f"text/html;q=0.9, {media_type}") == kind.name
        for encoding in kind.encodings:
            assert output_suffix(kind.name, encoding.format) == encoding.suffix
    assert negotiate("text/html") == "labels" and negotiate(None) == "labels"
    assert negotiate("application/json;q=0.5, image/png;q=0.8") == "labels"
