"""How many CPUs this process may really use: its affinity mask, capped by a cgroup CPU quota (v1 or v2)."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
# Where cgroup v1 mounts the cpu controller: alone, or co-mounted with cpuacct (either name order).
_V1_CPU_MOUNTS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


def available_cpus(*, cgroup_root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> int:
    """CPUs this process may really use: the affinity mask, capped by a cgroup CPU quota (v1 or v2) if one is set.

    onnxruntime's own default counts the host's cores, which oversubscribes a CPU-limited container.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cgroup_root=cgroup_root, proc_self_cgroup=proc_self_cgroup)
    if limit is not None:
        count = min(count, math.ceil(limit))
    return max(1, count)


def cgroup_cpu_limit(*, cgroup_root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> float | None:
    """The tightest CPU quota, in CPUs, on this process's cgroup or any ancestor of it; None where none is set.

    Reads cgroup v2 (`cpu.max`) and v1 (`cpu.cfs_quota_us` / `cpu.cfs_period_us`). The group comes from
    /proc/self/cgroup: inside a cgroup namespace it is '/', the mount's root; without one it is the full path,
    and a quota on any group above it limits this process as well. Unreadable or malformed files count as no quota.
    """
    # loky's `cpu_count()` (joblib's backend; loky 3.7 adds cloudpickle) was considered: it reads only the
    # root's cpu.max and cgroup v1 under cpu/ (not cpu,cpuacct/), ignores nested groups and their ancestors,
    # and raises on a malformed file. psutil and os.process_cpu_count read no quota at all.
    v2_group, v1_group = _group_paths(proc_self_cgroup)
    limits = [_v2_limit(group / "cpu.max") for group in _groups_upward(cgroup_root, v2_group)]
    for mount in _V1_CPU_MOUNTS:
        limits += [_v1_limit(group) for group in _groups_upward(cgroup_root / mount, v1_group)]
    return min((limit for limit in limits if limit is not None), default=None)


def _group_paths(proc_self_cgroup: Path) -> tuple[str, str]:
    """This process's cgroup v2 path (line `0::/path`) and its v1 cpu controller's path ('/' where unknown)."""
    v2 = v1 = "/"
    try:
        lines = proc_self_cgroup.read_text(errors="replace").splitlines()  # a bad byte spoils one line, not all
    except OSError:
        return v2, v1
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hierarchy, controllers, path = fields
        if hierarchy == "0" and not controllers:
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _groups_upward(mount: Path, group: str) -> list[Path]:
    """The group's directory under `mount`, then each ancestor's, up to `mount` itself."""
    parts = [part for part in group.strip().split("/") if part and part != "."]
    if ".." in parts:  # a group outside this namespace's view: only the mount's own root is ours to read
        parts = []
    return [mount.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def _cpus(quota: str, period: str) -> float | None:
    """CPUs a quota of `quota` µs per `period` µs allows; None for no limit ('max', -1) or a malformed value."""
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def _v2_limit(cpu_max: Path) -> float | None:
    try:
        fields = cpu_max.read_text().split()
    except (OSError, ValueError):
        return None
    return _cpus(*fields) if len(fields) == 2 else None


def _v1_limit(group: Path) -> float | None:
    try:
        return _cpus((group / "cpu.cfs_quota_us").read_text(), (group / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
