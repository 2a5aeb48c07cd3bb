"""Settings at their edges, on real `segment-serve` processes: no warning about settings nobody gave, a small pixel
limit that still lets warm-up pass, readable decode-budget sizes, and uploads larger than the upload buffer."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from service.admission import UploadBudget
from service.core.decode_budget import DecodeBudget
from service.core.errors import DecodeError
from service.settings import Settings, default_model_path
from service.settings_environment import OTHER_VARIABLES, unknown_variables
from testkit import REPO
from testkit.server import ServerProcess
from tests.service.svc_helpers import png_bytes, scene

IGNORED = "need fixed shapes"
PNG = {"Content-Type": "image/png"}


def noise_png(width: int, height: int) -> bytes:
    """A PNG that barely compresses: its size in bytes is about 3 x its pixels."""
    return png_bytes(np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8))


def chunks(data: bytes, size: int = 1000) -> Iterator[bytes]:
    """`data` as an iterator, which httpx sends chunked (no Content-Length)."""
    for start in range(0, len(data), size):
        yield data[start:start + size]


def test_defaults_count_as_set_by_no_one() -> None:
    settings = Settings()
    assert settings.model_fields_set == set()  # the resolved default buckets included
    assert settings.batch_buckets == [1, 2, 4, 8]
    given = Settings(batch_buckets="2", max_batch_size=4)
    assert given.model_fields_set == {"batch_buckets", "max_batch_size"} and given.batch_buckets == [2, 4]
    with pytest.raises(ValidationError, match="batch_buckets"):
        Settings(batch_buckets="16")  # beyond max_batch_size (8): reported on the setting itself


def test_a_default_cpu_start_warns_of_no_setting_ignored(rule_model: Path) -> None:
    with ServerProcess(rule_model) as server:
        server.wait_ready()
    assert IGNORED not in server.log, server.log


def test_buckets_given_on_cpu_are_reported_ignored(rule_model: Path) -> None:
    with ServerProcess(rule_model, SEGMENT_BATCH_BUCKETS="1,4") as server:
        server.wait_ready()
    assert f"SEGMENT_BATCH_BUCKETS {IGNORED}" in server.log, server.log
    assert "SEGMENT_FILL_WHILE_BUSY" not in server.log  # left at its default: not named


def test_a_misspelt_setting_is_named_at_startup_with_the_setting_meant(rule_model: Path) -> None:
    """An unknown SEGMENT_* name would otherwise leave its setting at the default without a word."""
    with ServerProcess(rule_model, SEGMENT_MAX_BATCHSIZE="2", SEGMENT_MAX_QUEUE="9") as server:
        server.wait_ready()
        queue = httpx.get(f"{server.url}/readyz", timeout=10).json()["max_queue"]
    assert queue == 9  # a real setting, read and not warned of
    assert ("environment variable SEGMENT_MAX_BATCHSIZE is not a setting and is ignored; did you mean "
            "SEGMENT_MAX_BATCH_SIZE?") in server.log, server.log
    assert server.log.count("is not a setting") == 1, server.log  # once, and only for that name


def test_a_worker_slot_set_by_hand_is_warned_of(rule_model: Path) -> None:
    """The supervisor sets SEGMENT_WORKER_SLOT for its workers; on a server started by hand it would pick another
    CUDA device and metric label without a word."""
    with ServerProcess(rule_model, SEGMENT_WORKER_SLOT="3") as server:
        server.wait_ready()
    assert "SEGMENT_WORKER_SLOT=3 is set" in server.log and "device_id" in server.log, server.log
    with ServerProcess(rule_model) as server:
        server.wait_ready()
    assert "SEGMENT_WORKER_SLOT" not in server.log, server.log


def test_the_variables_known_to_be_no_settings_are_read_by_the_project() -> None:
    """Each name exempt from the warning is read somewhere: a name no longer used would hide a typo."""
    sources = [*REPO.glob("service/**/*.py"), *REPO.glob("model_export/**/*.py"), *REPO.glob("clients/*.py"),
               REPO / "docker-compose.yml"]
    text = "\n".join(path.read_text() for path in sources)
    for name in OTHER_VARIABLES - {"SEGMENT_WORKER_SLOTS_DIR"}:  # set and read by the supervisor's code
        assert f'"{name}"' in text or f"${{{name}" in text, name
    assert '"SEGMENT_WORKER_SLOTS_DIR"' in (REPO / "service" / "worker_slots.py").read_text()
    assert unknown_variables({"segment_max_queue": "1", "SEGMENT_GPUS": "all", "OTHER": "x"}) == []
    assert unknown_variables({"SEGMENT_FOO": "1"}) == ["environment variable SEGMENT_FOO is not a setting and is "
                                                      "ignored"]  # nothing close: no guess


def test_a_small_pixel_limit_still_warms_up_and_bounds_uploads(rule_model: Path) -> None:
    """Warm-up's own 64x48 image (3072 pixels) is not an upload: a limit of 3000 refuses uploads, not warm-up
    (which would have been taken for a failing device, 503 `inference_unavailable`)."""
    with ServerProcess(rule_model, SEGMENT_MAX_PIXELS="3000") as server:
        server.wait_ready(timeout=60)
        big = httpx.post(f"{server.url}/segment", content=png_bytes(scene(80, 60)), headers=PNG, timeout=30)
        assert big.status_code == 413 and big.json()["error"]["code"] == "image_too_large", big.text
        assert "limit of 3000" in big.json()["error"]["message"]
        tiny = httpx.post(f"{server.url}/segment", content=png_bytes(scene(50, 40)), headers=PNG,
                          params={"output": "stats"}, timeout=30)
        assert tiny.status_code == 200, tiny.text
        assert httpx.get(f"{server.url}/readyz", timeout=10).json()["ready"] is True


@pytest.mark.parametrize(("capacity", "needed", "says"), [
    (500_000, 1_760_000, "needs ~1.7 MiB, more than the decode memory budget of 488.3 KiB"),
    (900, 3000, "needs ~2.9 KiB, more than the decode memory budget of 900 bytes"),
    (2 << 30, 5 << 30, "needs ~5.0 GiB, more than the decode memory budget of 2.0 GiB"),
])
def test_decode_budget_sizes_read_below_one_mib(capacity: int, needed: int, says: str) -> None:
    with pytest.raises(DecodeError) as refused, DecodeBudget(capacity).reserve(needed):
        pass
    assert refused.value.code == "image_too_large" and says in str(refused.value)


def test_a_decode_budget_too_small_for_any_image_is_a_settings_error(rule_model: Path) -> None:
    with pytest.raises(ValidationError, match="decode_memory_bytes"):
        Settings(decode_memory_bytes="8KB")
    run = subprocess.run([sys.executable, "-m", "service.main"], cwd=REPO, capture_output=True, text=True,
                         timeout=60, env={"SEGMENT_MODEL_PATH": str(rule_model), "SEGMENT_DECODE_MEMORY_BYTES": "8KB",
                                          "PATH": "/usr/bin:/bin"})
    assert run.returncode == 3, run.stderr
    assert "cannot start: SEGMENT_DECODE_MEMORY_BYTES" in run.stderr


def test_a_request_memory_budget_too_small_for_one_model_input_stops_the_start() -> None:
    """Every request keeps its model input from its decode to its answer: a budget that cannot hold one would
    answer every request 413, so the server does not start (the model's input size is known once it is loaded:
    the embedded model's 320x320, 300 KiB, against the smallest budget allowed)."""
    run = subprocess.run([sys.executable, "-m", "service.main"], cwd=REPO, capture_output=True, text=True,
                         timeout=60, env={"SEGMENT_MODEL_PATH": str(default_model_path()),
                                          "SEGMENT_REQUEST_MEMORY_BYTES": "64KiB", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 3, run.stderr
    assert "cannot start: SEGMENT_REQUEST_MEMORY_BYTES (65536 bytes) cannot hold one request's model input" \
        in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_upload_budget_reserves_at_most_itself() -> None:
    budget = UploadBudget(4000)
    assert budget.reserve(20 << 20) == 4000  # never more than itself (the body limit answers 413 first)
    budget.release(4000)
    assert budget.reserved == 0


def test_uploads_larger_than_the_upload_buffer_are_too_large_not_overloaded(rule_model: Path) -> None:
    """SEGMENT_UPLOAD_BUFFER_BYTES below SEGMENT_MAX_UPLOAD_BYTES: an upload larger than the whole buffer can
    never be reserved, so it is a 413 (declared or grown so far), not a 503 to retry for ever; a chunked upload
    that fits is served. The decode budget's 413 names its size readably too."""
    with ServerProcess(rule_model, SEGMENT_UPLOAD_BUFFER_BYTES="4000",
                       SEGMENT_DECODE_MEMORY_BYTES="500KB") as server:
        server.wait_ready(timeout=60)
        url = f"{server.url}/segment"
        big = noise_png(40, 40)
        assert len(big) > 4000
        for body in (big, chunks(big)):
            r = httpx.post(url, content=body, headers=PNG, timeout=30)
            assert r.status_code == 413, r.text
            error = r.json()["error"]
            assert error["code"] == "payload_too_large" and "4000 bytes" in error["message"], error
            assert "retry-after" not in r.headers
        small = png_bytes(scene(60, 40))
        assert len(small) < 4000
        for body in (small, chunks(small, 100)):
            r = httpx.post(url, content=body, headers=PNG, params={"output": "stats"}, timeout=30)
            assert r.status_code == 200, r.text
        # 500x500 pixels of one colour: a small PNG whose decode needs ~2.6 MiB, beyond a 500 KB budget.
        flat = png_bytes(np.full((500, 500, 3), 90, np.uint8))
        r = httpx.post(url, content=flat, headers=PNG, timeout=30)
        assert r.status_code == 413 and r.json()["error"]["code"] == "image_too_large", r.text
        assert "budget of 488.3 KiB" in r.json()["error"]["message"]
