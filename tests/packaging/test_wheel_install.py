"""A normal (non-editable) install serves: build the wheel from the tracked sources, install it into a fresh venv
outside the checkout, start `segment-serve` from an empty folder with no settings, and segment an image.

To stay fast, the fresh venv gets the third-party packages of the venv running the tests through a `.pth` line
(a path, so that venv's own `.pth` hooks, such as an editable install of this project, are not run); the
project itself comes only from the wheel, which the test checks. The same venv then runs the batch client and
`SegmentClient` with onnxruntime, OpenCV, FastAPI and torch made unimportable, and checks that every module
the client loaded belongs to the `client` extra.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from PIL import Image

from model_export.synthetic import SceneConfig, render_scene
from testkit.server import ServerProcess

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "service", "clients", "model_export")
SERVER_ONLY = ("onnxruntime", "cv2", "fastapi", "starlette", "uvicorn", "torch", "torchvision", "onnx")


@dataclass
class Installed:
    wheel: Path
    venv: Path
    workdir: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def env(self) -> dict[str, str]:
        """A clean environment: no PYTHONPATH (the checkout must not leak in), no SEGMENT_* settings."""
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("SEGMENT_", "PYTHON", "VIRTUAL_ENV"))}
        return {**keep, "PATH": f"{self.venv / 'bin'}:/usr/bin:/bin", "HOME": str(self.workdir)}


def _tracked_sources(dest: Path) -> None:
    """Copy the files git tracks under SOURCES (no build leftovers, no caches) into `dest`; outside a git
    checkout, every file under SOURCES except caches."""
    listing = subprocess.run(["git", "ls-files", "-z", *SOURCES], cwd=REPO, capture_output=True)
    if listing.returncode == 0 and listing.stdout:
        files = listing.stdout.decode().split("\0")
    else:
        files = [str(p.relative_to(REPO)) for src in SOURCES for p in ([REPO / src] if (REPO / src).is_file()
                 else (REPO / src).rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
    for name in filter(None, files):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((REPO / name).read_bytes())


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    src, dist, venv, workdir = root / "src", root / "dist", root / "venv", root / "work"
    _tracked_sources(src)
    workdir.mkdir()
    # The real build: pip's isolated build environment, as `pip install <checkout>` does it.
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = dist.glob("segment_service-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    # No PYTHONPATH: a checkout on it (with its editable install's egg-info) would make pip think the project is
    # already installed in the new venv and skip the wheel.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    out = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                          "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True, timeout=300,
                         env=clean)
    assert out.returncode == 0, out.stderr[-3000:]
    where = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", where], capture_output=True, text=True,
                               check=True).stdout.strip())
    deps = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (site / "_test_dependencies.pth").write_text("".join(f"{p}\n" for p in deps))
    return Installed(wheel, venv, workdir)


def test_wheel_carries_the_model_license_and_web_files(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        meta = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "service/models/default.onnx" in names
    scripts = {f"service/static/{name}" for name in ("app.js", "api.js", "downloads.js", "page_state.js", "view.js")}
    assert {"service/static/index.html", "service/static/style.css", *scripts} <= names  # the page's ES modules
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in meta
    assert "Provides-Extra: client" in meta


def test_project_comes_from_the_wheel_not_the_checkout(installed: Installed) -> None:
    out = subprocess.run([str(installed.python), "-c", "import service, clients, model_export;"
                          "print(service.__file__, clients.__file__, model_export.__file__)"],
                         capture_output=True, text=True, env=installed.env(), cwd=installed.workdir, timeout=60)
    assert out.returncode == 0, out.stderr
    for path in out.stdout.split():
        assert Path(path).is_relative_to(installed.venv), path


@pytest.fixture(scope="module")
def served(installed: Installed) -> Iterator[str]:
    """`segment-serve` from the venv's bin, in an empty folder, with only host and port set."""
    with ServerProcess(None, installed.workdir, command=[str(installed.venv / "bin" / "segment-serve")],
                       base_env=installed.env(), log_level=None) as server:
        yield server.wait_ready().url


def _scene_png() -> bytes:
    image, _ = render_scene(5, 3, SceneConfig(min_side=160, max_side=200, min_objects=2, max_objects=3))
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_installed_wheel_serves_the_embedded_model(installed: Installed, served: str) -> None:
    classes = httpx.get(f"{served}/classes").json()
    assert classes["model"] == "default"
    assert [c["name"] for c in classes["classes"]][:2] == ["background", "disc"]
    response = httpx.post(f"{served}/segment?output=stats", content=_scene_png(),
                          headers={"Content-Type": "image/png"}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["classes_present"] != ["background"]  # the demo model finds its shapes
    for path in ("/", "/docs", "/static/docs/swagger-ui-bundle.js", "/static/app.js"):
        assert httpx.get(served + path).status_code == 200, path


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _client_closure(wheel: Path) -> set[str]:
    """Canonical names of every distribution that `pip install segment-service[client]` brings in: the
    wheel's own requirements, then each dependency's, as installed here."""
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    meta = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]
    todo = [Requirement(r) for r in meta if Requirement(r).marker is None
            or Requirement(r).marker.evaluate({"extra": "client"})]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        if _canon(req.name) in seen:
            continue
        seen.add(_canon(req.name))
        for raw in metadata.distribution(req.name).requires or []:
            sub = Requirement(raw)
            if sub.marker is None or sub.marker.evaluate({"extra": ""}):
                todo.append(sub)
    return seen


CLIENT_RUN = """
import json, re, sys
from importlib.metadata import packages_distributions

allowed = set(json.loads(sys.argv[4])) | {"segment-service"}
owners = {name: {re.sub(r"[-_.]+", "-", d).lower() for d in dists}
          for name, dists in packages_distributions().items()}

class OnlyTheClientExtra:
    # Third-party modules outside the client extra behave as if not installed; the standard library is fine.
    def find_spec(self, name, path=None, target=None):
        dists = owners.get(name.split(".")[0])
        if dists and not dists & allowed:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the client extra)", name=name)
        return None

sys.meta_path.insert(0, OnlyTheClientExtra())
from clients.batch import main
from service.client import SegmentClient
code = main([sys.argv[1], "--out", sys.argv[2], "--output", "stats", "--server", sys.argv[3], "--no-progress"])
with SegmentClient(sys.argv[3]) as client:
    present = client.stats(sys.argv[1] + "/scene.png")["classes_present"]
server_side = sorted(m for m in json.loads(sys.argv[5]) if m in sys.modules)
print(json.dumps({"code": code, "present": present, "server_side": server_side}))
"""


def test_client_extra_is_enough_for_the_batch_cli_and_sdk(installed: Installed, served: str, tmp_path: Path) -> None:
    images, out_dir = tmp_path / "in", tmp_path / "out"
    images.mkdir()
    (images / "scene.png").write_bytes(_scene_png())
    closure = sorted(_client_closure(installed.wheel))
    assert not {_canon(m) for m in SERVER_ONLY} & set(closure), closure
    argv = [str(images), str(out_dir), served, json.dumps(closure), json.dumps(SERVER_ONLY)]
    out = subprocess.run([str(installed.python), "-c", CLIENT_RUN, *argv], capture_output=True, text=True,
                         env=installed.env(), cwd=installed.workdir, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["code"] == 0 and (out_dir / "scene.json").is_file()
    assert json.loads((out_dir / "scene.json").read_text())["classes_present"] == result["present"]
    assert result["server_side"] == []
