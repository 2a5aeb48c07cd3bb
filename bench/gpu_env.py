"""What a GPU host has: the device, driver and library versions a run is reported with, and the packages the
service imports that the host lacks (checked in seconds, before any GPU time is spent on a run that cannot
serve: a GPU host's image may have PyTorch but not the serving stack)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import pkgutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort


def device_info() -> dict[str, Any]:
    """onnxruntime, its providers, Python, CPUs, torch and cuDNN, and the GPU as nvidia-smi names it."""
    info: dict[str, Any] = {"onnxruntime": ort.__version__, "providers": ort.get_available_providers(),
                            "python": sys.version.split()[0], "cpus": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    except ImportError:
        info["torch"] = None
    try:
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        info["gpu"] = query.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["gpu"] = None
    return info


def _top_level_imports(path: Path) -> set[str]:
    """The top-level packages a module imports when it is loaded (imports inside functions are optional ones)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def missing_imports(also: Sequence[str] = ()) -> dict[str, list[str]]:
    """Each package the service needs that cannot be imported here, with the service modules that need it, then
    what importing each module of `also` (the benchmark's own: the exporter it runs first, the modules its
    subprocesses start from) misses.

    Every missing package at once, found from the sources (a first import error would hide the packages that
    the modules behind it need), then every module imported for real (a package present but broken)."""
    import service

    root = Path(service.__file__).parent
    missing: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        for name in sorted(_top_level_imports(path) - set(sys.stdlib_module_names) - {"service", "__future__"}):
            if importlib.util.find_spec(name) is None:
                missing.setdefault(name, []).append(module)
    if not missing:
        for info in pkgutil.walk_packages(service.__path__, "service."):
            _try_import(info.name, missing)
    for module in also:
        _try_import(module, missing)
    return missing


def _try_import(module: str, missing: dict[str, list[str]]) -> None:
    """Import `module`; on an ImportError, note the package it names (or the error) as needed by `module`."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        missing.setdefault(getattr(exc, "name", None) or str(exc), []).append(module)
