"""What the user documentation says a new user will meet, against what the code does: the Python it needs, the
SEGMENT_* variables the server warns of, the request counters there from the start, the clients' defaults, the web
page's retries, the weights downloads' naming rule and how fp16 files compare logits. Each statement is read from
the document and checked against a real server, command or file."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import onnx
import pytest

from service.settings import EMBEDDED_MODEL, Settings
from testkit.metrics import samples
from testkit.server import ServerProcess

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
SETTINGS = {f"SEGMENT_{name.upper()}" for name in Settings.model_fields}
MISSPELT = "SEGMENT_MAX_BATCHSIZE"  # a setting's name with a letter missing


def _one(pattern: str, text: str) -> re.Match[str]:
    """The one match of `pattern` in `text` (a space in the pattern matches any run of whitespace, line ends
    included; so does `.`)."""
    found = list(re.finditer(pattern.replace(" ", r"\s+"), text, re.S))
    assert len(found) == 1, f"{pattern!r}: {len(found)} matches"
    return found[0]


def _names(text: str) -> set[str]:
    return set(re.findall(r"`\$?(SEGMENT_[A-Z_]+)`", text))


def _readme_row(route: str) -> str:
    (row,) = [line for line in README.splitlines() if line.startswith(f"| `{route}` |")]
    return row


def test_the_python_the_readme_asks_for_is_the_one_the_package_admits() -> None:
    floor = _one(r"needs Python (\d+\.\d+) or newer", README).group(1)
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == f">={floor}", (requires, floor)


def _settings_paragraph() -> str:
    section = README.split("\n### Settings\n", 1)[1]
    return section.split("\n| variable |", 1)[0]


def _variables_read_elsewhere() -> set[str]:
    """SEGMENT_* names that the clients, the model tools and docker-compose read, which are no server setting."""
    found: set[str] = set()
    for folder in ("clients", "model_export"):
        for path in (REPO / folder).rglob("*.py"):
            found |= set(re.findall(r"[\"'](SEGMENT_[A-Z_]+)[\"']", path.read_text()))
    found |= set(re.findall(r"\$\{(SEGMENT_[A-Z_]+)", (REPO / "docker-compose.yml").read_text()))
    return found - SETTINGS


@pytest.fixture(scope="module")
def fresh_server() -> tuple[str, str]:
    """(the /metrics text before any request but readiness polls, the startup log) of a real `segment-serve` on the
    embedded model, started with every variable the settings paragraph names set, and a misspelt setting."""
    paragraph = _settings_paragraph()
    env = {name: "x" for name in _names(paragraph) - SETTINGS}
    with ServerProcess(None, SEGMENT_INTRA_OP_THREADS="1", **env, **{MISSPELT: "4"}) as server:
        server.wait_ready()
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
        server.terminate()
    return metrics, server.log


def test_the_variables_the_readme_leaves_alone_are_not_warned_of_and_the_others_are(
        fresh_server: tuple[str, str]) -> None:
    paragraph = _settings_paragraph()
    left_alone = _names(_one(r"left alone \(([^)]*)\)", paragraph).group(1))
    warned = _names(_one(r"but not the clients' `SEGMENT_\w+`", paragraph).group(0))
    assert left_alone == _variables_read_elsewhere() - warned, "the paragraph lists what other commands read"
    log = fresh_server[1]
    for name in left_alone:
        assert name not in log, f"{name} is warned of:\n{log}"
    for name, setting in ((*warned, "SEGMENT_API_KEYS"), (MISSPELT, "SEGMENT_MAX_BATCH_SIZE")):
        assert re.search(rf"WARNING .*{name} is not a setting .*did you mean {setting}\?", log), log


def test_the_request_counters_the_readme_says_start_at_zero_do(fresh_server: tuple[str, str]) -> None:
    match = _one(r"each API route's \(([^)]*)\) request counters for ([\d, and]+), are there at 0", _readme_row(
        "GET /metrics"))
    routes = re.findall(r"`(/\w+)`", match.group(1))
    statuses = set(re.findall(r"\d{3}", match.group(2)))
    at_zero: dict[str, set[str]] = {}
    for labels, value in samples(fresh_server[0], "segment_requests_total").items():
        if value == 0:
            at_zero.setdefault(dict(labels)["route"], set()).add(dict(labels)["status"])
    assert {route.split("/")[1] for route in at_zero} == {route.strip("/") for route in routes}, at_zero
    assert all(found == statuses for found in at_zero.values()), at_zero


def test_client_defaults_are_the_commands_own(monkeypatch: pytest.MonkeyPatch) -> None:
    from clients import batch, webcam

    clients = README.split("\n## Clients\n", 1)[1].split("\n## ", 1)[0]
    key_variable = _one(r"`--api-key` \(default `\$(\w+)`\)", clients).group(1)
    server_variable, server_default = _one(r"`--server` \(default `\$(\w+)`, else `([^`]+)`\)", clients).groups()
    monkeypatch.delenv(server_variable, raising=False)
    monkeypatch.setenv(key_variable, "k")
    parsed = [batch.parse_args(["in", "--out", "out", "--server", "http://h"]), webcam.parse_args([])]
    assert all(args.api_key == "k" for args in parsed)
    waits = {int(n) for n in re.findall(r"`--wait` seconds \(default (\d+)\)", clients.replace("\n", " "))}
    assert len(re.findall(r"`--wait`\s+seconds", clients)) == 2 and waits == {args.wait for args in parsed}
    assert parsed[1].server == server_default
    assert f"`--max-failures` (default {parsed[1].max_failures})" in clients.replace("\n", " ")
    monkeypatch.setenv(server_variable, "http://elsewhere:1")
    assert webcam.parse_args([]).server == "http://elsewhere:1"


def test_the_web_pages_retries_are_as_the_readme_says() -> None:
    wait, budget = _one(r"a wait of up to (\d+) s, (\d+) s in all", _readme_row("GET /")).groups()
    api = (REPO / "service" / "static" / "api.js").read_text()
    constants = dict(re.findall(r"const (\w+) = ([\d.]+);", api))
    assert (float(constants["MAX_RETRY_WAIT_S"]), float(constants["RETRY_BUDGET_S"])) == (float(wait), float(budget))
    assert "result_not_found" in _readme_row("GET /") and '"result_not_found"' in api


def test_a_weights_file_named_without_its_hash_is_refused_as_the_readme_says(tmp_path: Path) -> None:
    models = README.split("\n## Install and serve", 1)[1].split("\n## Run the whole", 1)[0]
    rule = _one(r"checked against the sha256 prefix in its file name \(`([^`]+)`", models).group(1)
    assert rule == "<name>-<sha256 prefix>.pth"
    command = str(Path(sys.executable).parent / "segment-export")
    help_text = subprocess.run([command, "pretrained", "--help"], capture_output=True, text=True, timeout=120).stdout
    for named in re.findall(r"`(\$?[A-Z_]+|--[a-z-]+)`", _one(r"kept \(in .*? a name without", models).group(0)):
        assert named.lstrip("$") in help_text, named
    refused = subprocess.run([command, "pretrained", "deeplabv3_resnet50", "--url", "http://127.0.0.1:1/weights.pth",
                              "--cache-dir", str(tmp_path), "-o", str(tmp_path / "m.onnx")],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "no sha256 prefix" in refused.stderr, refused.stderr
    assert not list(tmp_path.iterdir()), "nothing downloaded or written"


def test_fp16_files_compare_float32_logits_as_precision_md_says(tmp_path: Path) -> None:
    from model_export.quantize import convert_fp16

    doc = (REPO / "docs" / "PRECISION.md").read_text().split("\n## fp16\n", 1)[1].split("\n## ", 1)[0]
    _one(r"every `ArgMax` node block-listed too", doc)
    _one(r"ArgMax compares the float32 logits", doc)
    half = tmp_path / "model.fp16.onnx"
    convert_fp16(Path(EMBEDDED_MODEL), half)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(half)))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    (argmax,) = [node for node in model.graph.node if node.op_type == "ArgMax"]
    assert types[argmax.input[0]] == onnx.TensorProto.FLOAT, onnx.TensorProto.DataType.Name(types[argmax.input[0]])
