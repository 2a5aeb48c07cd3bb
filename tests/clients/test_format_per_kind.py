"""`format` names one of the output kind's own encodings (as `GET /outputs` lists them): the service answers any
other with 422, so the batch CLI refuses it before the first file, and the in-process backend raises as the
service refuses, rather than ignoring it in one mode and failing every file in the other."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.batch import main
from service.client import SegmentApiError, SegmentClient
from service.local import LocalSegmenter
from tests.clients.conftest import write_photos
from tests.service.svc_helpers import make_rule_model, png_bytes, running_server, scene


@pytest.mark.parametrize("mode", ["local", "server"])
def test_the_batch_cli_refuses_a_format_the_kind_lacks_before_any_file(mode: str, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    model = make_rule_model(tmp_path / "rule.onnx")
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_photos(inputs)
    # The server is never reached: the refusal comes from the arguments alone.
    target = ["--local", str(model)] if mode == "local" else ["--server", "http://127.0.0.1:9"]
    with pytest.raises(SystemExit) as stopped:  # argparse's refusal: exit status 2
        main([str(inputs), "--out", str(out), "--output", "color", "--format", "jpeg", *target])
    assert stopped.value.code == 2
    assert "--format: output 'color' has no format 'jpeg' (formats: png)" in capsys.readouterr().err
    assert not out.exists()


def test_the_local_backend_and_the_service_refuse_it_alike(tmp_path: Path) -> None:
    model = make_rule_model(tmp_path / "rule.onnx")
    upload = png_bytes(scene())
    with pytest.raises(ValueError, match="has no format 'jpeg'"):
        LocalSegmenter(model).segment(upload, "labels", format="jpeg")
    assert LocalSegmenter(model).segment(upload, "polygons", format="geojson").media_type == "application/geo+json"
    with running_server(model) as url, SegmentClient(url) as client:
        with pytest.raises(SegmentApiError) as refused:
            client.segment(upload, "labels", format="jpeg")
        assert refused.value.status == 422 and refused.value.code == "invalid_request"
        assert client.segment(upload, "polygons", format="geojson").media_type == "application/geo+json"
