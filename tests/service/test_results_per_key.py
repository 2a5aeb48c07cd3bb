"""A stored result is read back only with the API key that made it: its id travels in access logs and Referer
headers, which holders of other keys may see. Another key gets the answer an unknown id gets (404
`result_not_found`), so it does not even learn that the result exists; with no keys, the id alone reads it."""

from __future__ import annotations

import pickle
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.results_cache import ResultsCache, StoredResult
from service.results_shared import SharedResultsCache
from testkit.server import ServerProcess
from tests.service.svc_helpers import png_bytes, running_server, scene

KEY_A, KEY_B = "key-of-alice-0123456789", "key-of-bob-9876543210"
UNKNOWN_ID = "x" * 22  # the shape of a real id (service/results_cache.py `new_result_id`)


def segment(base: str, headers: dict[str, str]) -> str:
    """POST a scene on a fresh connection; the id of its kept result."""
    made = httpx.post(f"{base}/segment", params={"output": "stats"}, content=png_bytes(scene()),
                      headers={"content-type": "image/png", **headers}, timeout=60)
    assert made.status_code == 200, made.text
    return made.headers["X-Result-ID"]


def fetch(base: str, result_id: str, headers: dict[str, str], name: str = "overlay.png") -> httpx.Response:
    """GET a result's file on a fresh connection (with several workers, any of them may answer)."""
    return httpx.get(f"{base}/results/{result_id}/{name}", headers=headers, timeout=60)


def not_found_shape(response: httpx.Response) -> tuple[int, str, str]:
    """What a 404 tells: status, code and message with the id masked (the request id differs every time)."""
    error = response.json()["error"]
    return response.status_code, error["code"], error["message"].replace(response.url.path.split("/")[2], "ID")


@pytest.fixture(scope="module")
def two_keys(rule_model: Path) -> Iterator[str]:
    with running_server(rule_model, api_keys=[KEY_A, KEY_B]) as base:
        yield base


def test_a_result_is_read_only_with_the_key_that_made_it(two_keys: str) -> None:
    rid = segment(two_keys, {"X-API-Key": KEY_A})
    own = fetch(two_keys, rid, {"X-API-Key": KEY_A})
    assert own.status_code == 200 and own.headers["content-type"] == "image/png"
    assert own.content.startswith(b"\x89PNG")
    # The same key as a bearer token is the same owner.
    assert fetch(two_keys, rid, {"Authorization": f"Bearer {KEY_A}"}, "labels.png").status_code == 200

    foreign = fetch(two_keys, rid, {"X-API-Key": KEY_B})
    unknown = fetch(two_keys, UNKNOWN_ID, {"X-API-Key": KEY_B})
    assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "result_not_found"
    assert not_found_shape(foreign) == not_found_shape(unknown)  # nothing tells B the result exists
    assert foreign.headers.keys() == unknown.headers.keys()
    assert fetch(two_keys, rid, {"Authorization": f"Bearer {KEY_B}"}, "labels.png").status_code == 404

    anonymous = fetch(two_keys, rid, {})
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"
    # B's own results are B's: A cannot read them either.
    theirs = segment(two_keys, {"Authorization": f"Bearer {KEY_B}"})
    assert fetch(two_keys, theirs, {"X-API-Key": KEY_B}).status_code == 200
    assert fetch(two_keys, theirs, {"X-API-Key": KEY_A}).status_code == 404


def test_one_key_reads_its_results(rule_model: Path) -> None:
    with running_server(rule_model, api_keys=[KEY_A]) as base:
        rid = segment(base, {"X-API-Key": KEY_A})
        assert fetch(base, rid, {"X-API-Key": KEY_A}).status_code == 200
        assert fetch(base, rid, {}).status_code == 401
        assert fetch(base, rid, {"X-API-Key": KEY_B}).status_code == 401  # not a key of this service


def test_without_keys_the_id_alone_reads_a_result(rule_model: Path) -> None:
    with running_server(rule_model) as base:
        rid = segment(base, {})
        assert fetch(base, rid, {}).status_code == 200
        assert fetch(base, rid, {"X-API-Key": "anything"}).status_code == 200  # no keys: a key is not looked at


def test_across_two_workers_only_the_key_that_made_a_result_reads_it(rule_model: Path) -> None:
    """Results are files every worker reads: the owner travels in the file, so either worker answers alike."""
    with ServerProcess(rule_model, SEGMENT_WORKERS="2", SEGMENT_INTRA_OP_THREADS="1", SEGMENT_WORKER_THREADS="1",
                       SEGMENT_API_KEYS=f"{KEY_A},{KEY_B}") as server:
        server.wait_ready()
        assert len(server.worker_pids) == 2
        answered_by: set[int] = set()
        ids = [segment(server.url, {"X-API-Key": KEY_A}) for _ in range(4)]  # fresh connections: both workers store
        for rid in ids:
            for _ in range(3):  # each on a fresh connection, which the kernel hands to either worker
                assert fetch(server.url, rid, {"X-API-Key": KEY_A}, "labels.png").status_code == 200
                foreign = fetch(server.url, rid, {"X-API-Key": KEY_B}, "labels.png")
                assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "result_not_found"
                assert fetch(server.url, rid, {}, "labels.png").status_code == 401
                ready = httpx.get(f"{server.url}/readyz", timeout=30)
                answered_by.add(ready.json()["pid"])
        assert answered_by == server.worker_pids  # fresh connections did reach both workers


def test_stores_keep_the_owner(tmp_path: Path) -> None:
    """Both stores answer `kept_for` for the owner alone, and hand the owner back with the result."""
    labels, upload = np.zeros((4, 4), np.uint8), b"upload"
    memory = ResultsCache(ttl_s=60, max_bytes=1 << 20)
    shared = SharedResultsCache(tmp_path, ttl_s=60, max_bytes=1 << 20, owner="slot-0")
    reader = SharedResultsCache(tmp_path, ttl_s=60, max_bytes=1 << 20, owner="slot-1")  # another worker
    for store, read in ((memory, memory), (shared, reader)):
        assert store.put("mine", labels, upload, b"A" * 16) and store.put("open", labels, upload)
        assert read.kept_for("mine", b"A" * 16) and not read.kept_for("mine", b"B" * 16)
        assert not read.kept_for("mine", None)
        assert read.kept_for("open", None) and not read.kept_for("open", b"A" * 16)
        stored = read.get("mine")
        assert stored is not None and stored.owner == b"A" * 16 and stored.source == upload


def test_a_file_without_an_owner_reads_as_ownerless(tmp_path: Path) -> None:
    """A file in the layout before results had owners is read as ownerless: no key reads it back."""
    item = StoredResult(np.arange(6, dtype=np.uint8).reshape(2, 3), b"old upload", 0.0)
    buffers: list[pickle.PickleBuffer] = []
    meta = pickle.dumps((item.labels, item.created), protocol=5, buffer_callback=buffers.append)
    parts = [meta, *(bytes(buffer.raw()) for buffer in buffers), item.source]
    (tmp_path / "slot-0").mkdir()
    (tmp_path / "slot-0" / "old").write_bytes(
        struct.pack(f"<I{len(parts)}Q", len(parts), *map(len, parts)) + b"".join(parts))
    cache = SharedResultsCache(tmp_path, ttl_s=1e12, max_bytes=1 << 20, owner="slot-1")
    stored = cache.get("old")
    assert stored is not None and stored.owner is None and stored.source == b"old upload"
    assert stored.labels.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert cache.kept_for("old", None) and not cache.kept_for("old", b"A" * 16)
