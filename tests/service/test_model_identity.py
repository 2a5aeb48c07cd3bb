"""Every answer says which model file made its labels (X-Model-SHA256, and `model_sha256` in JSON bodies), and a
stored result is never re-rendered by another model: after a swap, or from a server on another model sharing the
results directory, `GET /results` answers 404 `result_not_found` rather than the labels named and painted with the
wrong classes and palette. Real servers (in-process uvicorn, and `segment-serve` processes sharing
SEGMENT_RESULTS_DIR), real onnxruntime sessions on the rule model, real PNG uploads."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest

from service.results_cache import StoredResult
from service.results_files import MAGIC, OWNER_BYTES, deserialised, serialised
from service.results_shared import SharedResultsCache
from service.settings import Settings
from testkit.server import ServerProcess
from tests.service.svc_helpers import LiveServer, make_rule_model, png_bytes, scene

UPLOAD = png_bytes(scene(96, 64))
IMAGE_FILES = ("labels.png", "color.png", "overlay.png")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def repainted(src: Path, dst: Path) -> Path:
    """A copy of a contract model with another palette and class names in its metadata: another model file, whose
    labels mean other things."""
    model = onnx.load(str(src))
    for prop in model.metadata_props:
        if prop.key == "palette":
            prop.value = json.dumps([[255 - v for v in colour] for colour in json.loads(prop.value)])
        elif prop.key == "classes":
            prop.value = json.dumps([f"other-{name}" for name in json.loads(prop.value)])
    onnx.save(model, str(dst))
    return dst


def older_layout(labels: np.ndarray, source: bytes, created: float) -> bytes:
    """A result file as written before results recorded their model: the pickle holds (labels, created) alone."""
    buffers: list[pickle.PickleBuffer] = []
    meta = pickle.dumps((labels, created), protocol=5, buffer_callback=buffers.append)
    parts = [meta, *(bytes(buffer.raw()) for buffer in buffers), source]
    header = struct.pack(f"<I{len(parts)}Q", len(parts), *(len(part) for part in parts))
    return struct.pack(f"<4sB{OWNER_BYTES}s", MAGIC, 0, b"") + header + b"".join(parts)


@pytest.fixture(scope="module")
def rule(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    """An in-process server on the rule model (in-memory results), and the sha256 of its model file."""
    model = make_rule_model(tmp_path_factory.mktemp("identity") / "rule.onnx")
    server = LiveServer(Settings(model_path=model, host="127.0.0.1", port=0, max_wait_ms=2)).start()
    yield server, sha256_of(model)
    server.stop()


def test_every_segment_answer_names_its_model_file(rule: tuple[LiveServer, str]) -> None:
    server, sha = rule
    outputs = httpx.get(f"{server.url}/outputs", timeout=10).json()["outputs"]
    assert len(outputs) >= 5
    with server.client() as client:
        for kind in outputs:
            for encoding in kind["encodings"]:
                params = {"output": kind["name"], "format": encoding["format"]}
                answer = client.post("/segment", params=params, content=UPLOAD,
                                     headers={"Content-Type": "application/octet-stream"})
                assert answer.status_code == 200, answer.text
                assert answer.headers["X-Model-SHA256"] == sha, params
                if answer.headers["content-type"].split(";")[0].endswith("json"):
                    body = answer.json()
                    assert body["model_sha256"] == sha and body["model"] == "rule", params


def test_results_answers_name_the_model_that_made_them(rule: tuple[LiveServer, str]) -> None:
    server, sha = rule
    with server.client() as client:
        answer = client.post("/segment", params={"output": "labels"}, content=UPLOAD)
        result_id = answer.headers["X-Result-ID"]
        for name in IMAGE_FILES:
            again = client.get(f"/results/{result_id}/{name}")
            assert again.status_code == 200, again.text
            assert again.headers["X-Model-SHA256"] == sha, name


def test_a_result_another_model_made_is_not_rendered_by_this_one(rule: tuple[LiveServer, str]) -> None:
    """The in-memory store after a swap in place: a result recorded with another file's hash is a 404."""
    server, sha = rule
    other = "ab" * 32
    labels = np.ones((64, 96), np.uint8)
    assert server.state.cache.put("from-before-swap", labels, UPLOAD, None, other)
    assert server.state.cache.put("unrecorded", labels, UPLOAD)  # no model recorded: rendered as before
    with server.client() as client:
        refused = client.get("/results/from-before-swap/color.png")
        assert refused.status_code == 404
        error = refused.json()["error"]
        assert error["code"] == "result_not_found"
        assert "another model" in error["message"] and other[:12] in error["message"] and sha[:12] in error["message"]
        assert "X-Model-SHA256" not in refused.headers
        kept = client.get("/results/unrecorded/labels.png")
        assert kept.status_code == 200 and "X-Model-SHA256" not in kept.headers


def test_servers_on_two_models_sharing_results_refuse_each_others(tmp_path: Path) -> None:
    model_a = make_rule_model(tmp_path / "a.onnx")
    model_b = repainted(model_a, tmp_path / "b.onnx")
    sha_a, sha_b = sha256_of(model_a), sha256_of(model_b)
    assert sha_a != sha_b
    results = tmp_path / "results"
    results.mkdir(mode=0o700)
    # A result file of the older layout, left by a server before results recorded their model.
    legacy = results / "legacy"
    legacy.mkdir()
    (legacy / "older-file").write_bytes(older_layout(np.full((64, 96), 2, np.uint8), UPLOAD, time.time()))
    a = ServerProcess(model_a, SEGMENT_RESULTS_DIR=str(results))
    b = ServerProcess(model_b, SEGMENT_RESULTS_DIR=str(results))
    try:
        a.wait_ready()
        b.wait_ready()
        made = httpx.post(f"{a.url}/segment", params={"output": "stats"}, content=UPLOAD, timeout=60)
        assert made.status_code == 200, made.text
        assert made.headers["X-Model-SHA256"] == sha_a and made.json()["model_sha256"] == sha_a
        result_id = made.headers["X-Result-ID"]
        for name in IMAGE_FILES:
            own = httpx.get(f"{a.url}/results/{result_id}/{name}", timeout=60)
            assert own.status_code == 200, own.text
            assert own.headers["X-Model-SHA256"] == sha_a
            other = httpx.get(f"{b.url}/results/{result_id}/{name}", timeout=60)
            assert other.status_code == 404, (name, other.status_code)
            error = other.json()["error"]
            assert error["code"] == "result_not_found"
            assert "another model" in error["message"]
            assert sha_a[:12] in error["message"] and sha_b[:12] in error["message"]
        older = httpx.get(f"{b.url}/results/older-file/color.png", timeout=60)  # no model recorded: as before
        assert older.status_code == 200, older.text
        assert "X-Model-SHA256" not in older.headers
    finally:
        a.terminate()
        b.terminate()


def test_a_shared_file_keeps_its_model_and_one_of_the_older_layout_is_still_read(tmp_path: Path) -> None:
    labels, source = np.arange(12, dtype=np.uint8).reshape(3, 4), b"upload bytes"
    sha = "cd" * 32
    item = StoredResult(labels, source, 5.0, b"k" * 16, sha)
    again = deserialised(b"".join(bytes(part) for part in serialised(item)))
    assert again.model_sha256 == sha and again.owner == b"k" * 16 and again.created == 5.0
    np.testing.assert_array_equal(again.labels, labels)
    older = deserialised(older_layout(labels, source, 7.0))
    assert older.model_sha256 is None and older.source == source and older.created == 7.0
    np.testing.assert_array_equal(older.labels, labels)
    # Through the store: what `put` records comes back from any worker's `get`; an older file reads as unrecorded.
    cache = SharedResultsCache(tmp_path, ttl_s=60, max_bytes=1 << 20, owner="slot-0")
    assert cache.put("new", labels, source, None, sha)
    assert cache.get("new").model_sha256 == sha
    (tmp_path / "slot-1").mkdir()
    (tmp_path / "slot-1" / "old").write_bytes(older_layout(labels, source, time.time()))
    stored = cache.get("old")
    assert stored is not None and stored.model_sha256 is None and stored.source == source
    np.testing.assert_array_equal(stored.labels, labels)


def test_the_document_declares_the_model_header_and_field(rule: tuple[LiveServer, str]) -> None:
    server, _ = rule
    document = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    segment = document["paths"]["/segment"]["post"]["responses"]["200"]["headers"]
    assert segment["X-Model-SHA256"]["required"] is True
    result = document["paths"]["/results/{result_id}/{name}"]["get"]["responses"]
    assert "X-Model-SHA256" in result["200"]["headers"] and "another model" in result["404"]["description"]
    schemas = document["components"]["schemas"]
    for name in ("Stats", "FeatureCollection"):
        assert "model_sha256" in schemas[name]["required"], name


@pytest.mark.parametrize("output", ["labels", "stats"])
def test_the_in_process_backend_names_its_model_as_a_server_does(tmp_path: Path, output: str) -> None:
    """`segment --local` answers carry the model in the header field too, binary and JSON alike."""
    from service.local import LocalSegmenter

    model = make_rule_model(tmp_path / "rule.onnx")
    answer = LocalSegmenter(model, providers="cpu", threads=1).segment(png_bytes(scene()), output)
    assert answer.model_header == answer.model_sha256 == hashlib.sha256(model.read_bytes()).hexdigest()
