"""docker-compose.yml, validated by the real Compose binary against the Compose Specification schema."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from service.settings import Settings

from .tools import REPO, dockerfile, require_tool

ALL_PROFILES = ["--profile", "cpu", "--profile", "monitoring"]


def compose(*args: str, cwd=REPO, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `docker-compose` (the Compose v2+ binary; `config` needs no Docker engine)."""
    binary = require_tool("docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGMENT_", "COMPOSE_", "DOCKER_"))}
    env.update(env_extra or {})
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def config() -> dict:
    """The fully resolved model (`docker compose config --format json`) with every profile enabled."""
    out = compose("-f", "docker-compose.yml", *ALL_PROFILES, "config", "--format", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_compose_file_is_valid_for_every_profile() -> None:
    for profiles in ([], ["--profile", "cpu"], ["--profile", "monitoring"], ALL_PROFILES):
        out = compose("-f", "docker-compose.yml", *profiles, "config", "--quiet")
        assert out.returncode == 0, f"{profiles}: {out.stderr}"
        assert "WARN" not in out.stderr, out.stderr  # e.g. an unset variable without a default


def test_validator_rejects_schema_violations(tmp_path) -> None:
    """The schema check is live: a misspelt key and a wrong type are both errors."""
    text = (REPO / "docker-compose.yml").read_text()
    for broken in (text.replace("capabilities: [gpu]", "capabilities: gpu"),
                   text.replace("stop_grace_period: 30s", "stop_grace_periods: 30s")):
        assert broken != text
        (tmp_path / "docker-compose.yml").write_text(broken)
        out = compose("-f", str(tmp_path / "docker-compose.yml"), "config", "--quiet", cwd=tmp_path)
        assert out.returncode != 0


def test_gpu_service(config: dict) -> None:
    svc = config["services"]["segment"]
    assert "profiles" not in svc, "the GPU service is the default"
    (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == 1 and device["capabilities"] == ["gpu"]
    assert svc["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert svc["environment"]["SEGMENT_REQUIRE_GPU"] == "true"


def test_cpu_profile(config: dict) -> None:
    svc = config["services"]["segment-cpu"]
    assert svc["profiles"] == ["cpu"]
    assert "deploy" not in svc or "devices" not in svc["deploy"].get("resources", {}).get("reservations", {})
    assert svc["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert "segment" in svc["networks"]["default"]["aliases"], "Prometheus scrapes `segment` either way"


@pytest.mark.parametrize("name", ["segment", "segment-cpu"])
def test_service_healthcheck_env_and_model_volume(config: dict, name: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    svc = config["services"][name]
    test = svc["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python" and "/healthz" in test[-1]
    env = svc["environment"]
    port = env["SEGMENT_PORT"]
    assert f":{port}/healthz" in test[-1]
    assert any(p["target"] == int(port) for p in svc["ports"])
    (vol,) = [v for v in svc["volumes"] if v["target"] == "/models"]
    assert vol["type"] == "bind" and vol["read_only"] is True
    # Unset SEGMENT_MODEL_FILE: the embedded model inside the image (its Dockerfile's own path).
    image_env = dockerfile("gpu" if name == "segment" else "cpu").envs
    assert env["SEGMENT_MODEL_PATH"] == image_env["SEGMENT_MODEL_PATH"]
    # Every variable is a real setting, and the values parse.
    unknown = {k for k in env if k.startswith("SEGMENT_")} - {f"SEGMENT_{f.upper()}" for f in Settings.model_fields}
    assert not unknown, f"not settings of the service: {unknown}"
    # The values parse, read from the environment exactly as the container passes them.
    for key, value in env.items():
        if key.startswith("SEGMENT_"):
            monkeypatch.setenv(key, str(value))
    Settings()


def test_model_file_picks_a_mounted_model() -> None:
    out = compose("-f", "docker-compose.yml", *ALL_PROFILES, "config", "--format", "json",
                  env_extra={"SEGMENT_MODEL_FILE": "voc.onnx"})
    assert out.returncode == 0, out.stderr
    for name in ("segment", "segment-cpu"):
        assert json.loads(out.stdout)["services"][name]["environment"]["SEGMENT_MODEL_PATH"] == "/models/voc.onnx"


def test_the_gpu_service_takes_more_gpus_when_asked(config: dict) -> None:
    assert config["services"]["segment"]["environment"]["SEGMENT_WORKERS"] == "auto"  # one worker per GPU
    out = compose("-f", "docker-compose.yml", *ALL_PROFILES, "config", "--format", "json",
                  env_extra={"SEGMENT_GPUS": "all"})
    assert out.returncode == 0, out.stderr
    (device,) = json.loads(out.stdout)["services"]["segment"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["count"] == -1  # Compose's form of "all"


def test_monitoring_services(config: dict) -> None:
    prom = config["services"]["prometheus"]
    assert "profiles" not in prom
    mounts = {v["target"]: v["source"] for v in prom["volumes"] if v["type"] == "bind"}
    assert mounts["/etc/prometheus/prometheus.yml"] == str(REPO / "docker" / "prometheus.yml")
    graf = config["services"]["grafana"]
    assert graf["profiles"] == ["monitoring"]
    gmounts = {v["target"]: v["source"] for v in graf["volumes"] if v["type"] == "bind"}
    assert gmounts["/etc/grafana/provisioning"] == str(REPO / "docker" / "grafana" / "provisioning")
    home = graf["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    dash_dir = next(t for t in gmounts if home.startswith(t + "/"))
    assert (REPO / gmounts[dash_dir] / home.removeprefix(dash_dir + "/")).is_file()


def test_bind_mounts_and_build_files_exist(config: dict) -> None:
    for name, svc in config["services"].items():
        for vol in svc.get("volumes", []):
            if vol["type"] == "bind" and not vol["source"].endswith("/models"):
                assert os.path.exists(vol["source"]), f"{name}: {vol['source']}"
        if "build" in svc:
            assert (REPO / svc["build"]["dockerfile"]).is_file()
