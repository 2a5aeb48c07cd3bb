"""The shared bad-image corpus through a live server: every case gets its documented answer, never a 500."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.badimages import bad_image_corpus
from tests.service.svc_helpers import LiveServer

CASES = bad_image_corpus()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_case(rule_server: LiveServer, case) -> None:
    with rule_server.client() as client:
        r = client.post("/segment", content=case.data, headers={"Content-Type": case.content_type},
                        params={"output": "labels"})
    assert r.status_code == case.expected_status, (case.name, r.text[:300])
    assert r.headers["x-request-id"]
    if case.ok:
        assert Image.open(io.BytesIO(r.content)).size == case.expected_size
    else:
        assert r.json()["error"]["code"] == case.expected_code


def test_server_still_healthy_after_the_corpus(rule_server: LiveServer) -> None:
    with rule_server.client() as client:
        assert client.get("/readyz").status_code == 200
