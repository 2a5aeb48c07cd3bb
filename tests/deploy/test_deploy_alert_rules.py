"""The alerts of docker/prometheus-rules.yml against the series a real deployment produces, run by promtool's rule
unit tests (Prometheus' own evaluator; Compose scrapes every 10 s, the tests sample every 15 s): each fires where
it must and stays quiet on healthy traffic."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.app import PROBE_PATHS, create_app
from service.settings import Settings

from .tools import DOCKER, require_tool

RULES = DOCKER / "prometheus-rules.yml"


def rule(alertname: str) -> dict[str, Any]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    (found,) = [r for g in groups for r in g["rules"] if r.get("alert") == alertname]
    return found


def summary(alertname: str, value: str = "", **labels: str) -> str:
    """The alert's summary as Prometheus renders it for an alert with `labels` and `value`."""
    text = rule(alertname)["annotations"]["summary"].replace("{{ $value }}", value)
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), text)


def fired(alertname: str, value: str = "", **labels: str) -> dict[str, Any]:
    """One expected alert: the labels its expression keeps (`labels`) and the rule's."""
    return {"exp_labels": {**labels, **rule(alertname)["labels"]},
            "exp_annotations": {"summary": summary(alertname, value, **labels)}}


def check(tmp_path: Path, series: dict[str, str], alertname: str, eval_time: str,
          expected: list[dict[str, Any]]) -> None:
    """promtool's verdict on `alertname` at `eval_time` over `series` (selector -> promtool values)."""
    test = {"rule_files": [str(RULES)], "evaluation_interval": "15s", "tests": [{
        "interval": "15s",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "alert_rule_test": [{"eval_time": eval_time, "alertname": alertname, "exp_alerts": expected}],
    }]}
    path = tmp_path / "rules_test.yml"
    path.write_text(yaml.safe_dump(test, width=1000))
    out = subprocess.run([require_tool("promtool"), "test", "rules", str(path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def requests(route: str, status: int) -> str:
    return f'segment_requests_total{{instance="a",job="segment",route="{route}",status="{status}"}}'


# Per 15 s: Prometheus scrapes /metrics 1.5 times, the Compose healthcheck asks /healthz once, and a scanner's
# unknown paths get 404s (all of them counted under one route label, "unmatched").
BACKGROUND = {requests("/metrics", 200): "0+1.5x80", requests("/healthz", 200): "0+1x80",
              requests("unmatched", 404): "0+2x80"}


def test_every_api_request_failing_at_low_traffic_fires(tmp_path: Path) -> None:
    """24 requests an hour, every one a 500: against the probes and scrapes they were 2 % of all requests."""
    series = {**BACKGROUND, requests("/segment", 500): "0+0.1x80"}
    check(tmp_path, series, "SegmentHighServerErrorRate", "19m", [fired("SegmentHighServerErrorRate")])


@pytest.mark.parametrize("per_15s", [0.2, 3.0], ids=["low-traffic", "busy"])
def test_healthy_api_traffic_does_not_fire(tmp_path: Path, per_15s: float) -> None:
    """Successes, refusals, 503s for shedding (another alert's) and a few 500s: 3.8 % of the API's requests, under
    the 5 % threshold; /readyz answering 503 while a worker warms up is no API error either."""
    series = {**BACKGROUND, requests("/segment", 200): f"0+{per_15s}x80",
              requests("/results/{result_id}/{name}", 200): f"0+{per_15s / 2}x80",
              requests("/segment", 500): f"0+{per_15s * 0.14}x80",
              requests("/segment", 503): f"0+{per_15s}x80", requests("/segment", 415): f"0+{per_15s}x80",
              requests("/readyz", 503): "0+1x80"}
    check(tmp_path, series, "SegmentHighServerErrorRate", "19m", [])


def test_requests_own_deadlines_passing_do_not_fire_and_the_servers_timeouts_do(tmp_path: Path) -> None:
    """10 % of /segment answers are 504: a client's own `timeout_s` passing (`deadline_exceeded`) is its choice;
    the server's request timeout passing is a fault."""
    base = {**BACKGROUND, requests("/segment", 200): "0+2.7x80", requests("/segment", 504): "0+0.3x80"}
    own = 'segment_rejected_total{instance="a",job="segment",reason="deadline_exceeded"}'
    check(tmp_path, {**base, own: "0+0.3x80"}, "SegmentHighServerErrorRate", "19m", [])
    check(tmp_path, {**base, own: "0+0x80"}, "SegmentHighServerErrorRate", "19m", [fired("SegmentHighServerErrorRate")])
    check(tmp_path, base, "SegmentHighServerErrorRate", "19m", [fired("SegmentHighServerErrorRate")])  # none counted


def test_the_error_rate_counts_exactly_the_api_routes() -> None:
    """The alert's route filter matches every route the API documents but the probes and /metrics."""
    paths = list(create_app(Settings()).openapi()["paths"])
    assert "/segment" in paths and set(PROBE_PATHS) <= set(paths)
    expr = rule("SegmentHighServerErrorRate")["expr"]
    filters = set(re.findall(r'route=~"([^"]+)"', expr))
    assert len(filters) == 1 and expr.count("route=~") == 2, expr  # numerator and denominator alike
    (api,) = filters
    for path in paths:
        assert bool(re.fullmatch(api, path)) == (path not in PROBE_PATHS), path
    assert not re.fullmatch(api, "unmatched")


def test_shedding_counts_the_api_and_not_an_unready_pods_probes(tmp_path: Path) -> None:
    """An unready pod answers /readyz 503 to every probe (about 0.2/s): no shedding; /segment 503s are."""
    probes = {**BACKGROUND, requests("/readyz", 503): "0+3x80"}
    check(tmp_path, probes, "SegmentShedding", "19m", [])
    shedding = {**BACKGROUND, requests("/segment", 503): "0+3x80"}
    check(tmp_path, shedding, "SegmentShedding", "19m", [fired("SegmentShedding")])


def lag_buckets(worker: int, ticks: float, late: float) -> dict[str, str]:
    """One worker's lag histogram per 15 s: `ticks` ticks, `late` of them 0.25-0.5 s late, the rest on time."""
    selector = 'segment_event_loop_lag_seconds_bucket{{instance="a",job="segment",worker="{}",le="{}"}}'
    on_time = ticks - late
    return {selector.format(worker, le): f"0+{n}x100" for le, n in
            (("0.002", on_time), ("0.1", on_time), ("0.25", on_time), ("0.5", ticks), ("+Inf", ticks))}


def test_one_stalling_worker_of_eight_fires(tmp_path: Path) -> None:
    """8 workers (one per GPU) tick 150 times per 15 s; one has 5 % of its ticks half a second late. Summed over
    the pod that is 0.6 % of ticks, below the 99th percentile."""
    series = {k: v for w in range(8) for k, v in lag_buckets(w, 150, 7.5 if w == 3 else 0).items()}
    check(tmp_path, series, "SegmentEventLoopStalling", "20m",
          [fired("SegmentEventLoopStalling", instance="a", worker="3")])


def test_workers_on_time_do_not_fire(tmp_path: Path) -> None:
    """0.5 % of each worker's ticks late is under the 99th percentile."""
    series = {k: v for w in range(8) for k, v in lag_buckets(w, 150, 0.75).items()}
    check(tmp_path, series, "SegmentEventLoopStalling", "20m", [])


def start_times(changes: list[int]) -> str:
    """A slot's start time sampled every 15 s for 50 minutes, its worker replaced after each minute in `changes`."""
    values, start = [], 1_700_000_000
    for step in range(200):
        if step and step % 4 == 0 and step // 4 in changes:
            start += step * 15
        values.append(str(start))
    return " ".join(values)


def test_a_worker_replaced_again_and_again_fires(tmp_path: Path) -> None:
    """Slot 1's worker dies and is replaced three times within 40 minutes; slot 0's was restarted once (a
    deliberate restart, SIGHUP) and slot 2's never."""
    selector = 'segment_worker_start_time_seconds{{instance="a",job="segment",worker="{}"}}'
    series = {selector.format(0): start_times([10]), selector.format(1): start_times([5, 20, 40]),
              selector.format(2): start_times([])}
    check(tmp_path, series, "SegmentWorkerRestarting", "45m",
          [fired("SegmentWorkerRestarting", "3", instance="a", job="segment", worker="1")])
    check(tmp_path, series, "SegmentWorkerRestarting", "30m", [])  # two replacements so far: not yet


def test_workers_short_for_minutes_fires_and_a_replacement_starting_does_not(tmp_path: Path) -> None:
    """Four workers kept: one replacement fails at startup from minute 10 on; a replacement that loads its model
    for 45 s (live 3 for three samples at minute 2) is not a shortfall to page for."""
    labels = 'instance="a",job="segment"'
    series = {f"segment_workers_configured{{{labels}}}": "4x80",
              f"segment_workers_live{{{labels}}}": "4x7 3x3 4x29 3x40"}
    check(tmp_path, series, "SegmentWorkersShort", "17m",
          [fired("SegmentWorkersShort", "3", instance="a", job="segment")])
    check(tmp_path, series, "SegmentWorkersShort", "12m", [])  # short for 2 minutes so far: not yet
    check(tmp_path, series, "SegmentWorkersShort", "2m30s", [])  # the replacement loading its model


def test_two_model_files_for_half_an_hour_fires_and_a_rollout_does_not(tmp_path: Path) -> None:
    """Replica a serves file 1 throughout; replica b serves file 1, then (minute 5) a worker of it is replaced
    after the file was swapped and loads file 2; replica c rolls over from file 1 to file 2 in 3 minutes, as a
    deployment does."""
    info = 'segment_model_info{{instance="{}",job="segment",sha256="{}",model="m",arch="a",precision="fp32",' \
           'provider="CPUExecutionProvider"}}'
    series = {info.format("a", "1"): "1x200",
              info.format("b", "1"): "1x200", info.format("b", "2"): "_x20 1x180",
              info.format("c", "1"): "1x20 _x180", info.format("c", "2"): "_x8 1x192"}
    check(tmp_path, series, "SegmentMixedModels", "40m", [fired("SegmentMixedModels", "2", job="segment")])
    check(tmp_path, series, "SegmentMixedModels", "30m", [])  # mixed for 25 minutes so far: not yet
    rollout = {info.format("a", "1"): "1x20 _x180", info.format("a", "2"): "_x8 1x192"}
    check(tmp_path, rollout, "SegmentMixedModels", "40m", [])  # old and new for 3 minutes only
