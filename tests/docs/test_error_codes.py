"""The README's list of error codes against the service: every code the code base can answer with appears there,
with its HTTP status, and the list names no code the service never answers. The codes are read from the source
(`ApiError(status, "code", ...)`, the `(status, "code", ...)` refusals of the HTTP layer, and the status tables),
and a real server is asked for the ones a request for the wrong route or a broken head gets."""

from __future__ import annotations

import ast
import json
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from testkit.server import ServerProcess
from tests.docs.error_code_helpers import codes_in_readme

REPO = Path(__file__).resolve().parents[2]
CODE = re.compile(r"^[a-z][a-z_]*[a-z]$")


def _status_code_pair(first: ast.AST, second: ast.AST) -> tuple[int, str] | None:
    if isinstance(first, ast.Constant) and isinstance(second, ast.Constant):
        status, code = first.value, second.value
        if isinstance(status, int) and 400 <= status < 600 and isinstance(code, str) and CODE.match(code):
            return status, code
    return None


def codes_in_source() -> dict[str, set[int]]:
    """code -> the statuses it is answered with, from every literal (status, code) pairing in service/."""
    found: dict[str, set[int]] = {}
    for path in sorted((REPO / "service").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            pairs: list[tuple[ast.AST, ast.AST]] = []
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ApiError" and len(node.args) >= 2:
                pairs.append((node.args[0], node.args[1]))
            elif isinstance(node, ast.Tuple) and len(node.elts) >= 2:
                pairs.append((node.elts[0], node.elts[1]))
            elif isinstance(node, ast.Dict):  # {404: "not_found"} and {"empty_body": 400}
                for key, value in zip(node.keys, node.values, strict=True):
                    if key is not None:  # None: a `**mapping` entry
                        pairs += [(key, value), (value, key)]
            for first, second in pairs:
                if (pair := _status_code_pair(first, second)) is not None:
                    found.setdefault(pair[1], set()).add(pair[0])
    return found


def test_every_code_the_service_answers_is_in_the_readme() -> None:
    source, readme = codes_in_source(), codes_in_readme()
    assert {"empty_body", "bad_request", "crf_unavailable", "not_found"} <= source.keys(), "the scan is live"
    missing = sorted(set(source) - set(readme))
    assert not missing, f"codes the README's error list lacks: {missing}"
    wrong = {code: (readme[code], sorted(statuses)) for code, statuses in source.items()
             if readme[code] not in statuses}
    assert not wrong, f"README status differs from the code's: {wrong}"
    assert not set(readme) - set(source), f"codes the service never answers: {set(readme) - set(source)}"


def malformed_head_answer(url: str) -> tuple[int, str]:
    """(status, code) of the answer to a request head with a header line that has no colon, sent raw (an HTTP
    client refuses to send one)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            assert chunk, f"closed before a whole head: {data!r}"
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))
        while len(body) < length:
            chunk = sock.recv(4096)
            assert chunk, f"closed before the whole body: {body!r}"
            body += chunk
    return int(head.split(b" ", 2)[1]), json.loads(body[:length])["error"]["code"]


def test_a_real_server_answers_with_listed_codes(tiny_onnx_model: Path) -> None:
    readme = codes_in_readme()
    with ServerProcess(tiny_onnx_model) as server:  # segment-serve, with its own HTTP protocol
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            answers = [client.get("/no-such-route"), client.delete("/classes")]
        got = {(r.status_code, r.json()["error"]["code"]) for r in answers}
        got.add(malformed_head_answer(server.url))
    assert got == {(404, "not_found"), (405, "method_not_allowed"), (400, "bad_request")}
    for status, code in got:
        assert readme.get(code) == status, (code, status)
