"""After warm-up, a largest batch that takes at least the request timeout is named in one WARNING, with both numbers
and the settings to change: on a healthy device such batches time out and make the server answer 503
`inference_unavailable` as for a hung one, and nothing else would tell a too-low SEGMENT_REQUEST_TIMEOUT_S (or a
too-large SEGMENT_MAX_BATCH_SIZE) from a hung device. Real onnxruntime sessions, warmed up as the service does."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from service.core.engine import load_engine
from service.settings import Settings
from service.startup import warn_if_batch_outlasts_timeout
from tests.service.svc_helpers import make_rule_model


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_rule_model(tmp_path_factory.mktemp("startup") / "rule.onnx")


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "service.startup"]


def test_buckets_warmed_slower_than_the_timeout_are_named_once(model: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(model_path=model, intra_op_threads=1, fixed_shapes="on", max_batch_size=4)
    engine = load_engine(settings.engine_options())
    engine.warm_up()
    measured = engine.expected_batch_s(4)  # the largest bucket's timed warm-up run
    assert measured > 0
    caplog.set_level(logging.WARNING, logger="service.startup")

    # A timeout just above the measured batch: nothing to say.
    roomy = settings.model_copy(update={"request_timeout_s": measured * 1.5})
    assert warn_if_batch_outlasts_timeout(engine, roomy) is None
    assert warnings(caplog) == []

    # At the measured batch time: every full batch would use up its requests' whole timeout.
    tight = settings.model_copy(update={"request_timeout_s": measured})
    message = warn_if_batch_outlasts_timeout(engine, tight)
    assert warnings(caplog) == [message]
    assert message is not None
    for part in (f"{measured:.3g}s", f"{measured:g}s", "batch of 4", "SEGMENT_REQUEST_TIMEOUT_S",
                 "SEGMENT_MAX_BATCH_SIZE", "measured in warm-up"):
        assert part in message, (part, message)


def test_without_buckets_the_batch_is_timed_after_warm_up(model: Path, caplog: pytest.LogCaptureFixture) -> None:
    """On CPU without fixed shapes warm-up runs one image: the batch's time is one image's, timed after warm-up,
    times the batch size (a CPU runs a batch's images one after another's worth of work)."""
    settings = Settings(model_path=model, intra_op_threads=1, max_batch_size=8)
    engine = load_engine(settings.engine_options())
    assert engine.runner is None and not engine.on_gpu
    engine.warm_up()
    caplog.set_level(logging.WARNING, logger="service.startup")
    assert warn_if_batch_outlasts_timeout(engine, settings) is None  # 30 s: far above a batch of this model
    assert warnings(caplog) == []

    message = warn_if_batch_outlasts_timeout(engine, settings.model_copy(update={"request_timeout_s": 1e-6}))
    assert message is not None and warnings(caplog) == [message]
    assert "batch of 8" in message and "8 x one image's" in message and "1e-06s" in message


def test_a_warm_up_within_the_timeout_adds_no_run_to_the_start(model: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Warm-up's cold runs are slower than steady ones: when even they fit within the timeout, no run is timed at
    every start; when they do not, one is, and warns only if the steady batch does not fit either."""
    settings = Settings(model_path=model, intra_op_threads=1, max_batch_size=8)
    engine = load_engine(settings.engine_options())
    warm_up_s = engine.warm_up()
    runs: list[int] = []
    run = engine.run

    def counted(batch):
        runs.append(len(batch))
        return run(batch)

    engine.run = counted  # type: ignore[method-assign]
    caplog.set_level(logging.WARNING, logger="service.startup")
    # Roomy for the steady batch too, at least a second: a sub-millisecond warm-up times 16 was once below 8 steady
    # runs of a machine busy with other tests (0.0077 s against 8 x 0.0044 s).
    roomy = settings.model_copy(update={"request_timeout_s": max(warm_up_s * 8 * 2, 1.0)})
    assert warn_if_batch_outlasts_timeout(engine, roomy, warm_up_s=warm_up_s) is None
    assert runs == []  # nothing run: the warm-up bounds it
    # A warm-up slower than the timeout: one steady image timed, and (a far lower timeout) the warning.
    assert warn_if_batch_outlasts_timeout(engine, roomy, warm_up_s=roomy.request_timeout_s) is None
    assert runs == [1]
    tight = settings.model_copy(update={"request_timeout_s": 1e-6})
    message = warn_if_batch_outlasts_timeout(engine, tight, warm_up_s=warm_up_s)
    assert message is not None and warnings(caplog) == [message] and runs == [1, 1]
