"""Small pieces: settings from the environment, the result cache's TTL and byte bound."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from service.results_cache import ResultsCache, new_result_id
from service.settings import Settings, available_cpus


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "SEGMENT_MODEL_PATH": "/m/x.onnx", "SEGMENT_PORT": "9000", "SEGMENT_API_KEYS": "a, b,,c",
        "SEGMENT_CORS_ORIGINS": "https://x.example", "SEGMENT_MAX_PIXELS": "40e6",
        "SEGMENT_MAX_UPLOAD_BYTES": "20MB", "SEGMENT_RESULT_CACHE_BYTES": "256MiB", "SEGMENT_REQUIRE_GPU": "1",
        "SEGMENT_MAX_WAIT_MS": "2.5", "SEGMENT_PRECISION": "fp16", "SEGMENT_LOG_LEVEL": "DEBUG",
    }.items():
        monkeypatch.setenv(key, value)
    s = Settings()
    assert str(s.model_path) == "/m/x.onnx" and s.port == 9000
    assert s.api_keys == ["a", "b", "c"] and s.cors_origins == ["https://x.example"]
    assert s.max_pixels == 40_000_000 and s.max_upload_bytes == 20_000_000
    assert s.result_cache_bytes == 256 * 1024 * 1024
    assert s.require_gpu is True and s.max_wait_ms == 2.5 and s.precision == "fp16" and s.log_level == "debug"


def test_settings_defaults_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert (s.host, s.port, s.providers, s.max_batch_size, s.max_queue) == ("0.0.0.0", 8000, "auto", 8, 64)
    monkeypatch.setenv("SEGMENT_MAX_BATCH_SIZE", "")  # compose's `${SEGMENT_X:-}`: the default
    assert Settings().max_batch_size == 8
    monkeypatch.delenv("SEGMENT_MAX_BATCH_SIZE")
    assert s.api_keys == [] and s.intra_op_threads is None  # sized by the provider at load
    cpus = available_cpus()
    assert s.engine_options().threads_for(on_gpu=False) == cpus >= 1  # the CPUs this process may use
    assert s.engine_options().threads_for(on_gpu=True) == 1  # the model runs on the device
    assert Settings(workers=2).engine_options().threads_for(on_gpu=False) == max(1, cpus // 2)  # shared
    assert Settings(intra_op_threads=3).engine_options().threads_for(on_gpu=True) == 3  # a setting is a setting
    assert s.worker_threads is None and s.codec_threads() == max(2, cpus)
    monkeypatch.setattr("service.settings.available_cpus", lambda: 16)  # a GPU host
    assert Settings().codec_threads() == 16
    assert Settings(workers=2).codec_threads() == 8  # workers share the host's CPUs, not each take all of them
    assert Settings(workers=16).codec_threads() == 2  # never fewer than 2: one slow decode holds up no one
    assert Settings(workers=2, worker_threads=12).codec_threads() == 12
    assert s.model_path.name == "default.onnx" and s.model_path.parent.name == "models"
    monkeypatch.setenv("SEGMENT_MAX_BATCH_SIZE", "0")
    with pytest.raises(ValidationError, match="max_batch_size"):
        Settings()
    monkeypatch.setenv("SEGMENT_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("SEGMENT_PRECISION", "fp8")
    with pytest.raises(ValidationError, match="precision"):
        Settings()


def arrays(n_bytes: int) -> tuple[np.ndarray, bytes]:
    """A label map and the upload bytes it came from, n_bytes in all."""
    return np.zeros(n_bytes // 4, np.uint8), bytes(3 * n_bytes // 4)


def test_cache_ttl() -> None:
    now = [0.0]
    cache = ResultsCache(ttl_s=10, max_bytes=1000, clock=lambda: now[0])
    cache.put("a", *arrays(100))
    now[0] = 5
    cache.put("b", *arrays(100))
    assert cache.get("a") is not None
    now[0] = 10.5
    assert cache.get("a") is None and cache.get("b") is not None
    now[0] = 16
    assert cache.get("b") is None and len(cache) == 0 and cache.nbytes == 0


def test_cache_byte_bound_evicts_oldest() -> None:
    cache = ResultsCache(ttl_s=100, max_bytes=1000)
    for key in "abcd":
        assert cache.put(key, *arrays(300))
    assert cache.get("a") is None and all(cache.get(k) is not None for k in "bcd")
    assert cache.nbytes == 900
    assert not cache.put("huge", *arrays(2000))  # larger than the whole cache: not stored, nothing evicted
    assert len(cache) == 3
    assert not ResultsCache(ttl_s=0, max_bytes=1000).put("x", *arrays(10))  # TTL 0 turns the cache off


def test_result_ids_are_random_and_url_safe() -> None:
    ids = {new_result_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) >= 22 and all(c.isalnum() or c in "-_" for c in i) for i in ids)


@pytest.mark.parametrize(("raw", "expected"), [("20MiB", 20 * 1024**2), ("20MB", 20_000_000), ("1.5GB", 1_500_000_000),
                                               ("2048", 2048), ("64 kib", 65536)])
def test_byte_sizes_use_pydantic_units(monkeypatch: pytest.MonkeyPatch, raw: str, expected: int) -> None:
    monkeypatch.setenv("SEGMENT_MAX_UPLOAD_BYTES", raw)
    monkeypatch.setenv("SEGMENT_RESULT_CACHE_BYTES", raw)
    s = Settings()
    assert s.max_upload_bytes == expected and s.result_cache_bytes == expected


@pytest.mark.parametrize(("key", "raw"), [("SEGMENT_MAX_UPLOAD_BYTES", "lots"), ("SEGMENT_MAX_UPLOAD_BYTES", "0"),
                                          ("SEGMENT_MAX_PIXELS", "4e6.5"), ("SEGMENT_MAX_PIXELS", "1.5")])
def test_bad_sizes_and_counts_name_the_setting(monkeypatch: pytest.MonkeyPatch, key: str, raw: str) -> None:
    monkeypatch.setenv(key, raw)
    with pytest.raises(ValidationError, match=key.removeprefix("SEGMENT_").lower()):
        Settings()


def test_results_dir_must_exist(tmp_path: Path) -> None:
    assert Settings(results_dir=tmp_path).results_dir == tmp_path
    with pytest.raises(ValidationError, match="results_dir"):
        Settings(results_dir=tmp_path / "missing")  # every result would fail to be kept, one warning each
