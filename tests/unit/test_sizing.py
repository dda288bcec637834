"""workers=auto sizing: CPU budget from affinity and cgroup v1/v2 quotas, memory budget, RSS, and the log line."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
from pathlib import Path

import pytest

from corral.core.sizing import (
    CpuBudget,
    MemoryBudget,
    cap_by_memory,
    cpu_budget,
    describe_choice,
    memory_budget,
    rss_bytes,
)

MIB = 1024 * 1024
GIB = 1024 * MIB
V1_NO_MEMORY_LIMIT = "9223372036854771712"  # what cgroup v1 reports for "unlimited" on 64-bit with 4 KiB pages
HYBRID_V1_LINES = ["4:memory:/app", "3:cpu,cpuacct:/app", "1:name=systemd:/app", "0::/app"]


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fake_proc(tmp_path: Path, *cgroup_lines: str) -> str:
    """A /proc whose self/cgroup holds these lines."""
    proc = tmp_path / "proc"
    write(proc / "self" / "cgroup", "".join(f"{line}\n" for line in cgroup_lines))
    return str(proc)


def unified_root(tmp_path: Path) -> Path:
    """A pure cgroup v2 mount (the kernel always puts cgroup.controllers at its root)."""
    root = tmp_path / "cgroup"
    write(root / "cgroup.controllers", "cpuset cpu io memory pids\n")
    return root


def v2_cpus(tmp_path: Path, cgroup_path: str, files: dict[str, str], cpus: int = 4) -> CpuBudget:
    """cpu_budget for a process in `cgroup_path` of a v2 tree holding `files` (relative path -> content)."""
    root = unified_root(tmp_path)
    for relative, content in files.items():
        write(root / relative, content)
    return cpu_budget(
        proc_root=fake_proc(tmp_path, f"0::{cgroup_path}"),
        cgroup_root=str(root),
        affinity=lambda: set(range(cpus)),
    )


def v2_memory(tmp_path: Path, cgroup_path: str, files: dict[str, str], physical: int = 16 * GIB) -> MemoryBudget:
    root = unified_root(tmp_path)
    for relative, content in files.items():
        write(root / relative, content)
    return memory_budget(
        proc_root=fake_proc(tmp_path, f"0::{cgroup_path}"), cgroup_root=str(root), physical_bytes=physical
    )


# --- CPU: cgroup v2 -------------------------------------------------------------------------------------------


def test_v2_cpu_max_of_max_means_no_quota_so_affinity_decides(tmp_path: Path) -> None:
    budget = v2_cpus(tmp_path, "/app", {"app/cpu.max": "max 100000\n"}, cpus=3)
    assert budget == CpuBudget(3, "sched affinity: 3 CPUs; cgroup cpu quota: none")


def test_fractional_v2_quota_rounds_up_to_whole_cpus(tmp_path: Path) -> None:
    budget = v2_cpus(tmp_path, "/app", {"app/cpu.max": "150000 100000\n"}, cpus=4)
    assert budget.cpus == 2
    assert budget.reason == "sched affinity: 4 CPUs; cgroup v2 cpu.max 150000/100000 = 1.5 CPUs -> 2"


def test_quota_below_one_cpu_still_gives_one_cpu(tmp_path: Path) -> None:
    budget = v2_cpus(tmp_path, "/app", {"app/cpu.max": "20000 100000\n"}, cpus=4)
    assert budget.cpus == 1
    assert "0.2 CPUs -> 1" in budget.reason


def test_quota_smaller_than_affinity_wins_over_the_host_cpu_count(tmp_path: Path) -> None:
    budget = v2_cpus(tmp_path, "/app", {"app/cpu.max": "200000 100000\n"}, cpus=64)
    assert budget.cpus == 2


def test_affinity_smaller_than_quota_wins(tmp_path: Path) -> None:
    budget = v2_cpus(tmp_path, "/app", {"app/cpu.max": "800000 100000\n"}, cpus=2)
    assert budget.cpus == 2
    assert "8 CPUs -> 8" in budget.reason


def test_v2_cpu_max_without_a_period_uses_the_kernel_default_period(tmp_path: Path) -> None:
    budget = v2_cpus(tmp_path, "/app", {"app/cpu.max": "300000\n"}, cpus=8)
    assert budget.cpus == 3
    assert "300000/100000" in budget.reason


def test_quota_on_a_parent_cgroup_applies_to_a_nested_cgroup(tmp_path: Path) -> None:
    files = {"kubepods/pod1/cpu.max": "100000 100000\n", "kubepods/pod1/web/cpu.max": "max 100000\n"}
    assert v2_cpus(tmp_path, "/kubepods/pod1/web", files, cpus=4).cpus == 1


@pytest.mark.parametrize(
    ("own", "parent", "expected"),
    [("300000 100000", "100000 100000", 1), ("100000 100000", "300000 100000", 1), ("250000 50000", "max", 4)],
)
def test_most_restrictive_quota_over_the_cgroup_and_its_ancestors_wins(
    tmp_path: Path, own: str, parent: str, expected: int
) -> None:
    files = {"outer/cpu.max": parent, "outer/inner/cpu.max": own}
    assert v2_cpus(tmp_path, "/outer/inner", files, cpus=4).cpus == expected


def test_quota_at_the_mount_root_applies_when_our_cgroup_path_is_not_visible(tmp_path: Path) -> None:
    # A container without a cgroup namespace: /proc/self/cgroup names the host's path, the mount is our own cgroup.
    budget = v2_cpus(tmp_path, "/system.slice/docker-abc.scope", {"cpu.max": "100000 100000\n"}, cpus=4)
    assert budget.cpus == 1


def test_v2_quota_is_found_in_the_hybrid_unified_mount(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "unified" / "cgroup.controllers", "cpu\n")
    write(root / "unified" / "app" / "cpu.max", "100000 100000\n")
    budget = cpu_budget(proc_root=fake_proc(tmp_path, "0::/app"), cgroup_root=str(root), affinity=lambda: {0, 1, 2})
    assert budget.cpus == 1


# --- CPU: cgroup v1 -------------------------------------------------------------------------------------------


def v1_cpus(tmp_path: Path, mount_name: str, quota: str, period: str = "100000", cpus: int = 4) -> CpuBudget:
    root = tmp_path / "cgroup"
    write(root / mount_name / "app" / "cpu.cfs_quota_us", f"{quota}\n")
    write(root / mount_name / "app" / "cpu.cfs_period_us", f"{period}\n")
    return cpu_budget(
        proc_root=fake_proc(tmp_path, *HYBRID_V1_LINES), cgroup_root=str(root), affinity=lambda: set(range(cpus))
    )


def test_v1_quota_in_a_comounted_cpu_cpuacct_hierarchy_rounds_up(tmp_path: Path) -> None:
    budget = v1_cpus(tmp_path, "cpu,cpuacct", "250000")
    assert budget.cpus == 3
    assert "cgroup v1 cpu.cfs_quota_us/cpu.cfs_period_us 250000/100000 = 2.5 CPUs -> 3" in budget.reason


def test_v1_quota_in_a_hierarchy_mounted_under_the_controller_name(tmp_path: Path) -> None:
    assert v1_cpus(tmp_path, "cpu", "50000", period="50000").cpus == 1


def test_v1_quota_of_minus_one_means_no_quota(tmp_path: Path) -> None:
    budget = v1_cpus(tmp_path, "cpu,cpuacct", "-1", cpus=3)
    assert budget == CpuBudget(3, "sched affinity: 3 CPUs; cgroup cpu quota: none")


def test_v1_quota_on_a_parent_cgroup_applies(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "cpu" / "cpu.cfs_quota_us", "200000\n")
    write(root / "cpu" / "cpu.cfs_period_us", "100000\n")
    write(root / "cpu" / "a" / "b" / "cpu.cfs_quota_us", "-1\n")
    write(root / "cpu" / "a" / "b" / "cpu.cfs_period_us", "100000\n")
    budget = cpu_budget(
        proc_root=fake_proc(tmp_path, "2:cpu:/a/b"), cgroup_root=str(root), affinity=lambda: set(range(8))
    )
    assert budget.cpus == 2


def test_hybrid_system_takes_the_tighter_of_v1_and_v2_quotas(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "cpu,cpuacct" / "app" / "cpu.cfs_quota_us", "300000\n")
    write(root / "cpu,cpuacct" / "app" / "cpu.cfs_period_us", "100000\n")
    write(root / "unified" / "cgroup.controllers", "cpu\n")
    write(root / "unified" / "app" / "cpu.max", "200000 100000\n")
    budget = cpu_budget(
        proc_root=fake_proc(tmp_path, *HYBRID_V1_LINES), cgroup_root=str(root), affinity=lambda: set(range(8))
    )
    assert budget.cpus == 2
    assert "cgroup v2 cpu.max" in budget.reason


# --- CPU: missing, unreadable and odd inputs ------------------------------------------------------------------


def test_quota_file_that_cannot_be_read_means_no_quota(tmp_path: Path) -> None:
    root = unified_root(tmp_path)
    (root / "app" / "cpu.max").mkdir(parents=True)  # reading a directory fails even for root
    budget = cpu_budget(proc_root=fake_proc(tmp_path, "0::/app"), cgroup_root=str(root), affinity=lambda: {0, 1})
    assert budget == CpuBudget(2, "sched affinity: 2 CPUs; cgroup cpu quota: none")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode")
def test_quota_file_without_read_permission_means_no_quota(tmp_path: Path) -> None:
    root = unified_root(tmp_path)
    write(root / "app" / "cpu.max", "100000 100000\n")
    (root / "app" / "cpu.max").chmod(0)
    budget = cpu_budget(proc_root=fake_proc(tmp_path, "0::/app"), cgroup_root=str(root), affinity=lambda: {0, 1})
    assert budget.cpus == 2


@pytest.mark.parametrize("content", ["", "garbage 100000", "100000 0", "0 100000", "-5 100000", "\xff"])
def test_malformed_cpu_max_means_no_quota(tmp_path: Path, content: str) -> None:
    assert v2_cpus(tmp_path, "/app", {"app/cpu.max": content}, cpus=2).cpus == 2


def test_v1_quota_without_a_period_file_means_no_quota(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "cpu" / "app" / "cpu.cfs_quota_us", "100000\n")
    budget = cpu_budget(proc_root=fake_proc(tmp_path, "2:cpu:/app"), cgroup_root=str(root), affinity=lambda: {0, 1})
    assert budget.cpus == 2


def test_missing_proc_self_cgroup_means_no_quota(tmp_path: Path) -> None:
    root = unified_root(tmp_path)
    write(root / "cpu.max", "100000 100000\n")
    budget = cpu_budget(proc_root=str(tmp_path / "noproc"), cgroup_root=str(root), affinity=lambda: {0, 1, 2})
    assert budget.cpus == 3


def test_missing_cgroup_mount_means_no_quota(tmp_path: Path) -> None:
    budget = cpu_budget(
        proc_root=fake_proc(tmp_path, "0::/app"), cgroup_root=str(tmp_path / "nothing"), affinity=lambda: {0}
    )
    assert budget == CpuBudget(1, "sched affinity: 1 CPU; cgroup cpu quota: none")


def test_failing_affinity_falls_back_to_the_os_cpu_count(tmp_path: Path) -> None:
    def broken_affinity() -> set[int]:
        raise OSError("not supported")

    budget = cpu_budget(proc_root=fake_proc(tmp_path), cgroup_root=str(tmp_path / "nothing"), affinity=broken_affinity)
    assert budget.cpus == (os.cpu_count() or 1)
    assert budget.reason.startswith("os.cpu_count: ")


# --- memory ---------------------------------------------------------------------------------------------------


def test_v2_memory_max_of_max_means_physical_ram(tmp_path: Path) -> None:
    budget = v2_memory(tmp_path, "/app", {"app/memory.max": "max\n"}, physical=8 * GIB)
    assert budget == MemoryBudget(8 * GIB, "physical RAM 8.0 GiB")


def test_v2_memory_max_limits_the_budget(tmp_path: Path) -> None:
    budget = v2_memory(tmp_path, "/app", {"app/memory.max": f"{512 * MIB}\n"})
    assert budget == MemoryBudget(512 * MIB, "cgroup v2 memory.max 512 MiB")


def test_memory_limit_on_a_parent_cgroup_applies_to_a_nested_cgroup(tmp_path: Path) -> None:
    files = {"pod/memory.max": f"{GIB}\n", "pod/web/memory.max": f"{2 * GIB}\n", "pod/web/app/memory.max": "max\n"}
    assert v2_memory(tmp_path, "/pod/web/app", files).limit_bytes == GIB


def test_cgroup_memory_limit_above_physical_ram_means_physical_ram(tmp_path: Path) -> None:
    budget = v2_memory(tmp_path, "/app", {"app/memory.max": f"{64 * GIB}\n"}, physical=4 * GIB)
    assert budget == MemoryBudget(4 * GIB, "physical RAM 4.0 GiB")


def v1_memory(tmp_path: Path, limit: str, physical: int = 16 * GIB) -> MemoryBudget:
    root = tmp_path / "cgroup"
    write(root / "memory" / "app" / "memory.limit_in_bytes", f"{limit}\n")
    write(root / "memory" / "memory.limit_in_bytes", f"{V1_NO_MEMORY_LIMIT}\n")
    return memory_budget(
        proc_root=fake_proc(tmp_path, *HYBRID_V1_LINES), cgroup_root=str(root), physical_bytes=physical
    )


def test_v1_huge_memory_limit_means_no_limit(tmp_path: Path) -> None:
    assert v1_memory(tmp_path, V1_NO_MEMORY_LIMIT, physical=16 * GIB) == MemoryBudget(16 * GIB, "physical RAM 16.0 GiB")


def test_v1_huge_memory_limit_means_no_limit_even_when_physical_ram_is_unknown(tmp_path: Path) -> None:
    assert v1_memory(tmp_path, V1_NO_MEMORY_LIMIT, physical=0) == MemoryBudget(0, "memory size unknown")


def test_v1_memory_limit_in_bytes_limits_the_budget(tmp_path: Path) -> None:
    assert v1_memory(tmp_path, str(3 * GIB)) == MemoryBudget(3 * GIB, "cgroup v1 memory.limit_in_bytes 3.0 GiB")


def test_unreadable_memory_limit_means_physical_ram(tmp_path: Path) -> None:
    root = unified_root(tmp_path)
    (root / "app" / "memory.max").mkdir(parents=True)
    budget = memory_budget(proc_root=fake_proc(tmp_path, "0::/app"), cgroup_root=str(root), physical_bytes=GIB)
    assert budget == MemoryBudget(GIB, "physical RAM 1.0 GiB")


def test_cap_by_memory_allows_floor_of_fraction_times_limit_over_rss() -> None:
    budget = MemoryBudget(1000 * MIB, "cgroup v2 memory.max 1000 MiB")
    assert cap_by_memory(16, 100 * MIB, budget) == (
        7,
        "memory: 70% of cgroup v2 memory.max 1000 MiB / 100 MiB per worker allows 7",
    )


def test_cap_by_memory_keeps_a_cpu_count_that_fits() -> None:
    workers, reason = cap_by_memory(2, 45 * MIB, MemoryBudget(24 * GIB, "physical RAM 24.0 GiB"))
    assert workers == 2
    assert reason == "memory: 70% of physical RAM 24.0 GiB / 45 MiB per worker allows 382"


def test_cap_by_memory_never_goes_below_one_worker() -> None:
    workers, reason = cap_by_memory(4, 900 * MIB, MemoryBudget(512 * MIB, "cgroup v2 memory.max 512 MiB"))
    assert workers == 1
    assert reason.endswith("allows 1")


def test_cap_by_memory_honours_the_fraction() -> None:
    workers, reason = cap_by_memory(8, 100 * MIB, MemoryBudget(1000 * MIB, "x"), fraction=0.5)
    assert workers == 5
    assert reason.startswith("memory: 50% of x")


def test_cap_by_memory_leaves_the_count_alone_when_rss_or_limit_is_unknown() -> None:
    assert cap_by_memory(3, 0, MemoryBudget(GIB, "physical RAM 1.0 GiB")) == (
        3,
        "memory: worker RSS unknown, not capped",
    )
    assert cap_by_memory(3, MIB, MemoryBudget(0, "memory size unknown")) == (
        3,
        "memory: memory size unknown, not capped",
    )


@pytest.mark.parametrize(("workers", "fraction"), [(0, 0.7), (2, 0.0), (2, 1.5)])
def test_cap_by_memory_rejects_nonsense(workers: int, fraction: float) -> None:
    with pytest.raises(ValueError):
        cap_by_memory(workers, MIB, MemoryBudget(GIB, "x"), fraction=fraction)


# --- the log line ---------------------------------------------------------------------------------------------


def test_describe_choice_names_the_count_and_every_reason() -> None:
    cpu = CpuBudget(2, "sched affinity: 2 CPUs; cgroup cpu quota: none")
    memory = "memory: 70% of physical RAM 24.0 GiB / 45 MiB per worker allows 382"
    assert describe_choice(cpu, 2, memory) == (
        "workers=auto: 2 (sched affinity: 2 CPUs; cgroup cpu quota: none; "
        "memory: 70% of physical RAM 24.0 GiB / 45 MiB per worker allows 382)"
    )


def test_describe_choice_without_a_memory_measurement() -> None:
    assert describe_choice(CpuBudget(1, "sched affinity: 1 CPU"), 1, None) == "workers=auto: 1 (sched affinity: 1 CPU)"


def test_fake_cgroup_tree_gives_a_complete_log_line(tmp_path: Path) -> None:
    root = unified_root(tmp_path)
    write(root / "app" / "cpu.max", "150000 100000\n")
    write(root / "app" / "memory.max", f"{256 * MIB}\n")
    proc = fake_proc(tmp_path, "0::/app")
    cpu = cpu_budget(proc_root=proc, cgroup_root=str(root), affinity=lambda: set(range(4)))
    workers, memory_reason = cap_by_memory(cpu.cpus, 100 * MIB, memory_budget(proc_root=proc, cgroup_root=str(root)))
    assert describe_choice(cpu, workers, memory_reason) == (
        "workers=auto: 1 (sched affinity: 4 CPUs; cgroup v2 cpu.max 150000/100000 = 1.5 CPUs -> 2; "
        "memory: 70% of cgroup v2 memory.max 256 MiB / 100 MiB per worker allows 1)"
    )


# --- RSS ------------------------------------------------------------------------------------------------------


def test_rss_is_resident_pages_times_page_size(tmp_path: Path) -> None:
    write(tmp_path / "proc" / "1234" / "statm", "765 441 413 5 0 123 0\n")
    assert rss_bytes(1234, proc_root=str(tmp_path / "proc")) == 441 * mmap.PAGESIZE


def test_rss_of_a_process_that_is_gone_is_zero(tmp_path: Path) -> None:
    assert rss_bytes(99999, proc_root=str(tmp_path)) == 0


def test_rss_of_a_malformed_statm_is_zero(tmp_path: Path) -> None:
    write(tmp_path / "proc" / "7" / "statm", "765\n")
    assert rss_bytes(7, proc_root=str(tmp_path / "proc")) == 0


# --- the real machine -----------------------------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")
def test_rss_of_real_processes() -> None:
    assert rss_bytes() > 0
    assert rss_bytes(os.getpid()) > 0
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    assert rss_bytes(child.pid) == 0  # reaped: its /proc entry is gone


def test_real_machine_has_at_least_one_cpu_and_some_memory() -> None:
    cpu = cpu_budget()
    memory = memory_budget()
    assert 1 <= cpu.cpus <= (os.cpu_count() or 1)
    assert cpu.reason
    assert memory.limit_bytes > 0
    assert memory.reason
