"""The metric files of workers that are gone: folded into the supervisor's archive, so that scrapes read a bounded
number of files, and no total drops or is counted twice."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

from service.metrics_files import fold_dead_metrics, metrics_files_lock
from testkit.metrics import metric_sum, samples
from testkit.server import ServerProcess
from tests.service.svc_helpers import png_bytes, scene
from tests.service.worker_checks import wait_for
from tests.service.worker_helpers import WORKERS, ready_pids, replacements, segment, worker_environ


def answered(server: ServerProcess) -> float:
    """The /segment requests the workers have counted as answered 200."""
    return samples(server.metrics(), "segment_requests_total").get((("route", "/segment"), ("status", "200")), 0)


def file_ids(directory: Path) -> list[str]:
    """The process ids in the names of the multiprocess files (`counter_123.db` → '123'), one per file."""
    return [name[:-3].rsplit("_", 1)[1] for name in os.listdir(directory) if name.endswith(".db")]


def test_the_metric_files_of_dead_workers_are_folded_not_kept(rule_model: Path) -> None:
    body = png_bytes(scene(120, 80))
    with ServerProcess(rule_model, SEGMENT_WORKERS=str(WORKERS), SEGMENT_INTRA_OP_THREADS="1",
                       SEGMENT_WORKER_THREADS="2") as server:
        pids = ready_pids(server)
        directory = Path(worker_environ(min(pids))["PROMETHEUS_MULTIPROC_DIR"])
        sent = 0
        sizes = []
        # One worker, the other, then both at once.
        for victims in ({min(pids)}, {max(pids)}, None):
            for _ in range(4):
                assert segment(server.url, body).status_code == 200
                sent += 1
            # A worker counts a request once its answer is written, a moment after the client has it: a SIGKILL in
            # that moment loses the count with the process, which is not what this test is about.
            wait_for(lambda sent=sent: answered(server) == sent, f"{sent} requests counted", server)
            victims = victims or set(pids)
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            pids = replacements(server, victims)
            for pid in victims:
                assert list(directory.glob(f"*_{pid}.db")) == []
            ids = file_ids(directory)
            assert set(ids) <= {str(pid) for pid in pids} | {"archive"}, ids
            sizes.append(len(ids))
            text = server.metrics()
            # Exactly what was sent: the dead workers' counts neither lost nor counted twice.
            assert samples(text, "segment_requests_total")[(("route", "/segment"), ("status", "200"))] == sent
            assert metric_sum(text, "segment_request_duration_seconds_count", route="/segment") == sent
            assert samples(text, "segment_batch_size_count")[()] == sent
            assert list(samples(text, "segment_model_info").values()) == [1.0]
            assert samples(text, "segment_inflight_requests")[()] == 0
        assert sizes[0] == sizes[1] == sizes[2]  # bounded: as many files after three deaths as after one
        assert server.terminate() == 0


@pytest.fixture
def metrics_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    yield tmp_path
    values.close_all_multiprocess_files()


def write_worker_files(pid: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The files prometheus-client itself writes for a process `pid`: a counter, a histogram and two gauges."""
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(lambda: pid))
    registry = CollectorRegistry()
    Counter("jobs", "Jobs", ["kind"], registry=registry).labels(kind="a").inc(pid % 7 + 1)
    Histogram("job_seconds", "Job time", buckets=(0.1, 1.0), registry=registry).observe(pid % 3 * 0.5)
    Gauge("queued", "Queued", multiprocess_mode="livesum", registry=registry).set(5)
    Gauge("info", "Info", ["model"], multiprocess_mode="max", registry=registry).labels(model=f"m{pid}").set(1)


def scrape(directory: Path) -> bytes:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    with metrics_files_lock(directory):
        return generate_latest(registry)


def test_folding_keeps_every_total_while_scrapes_read_concurrently(metrics_dir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pids = list(range(1000, 1040))
    for pid in pids:
        write_worker_files(pid, monkeypatch)
    before = scrape(metrics_dir).decode()
    jobs = metric_sum(before, "jobs_total")
    observed = metric_sum(before, "job_seconds_count")
    assert jobs == sum(pid % 7 + 1 for pid in pids) and observed == len(pids)

    seen: list[tuple[float, float]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def scrape_all_along() -> None:
        while not done.is_set():
            try:
                text = scrape(metrics_dir).decode()
            except Exception as exc:  # reported below
                errors.append(exc)
                return
            seen.append((metric_sum(text, "jobs_total"), metric_sum(text, "job_seconds_count")))

    reader = threading.Thread(target=scrape_all_along)
    reader.start()
    try:
        for pid in pids:
            fold_dead_metrics(metrics_dir, pid)
    finally:
        done.set()
        reader.join(30)
    assert errors == []
    assert len(seen) > 5 and set(seen) == {(jobs, observed)}  # no scrape saw a total drop or doubled
    assert sorted(os.listdir(metrics_dir)) == ["counter_archive.db", "fold.lock", "histogram_archive.db"]
    after = scrape(metrics_dir).decode()
    for name in ("jobs_total", "job_seconds_bucket", "job_seconds_count", "job_seconds_sum"):
        assert samples(after, name) == samples(before, name), name
    # The gauges of processes that are gone describe nobody: the queue they held, the model they had loaded.
    assert samples(after, "queued") == {} and samples(after, "info") == {}
