"""An answer names a result id only when `/results` can answer it (real uvicorn, the rule model): a result too
large for the cache, or any result with the cache off, used to carry an id whose every fetch was a 404."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

from tests.service.svc_helpers import png_bytes, running_server, scene


def _segment(url: str, data: bytes, output: str) -> httpx.Response:
    response = httpx.post(f"{url}/segment", params={"output": output}, content=data,
                          headers={"Content-Type": "image/png"}, timeout=30)
    assert response.status_code == 200, response.text
    return response


def test_a_kept_result_has_an_id_and_one_too_large_for_the_cache_has_none(rule_model: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (100, 120, 3), np.uint8)  # PNG cannot compress it
    small, large = png_bytes(scene(24, 16)), png_bytes(noise)
    assert len(large) > 20_000  # the upload alone is over the bound below; the small one and its map are well under
    with running_server(rule_model, result_cache_bytes=20_000) as url:
        kept = _segment(url, small, "labels")
        result_id = kept.headers["X-Result-ID"]
        again = httpx.get(f"{url}/results/{result_id}/labels.png", timeout=30)
        assert again.status_code == 200 and again.content == kept.content
        stats = _segment(url, small, "stats").json()
        assert isinstance(stats["id"], str) and httpx.get(f"{url}/results/{stats['id']}/labels.png").status_code == 200

        for output in ("labels", "color", "overlay"):
            answer = _segment(url, large, output)
            assert "X-Result-ID" not in answer.headers, output
            assert answer.headers["X-Batch-Size"] == "1"  # the other headers are still there
        for output in ("stats", "polygons"):
            body = _segment(url, large, output).json()
            assert body["id"] is None and body["model"], output
        # The large result was not kept, and did not push the small one out.
        assert httpx.get(f"{url}/results/{result_id}/labels.png", timeout=30).status_code == 200


def test_with_the_cache_off_no_answer_has_an_id(rule_model: Path) -> None:
    data = png_bytes(scene(40, 30))
    with running_server(rule_model, result_ttl_s=0) as url:
        labels = _segment(url, data, "labels")
        assert "X-Result-ID" not in labels.headers and labels.content.startswith(b"\x89PNG")
        assert _segment(url, data, "stats").json()["id"] is None
