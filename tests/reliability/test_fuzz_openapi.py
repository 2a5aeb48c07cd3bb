"""schemathesis against the live service's own /openapi.json: no 5xx, no response that breaks the schema.

Bounded (50 examples per operation, fixed seed, one worker) so it costs seconds. (Not `--max-time`: with it,
schemathesis keeps fuzzing until the budget is spent.) `positive_data_acceptance`
is left out on purpose: the schema says "a binary body", and no schema can say "a decodable image", so random
bytes that the service rightly refuses with 415 would count as failures.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from testkit.metrics import Labels, samples
from testkit.server import ServerProcess

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CONFIG = Path(__file__).with_name("schemathesis.toml")


def server_errors(metrics_text: str) -> dict[Labels, float]:
    """The server's own count of 5xx answers, by route and status."""
    return {labels: value for labels, value in samples(metrics_text, "segment_requests_total").items()
            if dict(labels)["status"].startswith("5")}


def test_schemathesis_finds_no_server_errors_or_schema_violations(rule_proc: ServerProcess, tmp_path: Path) -> None:
    cmd = [str(SCHEMATHESIS), "--config-file", str(CONFIG), "run", f"{rule_proc.url}/openapi.json", "--checks", "all",
           "--exclude-checks", "positive_data_acceptance", "--max-examples", "50", "--workers", "1",
           "--seed", "20240611", "--phases", "examples,coverage,fuzzing", "--continue-on-failure",
           "--no-color", "--report", "junit", "--report-dir", str(tmp_path)]
    # The readiness polls that waited for warm-up were answered 503 and are counted too: compare before and after.
    errors_before = server_errors(rule_proc.metrics())
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    summary = run.stdout[-6000:]
    assert run.returncode == 0, summary
    tested = re.search(r"Tested: (\d+)", summary)
    generated = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert tested and int(tested.group(1)) >= 5, summary  # every operation was exercised
    assert generated and generated.group(1) == generated.group(2) and int(generated.group(1)) >= 100, summary
    # The server's own count agrees: not one 5xx on any route, and it is still up.
    assert server_errors(rule_proc.metrics()) == errors_before
    assert rule_proc.proc.poll() is None
