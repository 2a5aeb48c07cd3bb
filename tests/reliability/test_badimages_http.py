"""Every file of the bad-image corpus (tests/badimages.py) over HTTP against a live server process: its expected
status and error code, decoded sizes for the valid ones, bounded memory, and correct answers afterwards."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from testkit.images import decode_labels
from testkit.server import ServerProcess
from tests.badimages import Case, bad_image_corpus
from tests.reliability.rule_helpers import rule_labels
from tests.service.svc_helpers import png_bytes, scene

CORPUS = bad_image_corpus()


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_corpus_case_over_http(rule_proc: ServerProcess, case: Case) -> None:
    r = httpx.post(f"{rule_proc.url}/segment", content=case.data, params={"output": "labels"},
                   headers={"Content-Type": case.content_type}, timeout=60)
    assert r.status_code == case.expected_status, (case.name, r.text[:300])
    assert r.headers["x-request-id"]
    if case.ok:
        width, height = case.expected_size
        assert decode_labels(r.content).shape == (height, width)
    else:
        error = r.json()["error"]
        assert error["code"] == case.expected_code, (case.name, error)
        assert error["message"] and error["request_id"] == r.headers["x-request-id"]


def test_server_is_sound_after_the_corpus(rule_proc: ServerProcess) -> None:
    """Runs after the corpus (same module server): exact answers, ready, and no bomb inflated its memory."""
    image = scene(96, 72)  # long side = the rule model's 96: letterboxing is exact
    r = httpx.post(f"{rule_proc.url}/segment", content=png_bytes(image), params={"output": "labels"},
                   headers={"Content-Type": "image/png"}, timeout=60)
    assert r.status_code == 200
    np.testing.assert_array_equal(decode_labels(r.content), rule_labels(image))
    assert httpx.get(f"{rule_proc.url}/readyz").status_code == 200
    # Decompression bombs are refused from their headers: peak RSS stays far below what decoding one would take
    # (the corpus's bombs would need gigabytes).
    assert rule_proc.memory_kib()["VmHWM"] < 1024 * 1024, rule_proc.memory_kib()
