"""Reading a server's Prometheus text with prometheus-client's own parser, as the tests and benchmarks do."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]


def samples(metrics_text: str, name: str) -> dict[Labels, float]:
    """Every sample called `name` (e.g. `segment_requests_total`), by its labels sorted as (key, value) pairs."""
    return {tuple(sorted(s.labels.items())): s.value for family in text_string_to_metric_families(metrics_text)
            for s in family.samples if s.name == name}


def metric_sum(metrics_text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 when there are none)."""
    return sum(value for found, value in samples(metrics_text, name).items()
               if all(dict(found).get(k) == v for k, v in labels.items()))


def histogram(metrics_text: str, name: str) -> tuple[dict[float, float], float, float]:
    """A histogram summed over its labels (e.g. `segment_event_loop_lag_seconds` over the workers): (cumulative
    count per bucket's upper bound, count, sum)."""
    buckets: dict[float, float] = {}
    for labels, value in samples(metrics_text, f"{name}_bucket").items():
        bound = float(dict(labels)["le"])
        buckets[bound] = buckets.get(bound, 0.0) + value
    return buckets, metric_sum(metrics_text, f"{name}_count"), metric_sum(metrics_text, f"{name}_sum")


def bucket_quantile(buckets: dict[float, float], count: float, q: float) -> float:
    """The upper bound of the bucket holding quantile `q` (0..1) of `count` observations (inf in the last)."""
    return next((bound for bound in sorted(buckets) if buckets[bound] >= q * count), float("inf"))
