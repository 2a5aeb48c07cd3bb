"""Command lines the user documentation shows, run as a reader would copy them, where what they need is easy to
miss. RELIABILITY.md's fuzzing command passes only against a server with the `crf` extra: without it, the
fuzzer's `crf=true` cases are answered 501 `crf_unavailable`, a 5xx that schemathesis reports as a server error.
The test suite's own fuzz run has the extra (the `dev` extra installs it), so only the document can say so."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np

from testkit.images import encode
from testkit.server import ServerProcess
from tests.service.svc_helpers import make_rule_model

REPO = Path(__file__).resolve().parents[2]
RELIABILITY = REPO / "docs" / "RELIABILITY.md"
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def _fuzz_section() -> tuple[list[str], str]:
    """RELIABILITY.md's fuzzing section: the schemathesis command in it, as argv, and the section's text."""
    text = RELIABILITY.read_text()
    section = text.split("## Fuzzing the OpenAPI schema", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```\n(schemathesis .*?)```", section, re.S)
    return shlex.split(block.replace("\\\n", " ")), section


def _without_crf(folder: Path) -> str:
    """A PYTHONPATH under which `pydensecrf` cannot be imported, as on a server installed without the extra."""
    package = folder / "pydensecrf"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('installed without the crf extra')\n")
    return os.pathsep.join([str(folder), str(REPO), os.environ.get("PYTHONPATH", "")])


def test_the_fuzz_command_names_the_crf_extra_a_server_needs_for_it_to_pass(tmp_path: Path) -> None:
    argv, section = _fuzz_section()
    model = make_rule_model(tmp_path / "rule.onnx")
    with ServerProcess(model, SEGMENT_INTRA_OP_THREADS="1", PYTHONPATH=_without_crf(tmp_path / "hide")) as server:
        server.wait_ready()
        # Really a server without the extra: a CRF request is refused with a 5xx.
        image = encode(np.full((16, 16, 3), 200, np.uint8), "PNG")
        refused = httpx.post(f"{server.url}/segment?crf=true", content=image, timeout=10,
                             headers={"Content-Type": "image/png"})
        url = server.url + "/openapi.json"
        command = [str(SCHEMATHESIS), *(arg.replace("http://127.0.0.1:PORT/openapi.json", url) for arg in argv[1:])]
        # From the checkout, as the document's relative configuration path is written.
        run = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert url in command, command
    # The documented command, exactly as shown, fails against such a server, on the CRF answer alone ...
    assert refused.status_code == 501 and refused.json()["error"]["code"] == "crf_unavailable", refused.text
    failures = run.stdout.split("FAILURES", 1)[-1]
    assert run.returncode == 1, run.stdout[-3000:]
    assert "1 unique failure" in run.stdout and "crf_unavailable" in failures, run.stdout[-3000:]
    # ... so the document must say the server needs the extra.
    assert re.search(r"`crf` extra", section), section
