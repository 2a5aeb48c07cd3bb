"""docs/RELIABILITY.md quotes the line `segment-serve` logs when its model file is missing, and its exit status:
both are checked against the real command, so that an operator can search the log for the quoted words."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from testkit.server import ServerProcess

REPO = Path(__file__).resolve().parents[2]
RELIABILITY = REPO / "docs" / "RELIABILITY.md"


def test_missing_model_line_is_quoted_exactly(tmp_path: Path) -> None:
    (row,) = [line for line in RELIABILITY.read_text().splitlines() if line.startswith("| model file missing |")]
    # The quote is a ``double-backtick`` code span: the message itself holds a `command` in backticks.
    (quote,) = re.findall(r"``(cannot start: .*?) ``", row)
    (quoted_path,) = re.findall(r"model file (\S+) not found", quote)
    status = int(re.search(r"exits with status (\d+)", row).group(1))
    missing = tmp_path / "nowhere" / "model.onnx"
    server = ServerProcess(missing, command=[str(Path(sys.executable).parent / "segment-serve")])
    try:
        server.proc.wait(timeout=120)
    finally:
        assert server.terminate() == status, server.log  # also collects the whole log
    expected = quote.replace(quoted_path, str(missing))
    assert any(line.rstrip("\n").endswith(expected) for line in server.lines), f"{expected!r} not in\n{server.log}"
