"""available_cpus / cgroup_cpu_limit on cgroup trees laid out as the kernel does: v2 and v1, nested groups."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from service.core.cpus import available_cpus, cgroup_cpu_limit

AFFINITY = len(os.sched_getaffinity(0))


class Tree:
    """A fake /sys/fs/cgroup under `root` and the /proc/self/cgroup that places this process in it."""

    def __init__(self, tmp_path: Path, proc_self_cgroup: str | bytes = "0::/\n") -> None:
        self.root = tmp_path / "sys_fs_cgroup"
        self.root.mkdir()
        self.proc = tmp_path / "proc_self_cgroup"
        if isinstance(proc_self_cgroup, bytes):
            self.proc.write_bytes(proc_self_cgroup)
        else:
            self.proc.write_text(proc_self_cgroup)

    def write(self, relative: str, content: str | bytes) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content + "\n")

    def limit(self) -> float | None:
        return cgroup_cpu_limit(cgroup_root=self.root, proc_self_cgroup=self.proc)

    def cpus(self) -> int:
        return available_cpus(cgroup_root=self.root, proc_self_cgroup=self.proc)


def expected_cpus(limit: float | None) -> int:
    """What available_cpus must answer for a quota of `limit` CPUs on this host."""
    return max(1, AFFINITY if limit is None else min(AFFINITY, math.ceil(limit)))


def test_v2_quota_at_the_root(tmp_path: Path) -> None:
    """Inside a cgroup namespace (Docker's default on v2) the container's group is the mount's root."""
    tree = Tree(tmp_path)
    tree.write("cpu.max", "150000 100000")
    assert tree.limit() == 1.5
    assert tree.cpus() == expected_cpus(1.5)


def test_v2_nested_group_takes_the_tightest_quota_up_to_the_root(tmp_path: Path) -> None:
    """Without a cgroup namespace the group's path is in /proc/self/cgroup; an ancestor's quota limits it too."""
    tree = Tree(tmp_path, "0::/kubepods.slice/pod1/ctr\n")
    tree.write("cpu.max", "max 100000")
    tree.write("kubepods.slice/cpu.max", "max 100000")
    tree.write("kubepods.slice/pod1/cpu.max", "50000 100000")  # the pod: half a CPU
    tree.write("kubepods.slice/pod1/ctr/cpu.max", "400000 100000")  # the container alone would get 4
    assert tree.limit() == 0.5
    assert tree.cpus() == 1
    tree.write("kubepods.slice/pod1/cpu.max", "max 100000")
    assert tree.limit() == 4.0  # now the group's own quota is the tightest
    assert tree.cpus() == expected_cpus(4.0)
    tree.write("kubepods.slice/pod1/ctr/cpu.max", "max 100000")
    tree.write("cpu.max", "300000 100000")
    assert tree.limit() == 3.0  # the root's, two levels up


def test_v2_group_outside_the_namespace_reads_only_the_root(tmp_path: Path) -> None:
    """A group reported as /../x lies outside what this mount shows: nothing above the mount is read."""
    tree = Tree(tmp_path, "0::/../../other\n")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "cpu.max").write_text("10000 100000\n")  # where a naive join would land
    tree.write("cpu.max", "200000 100000")
    assert tree.limit() == 2.0


@pytest.mark.parametrize("mount", ["cpu", "cpu,cpuacct", "cpuacct,cpu"])
def test_v1_quota(tmp_path: Path, mount: str) -> None:
    tree = Tree(tmp_path, f"4:{mount}:/\n3:memory:/\n")
    tree.write(f"{mount}/cpu.cfs_quota_us", "250000")
    tree.write(f"{mount}/cpu.cfs_period_us", "100000")
    assert tree.limit() == 2.5
    assert tree.cpus() == expected_cpus(2.5)


def test_v1_nested_group_and_its_ancestors(tmp_path: Path) -> None:
    """Docker on v1 mounts the container's own group at cpu/ while /proc/self/cgroup names /docker/<id>: the
    mount's root is read. On a host view the nested group is there, and the tightest quota up the tree wins."""
    tree = Tree(tmp_path, "5:cpuacct,cpu:/docker/abc\n0::/\n")
    tree.write("cpu,cpuacct/cpu.cfs_quota_us", "300000")
    tree.write("cpu,cpuacct/cpu.cfs_period_us", "100000")
    assert tree.limit() == 3.0
    tree.write("cpu,cpuacct/docker/cpu.cfs_quota_us", "-1")
    tree.write("cpu,cpuacct/docker/cpu.cfs_period_us", "100000")
    tree.write("cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "150000")
    tree.write("cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000")
    assert tree.limit() == 1.5


def test_unlimited_quotas(tmp_path: Path) -> None:
    """v1's -1 and v2's 'max' are no limit: the affinity count stands."""
    tree = Tree(tmp_path, "1:cpu:/\n0::/\n")
    tree.write("cpu.max", "max 100000")
    tree.write("cpu/cpu.cfs_quota_us", "-1")
    tree.write("cpu/cpu.cfs_period_us", "100000")
    assert tree.limit() is None
    assert tree.cpus() == AFFINITY


def test_no_cgroup_files_at_all(tmp_path: Path) -> None:
    tree = Tree(tmp_path)
    tree.proc.unlink()
    assert tree.limit() is None
    assert tree.cpus() == AFFINITY


@pytest.mark.parametrize("cpu_max", ["banana", "100000", "1 2 3", "0 100000", "100000 0", "-5 100000", "",
                                     b"\xff\xfe\x00garbage"])
def test_malformed_v2_files_are_no_quota(tmp_path: Path, cpu_max: str | bytes) -> None:
    tree = Tree(tmp_path, "0::/a\n")
    tree.write("cpu.max", cpu_max)
    tree.write("a/cpu.max", "200000 100000")  # a readable quota elsewhere still counts
    assert tree.limit() == 2.0


def test_malformed_v1_files_and_proc_self_cgroup_do_not_raise(tmp_path: Path) -> None:
    tree = Tree(tmp_path, b"\xff\xfe not:a:valid\nline without colons\n4:cpu:/x\n")
    tree.write("cpu/x/cpu.cfs_quota_us", "abc")
    tree.write("cpu/x/cpu.cfs_period_us", "100000")
    tree.write("cpu/cpu.cfs_quota_us", "100000")
    tree.write("cpu/cpu.cfs_period_us", "0")
    (tree.root / "cpu.max").mkdir()  # a directory where a file should be
    assert tree.limit() is None
    assert tree.cpus() == AFFINITY


def test_the_answer_stays_between_one_and_the_affinity_count(tmp_path: Path) -> None:
    tree = Tree(tmp_path)
    tree.write("cpu.max", f"{(AFFINITY + 100) * 100000} 100000")  # a quota above the CPUs this process may use
    assert tree.cpus() == AFFINITY
    tree.write("cpu.max", "1000 100000")  # a hundredth of a CPU still gets one thread
    assert tree.limit() == 0.01
    assert tree.cpus() == 1


def test_defaults_read_this_host() -> None:
    """Existing callers pass nothing: the real /sys/fs/cgroup and /proc/self/cgroup."""
    assert available_cpus() == expected_cpus(cgroup_cpu_limit())
