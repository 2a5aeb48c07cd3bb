"""docs/DEPLOY.md's settings: the selection it lists points to the README's full table and names only real
settings, and every variable docker-compose.yml reads that is not a service setting (host port, GPUs, model file,
passwords) is documented, as the real Compose binary resolves it."""

from __future__ import annotations

import json
import re

from service.settings import Settings

from .test_deploy_compose import ALL_PROFILES, compose
from .tools import REPO

DEPLOY_MD = (REPO / "docs" / "DEPLOY.md").read_text()
SETTINGS = {f"SEGMENT_{name.upper()}" for name in Settings.model_fields}


def test_settings_paragraph_is_a_selection_of_the_readme_table() -> None:
    (para,) = [line for line in DEPLOY_MD.splitlines() if "prefix `SEGMENT_`" in line]
    assert "](../README.md#settings)" in para, "the paragraph points to the table that lists every setting"
    assert (REPO / "README.md").read_text().count("\n### Settings\n") == 1, "the anchor the link names"
    named = {f"SEGMENT_{name}" for name in re.findall(r"`([A-Z][A-Z0-9_]*[A-Z0-9])`", para)}
    assert len(named) > 10 and named <= SETTINGS, f"not settings: {named - SETTINGS}"
    first_cells = [row.split("|")[1] for row in (REPO / "README.md").read_text().splitlines()
                   if row.startswith("| `SEGMENT_")]
    readme_names = {name for cell in first_cells for name in re.findall(r"`(SEGMENT_\w+)`", cell)}
    assert named <= readme_names, f"named here, missing from the README's table: {named - readme_names}"


def test_every_compose_variable_that_is_no_setting_is_documented() -> None:
    variables = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (REPO / "docker-compose.yml").read_text()))
    assert "SEGMENT_PUBLISH" in variables and "SEGMENT_MAX_QUEUE" in variables  # the scan is live
    compose_only = variables - SETTINGS
    undocumented = sorted(v for v in compose_only if f"`{v}" not in DEPLOY_MD)
    assert not undocumented, f"docker-compose.yml reads these, docs/DEPLOY.md never names them: {undocumented}"


def test_publish_port_as_documented() -> None:
    """The default and the documented loopback-only value, resolved by the real Compose binary."""
    (example,) = re.findall(r"`SEGMENT_PUBLISH=([^`]+)`", DEPLOY_MD)
    (default,) = re.findall(r"`SEGMENT_PUBLISH` \(default `(\d+)`", DEPLOY_MD)
    for env, host_ip, published in (({}, None, default), ({"SEGMENT_PUBLISH": example}, *example.rsplit(":", 1))):
        out = compose("-f", "docker-compose.yml", *ALL_PROFILES, "config", "--format", "json", env_extra=env)
        assert out.returncode == 0, out.stderr
        for name in ("segment", "segment-cpu"):
            (port,) = json.loads(out.stdout)["services"][name]["ports"]
            assert (port.get("host_ip"), port["published"], port["target"]) == (host_ip, published, 8000), port
