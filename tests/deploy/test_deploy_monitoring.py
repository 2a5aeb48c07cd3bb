"""Prometheus config and rules (promtool), and the Grafana dashboard: its PromQL parses (promtool) and
names only metrics and labels that the running service really exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .tools import DOCKER, REPO, require_tool

DASHBOARD = DOCKER / "grafana" / "dashboards" / "segment.json"
DATASOURCES = DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
# Grafana's variables, replaced by concrete durations so promtool can parse the queries.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
METRIC = re.compile(r"\b(segment_[a-z0-9_]+)\b")
SELECTOR = re.compile(r"\b(segment_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("promtool"), *args], capture_output=True, text=True, timeout=60)


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel."""
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


def rule_exprs() -> list[str]:
    groups = yaml.safe_load((DOCKER / "prometheus-rules.yml").read_text())["groups"]
    return [r["expr"] for g in groups for r in g["rules"]]


def concrete(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return expr


def test_promtool_check_config() -> None:
    out = promtool("check", "config", str(DOCKER / "prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "rule files found" in out.stdout  # the rules file was found and checked too


def test_promtool_catches_a_broken_config(tmp_path: Path) -> None:
    """promtool is live: an unknown key and a bad rule expression are both rejected."""
    cfg = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    cfg["scrape_configs"][0]["scrape_intervall"] = "10s"
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "prometheus-rules.yml").write_text((DOCKER / "prometheus-rules.yml").read_text())
    assert promtool("check", "config", str(tmp_path / "prometheus.yml")).returncode != 0
    bad = {"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum(rate(segment_requests_total[5m])"}]}]}
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(bad))
    assert promtool("check", "rules", str(tmp_path / "bad.yml")).returncode != 0


def test_the_failing_device_alert_fires_although_each_process_stops_itself(tmp_path: Path) -> None:
    """By default a process whose device fails stops itself after 60 s and a fresh one starts at 0, so the
    `segment_inference_failing` gauge never holds for the alert's minute: the failed probes, counted across
    restarts, must raise it (promtool's rule unit test, scrapes every 15 s)."""
    groups = yaml.safe_load((DOCKER / "prometheus-rules.yml").read_text())["groups"]
    (rule,) = [r for g in groups for r in g["rules"] if r.get("alert") == "SegmentInferenceFailing"]
    summary = rule["annotations"]["summary"].replace("{{ $labels.instance }}", "a")
    restarts = " ".join(["1 1 1 1 stale"] * 4)  # failing for 60 s, then a new process
    probes = " ".join(["0 1 2 3 4"] * 4)  # a probe every 15 s, counted from 0 in each process
    test = {"rule_files": [str(DOCKER / "prometheus-rules.yml")], "evaluation_interval": "15s", "tests": [{
        "interval": "15s",
        "input_series": [
            {"series": 'segment_inference_failing{instance="a"}', "values": restarts},
            {"series": 'segment_inference_failures_total{instance="a",run="probe"}', "values": probes},
        ],
        "alert_rule_test": [{"eval_time": "3m", "alertname": "SegmentInferenceFailing", "exp_alerts": [
            {"exp_labels": {"instance": "a", "severity": "critical"}, "exp_annotations": {"summary": summary}}]}],
    }]}
    path = tmp_path / "failing_test.yml"
    path.write_text(yaml.safe_dump(test))
    out = promtool("test", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr


def test_scrape_target_is_the_compose_service() -> None:
    cfg = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "segment"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (target,) = [t for sc in job["static_configs"] for t in sc["targets"]]
    host, port = target.split(":")
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert host in services
    assert services[host]["environment"]["SEGMENT_PORT"] == port
    cpu_aliases = services["segment-cpu"]["networks"]["default"]["aliases"]
    assert host in cpu_aliases, "the CPU profile is scraped through the same name"


def test_dashboard_queries_parse_with_promtool(tmp_path: Path) -> None:
    """Each panel's PromQL goes through Prometheus' own parser (as recording rules)."""
    exprs = dashboard_exprs()
    rules = [{"record": f"dashboard:q{i}", "expr": concrete(e)} for i, (_, e) in enumerate(exprs)]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = promtool("check", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(rules)} rules found" in out.stdout


def test_dashboard_shows_what_operators_need() -> None:
    exprs = " ".join(e for _, e in dashboard_exprs())
    assert "rate(segment_requests_total" in exprs  # requests/s
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(segment_request_duration_seconds_bucket" in exprs
    assert "segment_batch_size_bucket" in exprs and "segment_queue_depth" in exprs
    assert "sum by (le, priority) (rate(segment_queue_wait_seconds_bucket" in exprs  # interactive apart from bulk
    assert 'status=~"5.."' in exprs and 'status="503"' in exprs  # 5xx and 503 shown apart
    assert "segment_model_info" in exprs  # the provider actually in use
    # and the model file: workers or replicas on two files show as two rows
    assert any("segment_model_info" in e and "sha256" in e for _, e in dashboard_exprs())
    dash = json.loads(DASHBOARD.read_text())
    (datasource,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def _exported(metrics_text: str) -> tuple[set[str], dict[str, set[str]]]:
    """Series names the service can emit (from # TYPE lines, even before any sample) and their labels."""
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "gauge": ("",), "summary": ("", "_sum", "_count", "_created"), "info": ("_info",)}
    for fam in text_string_to_metric_families(metrics_text):
        for suffix in suffixes.get(fam.type, ("",)):
            names.add(fam.name + suffix)
        for sample in fam.samples:
            names.add(sample.name)
            labels.setdefault(sample.name, set()).update(sample.labels)
    return names, labels


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_queries_use_only_exported_metrics_and_labels(scraped_metrics: str, source: str) -> None:
    names, labels = _exported(scraped_metrics)
    exprs = [e for _, e in dashboard_exprs()] if source == "dashboard" else rule_exprs()
    assert exprs
    for expr in exprs:
        used = set(METRIC.findall(expr))
        # `up` is Prometheus' own per-target series; everything else must be the service's.
        assert used or 'up{job="segment"}' in expr, f"query names no service metric: {expr}"
        missing = used - names
        assert not missing, f"{missing} not exported by the service (query: {expr})"
        for metric, body in SELECTOR.findall(expr):
            if metric in labels:
                unknown = set(MATCHER.findall(body)) - labels[metric]
                assert not unknown, f"labels {unknown} not on {metric} (query: {expr})"
        seen = set().union(*(labels.get(m, set()) for m in used))
        if seen:
            seen |= {"instance", "job"}  # Prometheus adds its target labels to every series it scrapes
            for group in GROUPING.findall(expr):
                grouped = {g.strip() for g in group.split(",") if g.strip()}
                assert grouped <= seen, f"grouping by {grouped - seen} (query: {expr})"
