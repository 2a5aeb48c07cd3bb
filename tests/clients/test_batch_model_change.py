"""`segment` across a model rollout: each answer names the model file that made it (`X-Model-SHA256`, or a JSON
answer's `model_sha256`); one from another model than the run recorded is not written but fails as
`model_changed`, the run goes on and exits 1, and a rerun does exactly those files against the run's model (against
the new one it stops, as for any other model, and `--overwrite` redoes everything). An answer that names no model
(an older server) is written as before. The answers come from a stand-in server on a loopback port, which can
change its model between two answers of one run; the inputs are real photographs."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image

from clients import batch
from clients.batch import main
from clients.batch_record import run_model
from service.client import AsyncSegmentClient, SegmentClient
from testkit.http_stub import QuietHandler, serving
from testkit.photos import photo
from testkit.server import ServerProcess
from tests.service.svc_helpers import make_rule_model

OLD, NEW = "a1" * 32, "b2" * 32  # the sha256 of two model files of one name
CLASSES = ["background", "red", "green", "blue"]
RUN_FILE = ".segment-run.json"


@dataclass
class Model:
    """What the stand-in serves: the model `/classes` tells, and the one each `/segment` answer names (the `switch`
    model from answer number `switch_after` on, as after a rollout mid-run)."""

    sha256: str = OLD
    switch: str | None = None
    switch_after: int = 0
    header: bool = True  # X-Model-SHA256 on /segment answers, and `model_sha256` in JSON ones (an older server: none)
    json_field: str | None = None  # `model_sha256` in JSON answers when set, whatever `header` says
    answered: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answering(self) -> str:
        with self.lock:
            self.answered += 1
            late = self.switch is not None and self.answered > self.switch_after
            return self.switch if late and self.switch else self.sha256


class Handler(QuietHandler):
    protocol_version = "HTTP/1.1"
    model: Model  # set per server

    def _send(self, body: bytes, media_type: str, sha256: str | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(body)))
        if sha256 is not None and self.model.header:
            self.send_header("X-Model-SHA256", sha256)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.startswith("/classes"):
            info = {"model": "model", "arch": "rule", "precision": "fp32", "input_size": 96,
                    "source": "a stand-in", "classes": CLASSES, "sha256": self.model.sha256}
            self._send(json.dumps(info).encode(), "application/json")
        else:  # /readyz
            self._send(b'{"ready": true}', "application/json")

    def do_POST(self) -> None:
        upload = self.rfile.read(int(self.headers.get("content-length") or 0))
        size = Image.open(io.BytesIO(upload)).size  # a real image came
        sha256 = self.model.answering()
        output = parse_qs(urlsplit(self.path).query)["output"][0]
        if output == "stats":
            stats = {"model": "model", "width": size[0], "height": size[1],
                     "classes": [{"class_id": 0, "class_name": "background", "fraction": 1.0}]}
            named = self.model.json_field if self.model.json_field is not None else \
                sha256 if self.model.header else None
            if named is not None:
                stats["model_sha256"] = named
            self._send(json.dumps(stats).encode(), "application/json", sha256)
            return
        buffer = io.BytesIO()
        Image.new("P", size).save(buffer, format="PNG")  # labels: background everywhere
        self._send(buffer.getvalue(), "image/png", sha256)


@pytest.fixture
def stand_in() -> Iterator[tuple[str, Model]]:
    model = Model()
    with serving(type("Bound", (Handler,), {"model": model})) as url:
        yield url, model


def _photos(folder: Path, count: int) -> list[str]:
    """`count` real photographs, p0.png, p1.png, ...; the names their outputs get, in the order a run takes them."""
    folder.mkdir(parents=True)
    for index in range(count):
        Image.fromarray(photo("astronaut.png", (48 + index, 40))).save(folder / f"p{index}.png")
    return [f"p{index}.png" for index in range(count)]


def _outputs(out: Path) -> dict[str, bytes]:
    """The files in `out` but the run record, temporary files included."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != RUN_FILE}


def _run(inputs: Path, out: Path, url: str, *more: str) -> int:
    # One job at a time: the files are answered in name order, so the rollout falls between two known files.
    return main([str(inputs), "--out", str(out), "--output", "labels", "--server", url, "-j", "1",
                 "--no-progress", *more])


def test_answers_from_another_model_are_not_written(stand_in: tuple[str, Model], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Before: exit 0, "6 written, 0 failed": three files of each model in one folder, recorded as the first's."""
    url, model = stand_in
    names = _photos(tmp_path / "in", 6)
    out = tmp_path / "out"
    model.switch, model.switch_after = NEW, 3
    assert _run(tmp_path / "in", out, url) == 1
    err = capsys.readouterr().err
    assert list(_outputs(out)) == names[:3], err  # no temporary file left either
    assert "segment: 3 written, 0 skipped (already done), 3 failed, 6 total" in err
    for name in names[3:]:
        assert (f"  FAILED {tmp_path / 'in' / name}: model_changed: answered by model sha256 {NEW[:12]}, not the "
                f"run's {OLD[:12]}") in err, err
    assert "3 files were answered by another model than the run's, and not written" in err
    assert json.loads((out / RUN_FILE).read_text())["model"]["sha256"] == OLD


def test_a_rerun_after_a_rollout(stand_in: tuple[str, Model], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Against the new model the rerun stops (exit 2) and leaves the files as they are: resuming would mix two
    models' files. Against the run's model it does the failed files, and only those; `--overwrite` redoes every
    file with the new model."""
    url, model = stand_in
    names = _photos(tmp_path / "in", 4)
    out = tmp_path / "out"
    model.switch, model.switch_after = NEW, 2
    assert _run(tmp_path / "in", out, url) == 1
    made = _outputs(out)
    assert list(made) == names[:2]
    model.sha256, model.switch = NEW, None  # the rollout done: the server tells and answers the new model
    capsys.readouterr()
    assert _run(tmp_path / "in", out, url) == 2
    err = capsys.readouterr().err
    assert f"holds files made by another model (model (sha256 {OLD[:12]}) then, model (sha256 {NEW[:12]}) now)" \
           in err, err
    assert _outputs(out) == made
    model.sha256, model.answered = OLD, 0  # rolled back
    assert _run(tmp_path / "in", out, url) == 0
    assert "segment: 2 written, 2 skipped (already done), 0 failed, 4 total" in capsys.readouterr().err
    assert list(_outputs(out)) == names and model.answered == 2
    model.sha256 = NEW
    assert _run(tmp_path / "in", out, url, "--overwrite") == 0
    assert "segment: 4 written, 0 skipped (already done), 0 failed, 4 total" in capsys.readouterr().err
    assert json.loads((out / RUN_FILE).read_text())["model"]["sha256"] == NEW


@pytest.mark.parametrize("output", ["labels", "stats"])
def test_answers_that_name_no_model_are_written(output: str, stand_in: tuple[str, Model], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """An older server sends no header (and no JSON field): nothing to tell the models apart by, so every file is
    written as before, even though this server's model changes mid-run."""
    url, model = stand_in
    _photos(tmp_path / "in", 4)
    model.header, model.switch, model.switch_after = False, NEW, 2
    assert main([str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--output", output, "--server", url,
                 "-j", "1", "--no-progress"]) == 0
    assert "segment: 4 written, 0 skipped (already done), 0 failed, 4 total" in capsys.readouterr().err
    assert len(_outputs(tmp_path / "out")) == 4


def test_a_json_answer_names_its_model_in_its_body(stand_in: tuple[str, Model], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Without the header (a proxy that drops it), a stats answer's `model_sha256` tells the model as well."""
    url, model = stand_in
    _photos(tmp_path / "in", 2)
    model.header, model.json_field = False, NEW
    assert main([str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--output", "stats", "--server", url,
                 "-j", "1", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert _failed(err, NEW, OLD) == 2, err
    assert not _outputs(tmp_path / "out")


def test_the_client_tells_the_answers_model(stand_in: tuple[str, Model], astronaut: np.ndarray) -> None:
    """`SegmentResult.model_sha256`, from the sync and the async client: the header's, else None."""
    url, model = stand_in

    async def asked() -> str | None:
        async with AsyncSegmentClient(url) as client:
            return (await client.segment(astronaut, "labels")).model_sha256

    with SegmentClient(url) as client:
        assert client.segment(astronaut, "labels").model_sha256 == OLD
        assert asyncio.run(asked()) == OLD
        model.header, model.json_field = False, NEW
        assert client.segment(astronaut, "labels").model_sha256 is None
        assert client.segment(astronaut, "stats").model_sha256 == NEW  # the JSON body's
        model.json_field = None
        assert client.segment(astronaut, "stats").model_sha256 is None


def test_a_real_server_whose_model_changes_after_the_run_asked(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A real `segment-serve`: its answers name the model `/classes` tells, so a run writes them all; then its
    file is replaced by another of the same name and it restarts in place (SIGHUP), right after a run has asked
    `/classes` (the run's `_model` is the one it was told before): none of the new model's answers is written."""
    names = _photos(tmp_path / "in", 3)
    path = make_rule_model(tmp_path / "model.onnx")
    with ServerProcess(path) as server:
        server.wait_ready()
        assert _run(tmp_path / "in", tmp_path / "first", server.url) == 0
        assert list(_outputs(tmp_path / "first")) == names
        told = run_model(None, SegmentClient(server.url))
        assert isinstance(told, dict) and len(told["sha256"]) == 64
        (tmp_path / "next").mkdir()
        make_rule_model(tmp_path / "next" / "model.onnx", input_size=64).replace(path)  # another file, one name
        server.proc.send_signal(signal.SIGHUP)  # restarts in place and loads the file anew
        deadline = time.monotonic() + 120
        while _served_sha256(server.url) in (None, told["sha256"]):
            assert time.monotonic() < deadline and server.proc.poll() is None, server.log
            time.sleep(0.1)
        server.wait_ready()
        capsys.readouterr()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(batch, "_model", lambda backend, client: told)
            assert _run(tmp_path / "in", tmp_path / "second", server.url) == 1
    err = capsys.readouterr().err
    assert "segment: 0 written, 0 skipped (already done), 3 failed, 3 total" in err, err
    assert _failed(err, _served_sha(path), told["sha256"]) == 3, err
    assert not _outputs(tmp_path / "second")


def _failed(err: str, answered: str, run: str) -> int:
    """How many files the summary in `err` lists as answered by model `answered` in a run of model `run`."""
    return sum(line.startswith("  FAILED ") and line.endswith(
        f": model_changed: answered by model sha256 {answered[:12]}, not the run's {run[:12]} (the server's model "
        "changed during the run); not written") for line in err.splitlines())


def _served_sha256(url: str) -> str | None:
    """The sha256 the server at `url` tells in `/classes`, or None while it does not answer (restarting)."""
    try:
        return httpx.get(f"{url}/classes", timeout=5).json()["sha256"]
    except (httpx.TransportError, ValueError, KeyError):
        return None


def _served_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
