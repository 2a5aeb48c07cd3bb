"""Start `segment-serve` exactly as an image's CMD + ENV would, but on a free loopback port."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from testkit.server import ServerProcess

from .tools import VENV_BIN, dockerfile, exec_form

# Variables the host sets for numerical libraries on some CPUs (see the project's environment notes); the
# test passes them through unchanged rather than dropping them.
PASSTHROUGH = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def image_env(name: str, workdir: Path, overrides: dict[str, str], venv_bin: Path = VENV_BIN) -> dict[str, str]:
    """The final stage's ENV, with the image's /opt/venv/bin mapped onto `venv_bin`, plus `overrides`."""
    envs = dockerfile(name).envs
    assert envs["PATH"].startswith("/opt/venv/bin:"), envs["PATH"]
    env = {"HOME": str(workdir), "LANG": "C.UTF-8"}
    env.update({k: os.environ[k] for k in PASSTHROUGH if k in os.environ})
    env.update(envs)
    env["PATH"] = f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    env.update(overrides)
    return env


def start_image_command(name: str, model: Path, workdir: Path, venv_bin: Path = VENV_BIN,
                        **extra: str) -> ServerProcess:
    """Run docker/Dockerfile.<name>'s CMD with its ENV; only host, port and model path are changed.

    The working directory is an empty folder, as the image's WORKDIR holds no source tree. `venv_bin`
    stands in for the image's /opt/venv/bin (default: the venv running the tests). The log level stays the
    image's own.
    """
    argv = exec_form(dockerfile(name).cmd)
    env = image_env(name, workdir, {}, venv_bin)
    assert shutil.which(argv[0], path=env["PATH"]), \
        f"{argv[0]} is not on the image PATH (is the package installed with its entry points?)"
    return ServerProcess(model, workdir, command=argv, base_env=env, log_level=None, **extra)
