"""`bash bench/gpu_host.sh bundle`, rerun after a pinned wheel's version changed, must carry that project once: the
GPU host's setup installs every carried wheel with pip, which refuses two versions of one project. Run in a
scratch git repository with a local wheelhouse (pip's own `--no-index` and `--find-links`, from its environment)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from testkit import REPO


def wheel(folder: Path, project: str, version: str) -> Path:
    """A minimal pure-Python wheel of `project` at `version`."""
    path = folder / f"{project}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{project}/__init__.py", f"VERSION = {version!r}\n")
        z.writestr(f"{project}-{version}.dist-info/METADATA",
                   f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n")
        z.writestr(f"{project}-{version}.dist-info/WHEEL",
                   "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{project}-{version}.dist-info/RECORD", "")
    return path


def kit_repo(tmp_path: Path) -> Path:
    """A scratch git repository holding `bench/gpu_host.sh` and the shared kit's files, as if already built."""
    repo = tmp_path / "repo"
    (repo / "bench").mkdir(parents=True)
    shutil.copy(REPO / "bench" / "gpu_host.sh", repo / "bench")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gpu").mkdir()
    for name in ("cuda90.so.xz", "pybind.so.xz", "ort-py.tar.xz"):
        (repo / ".gpu" / name).write_bytes(b"kit")
    return repo


def bundle(repo: Path, tmp_path: Path) -> None:
    """`bash bench/gpu_host.sh bundle` in `repo`, its one pinned extra wheel (pinned_pkg 2.0) from a local
    wheelhouse under `tmp_path`; it must succeed."""
    wheelhouse = tmp_path / "wheelhouse"
    if not wheelhouse.exists():
        wheelhouse.mkdir()
        wheel(wheelhouse, "pinned_pkg", "2.0")
    env = {**os.environ, "GPU_EXTRA_WHEELS": "pinned-pkg==2.0", "PIP_NO_INDEX": "1",
           "PIP_FIND_LINKS": str(wheelhouse), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "bench/gpu_host.sh", "bundle"], cwd=repo, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_rebuilt_bundle_carries_each_pinned_project_once(tmp_path: Path) -> None:
    repo = kit_repo(tmp_path)
    gpu = repo / ".gpu"
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    wheel(earlier, "kit_only", "1.0")  # one of the kit's wheels: packed by an earlier run, kept
    wheel(earlier, "pinned_pkg", "1.0")  # the extra wheel at its old pin
    with tarfile.open(gpu / "wheels.tar.xz", "w:xz") as archive:
        archive.add(earlier, arcname=".")
    bundle(repo, tmp_path)
    with tarfile.open(gpu / "wheels.tar.xz") as archive:
        carried = sorted(Path(name).name for name in archive.getnames() if name.endswith(".whl"))
    assert carried == ["kit_only-1.0-py3-none-any.whl", "pinned_pkg-2.0-py3-none-any.whl"], carried
    # What the host's setup then does with them: one pip install of every carried wheel.
    unpacked = tmp_path / "unpacked"
    with tarfile.open(gpu / "wheels.tar.xz") as archive:
        archive.extractall(unpacked, filter="data")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                              "--no-cache-dir", "--target", str(tmp_path / "site"), *map(str, unpacked.glob("*.whl"))],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    assert "2.0" in (tmp_path / "site" / "pinned_pkg" / "__init__.py").read_text()


def test_the_kits_own_setup_line_finds_the_wheels_the_bundle_packed(tmp_path: Path) -> None:
    """The kit's instructions begin a device command with `source .gpu/device-setup.sh`, which installs
    `.gpu/whl/*.whl`; the bundle packs the wheels into one archive and removes that folder, so the kit's line failed
    ("*.whl is not a valid wheel filename") unless `.gpu/setup.sh` ran first. Bundled twice: patched once."""
    repo = kit_repo(tmp_path)
    gpu = repo / ".gpu"
    # The kit's setup as it installs the wheels (its first step), into a scratch folder.
    (gpu / "device-setup.sh").write_text(
        f"{sys.executable} -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "
        f"--target {tmp_path / 'site'} .gpu/whl/*.whl || return 1\n")
    for _ in range(2):
        bundle(repo, tmp_path)
    assert not (gpu / "whl").exists()
    assert (gpu / "device-setup.sh").read_text().count("unpacks the carried wheels") == 1
    setup = subprocess.run(["bash", "-c", "source .gpu/device-setup.sh"], cwd=repo, capture_output=True, text=True,
                           timeout=300)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert "2.0" in (tmp_path / "site" / "pinned_pkg" / "__init__.py").read_text()
