"""Sizing for `workers = "auto"`: the CPUs and memory this process may really use (sched affinity, cgroup v1/v2
CPU quota and memory limit), a worker's RSS, and the one log line that explains the chosen worker count."""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: workers import this module for rss_bytes, and never need fractions
    from fractions import Fraction

__all__ = [
    "CpuBudget",
    "MemoryBudget",
    "cap_by_memory",
    "cpu_budget",
    "describe_choice",
    "memory_budget",
    "rss_bytes",
]

_DEFAULT_V2_PERIOD_US = 100_000  # what the kernel assumes when cpu.max is written without a period
# cgroup v1 reports "no memory limit" as PAGE_COUNTER_MAX pages (about 2**63 bytes); nothing real is this big.
_UNLIMITED_BYTES = 1 << 60
_KIB = 1024
_MIB = 1024 * _KIB
_GIB = 1024 * _MIB


@dataclass(frozen=True)
class CpuBudget:
    """Whole CPUs this process may use (>= 1) and why, e.g. "sched affinity: 4 CPUs; cgroup v2 cpu.max ..."."""

    cpus: int
    reason: str


@dataclass(frozen=True)
class MemoryBudget:
    """Bytes of memory this process may use (0 when unknown) and where that figure came from."""

    limit_bytes: int
    reason: str


@dataclass(frozen=True)
class _CpuQuota:
    quota_us: int
    period_us: int
    source: str  # which file(s) it was read from, e.g. "cgroup v2 cpu.max"

    @property
    def share(self) -> Fraction:
        from fractions import Fraction

        return Fraction(self.quota_us, self.period_us)

    @property
    def cpus(self) -> int:
        # A quota of 1.5 CPUs can keep 2 workers busy part of the time; rounding down would waste the half.
        return max(1, math.ceil(self.share))

    def describe(self) -> str:
        return f"{self.source} {self.quota_us}/{self.period_us} = {_format_number(self.share)} CPUs -> {self.cpus}"


@dataclass(frozen=True)
class _MemoryLimit:
    limit_bytes: int
    source: str


@dataclass(frozen=True)
class _Membership:
    """One line of /proc/self/cgroup: the controllers of a hierarchy (empty for cgroup v2) and our path in it."""

    controllers: tuple[str, ...]
    path: str

    @property
    def is_unified(self) -> bool:
        return not self.controllers


# ---------------------------------------------------------------------------------------------------------------
# Public API


def cpu_budget(
    *,
    proc_root: str = "/proc",
    cgroup_root: str = "/sys/fs/cgroup",
    affinity: Callable[[], set[int]] | None = None,
) -> CpuBudget:
    """min(CPUs in our sched affinity, ceil(the tightest cgroup CPU quota over our cgroup and its ancestors))."""
    usable, usable_reason = _usable_cpus(affinity)
    quota = _tightest_cpu_quota(proc_root, cgroup_root)
    if quota is None:
        return CpuBudget(usable, f"{usable_reason}; cgroup cpu quota: none")
    return CpuBudget(min(usable, quota.cpus), f"{usable_reason}; {quota.describe()}")


def memory_budget(
    *,
    proc_root: str = "/proc",
    cgroup_root: str = "/sys/fs/cgroup",
    physical_bytes: int | None = None,
) -> MemoryBudget:
    """The tightest cgroup memory limit over our cgroup and its ancestors, or physical RAM when that is smaller.

    `physical_bytes` replaces the machine's RAM size (tests); limit_bytes is 0 only if neither is known.
    """
    physical = _physical_memory() if physical_bytes is None else physical_bytes
    limit = _tightest_memory_limit(proc_root, cgroup_root)
    if limit is not None and (physical <= 0 or limit.limit_bytes < physical):
        return MemoryBudget(limit.limit_bytes, f"{limit.source} {_format_bytes(limit.limit_bytes)}")
    if physical > 0:
        return MemoryBudget(physical, f"physical RAM {_format_bytes(physical)}")
    return MemoryBudget(0, "memory size unknown")


def cap_by_memory(workers: int, worker_rss: int, budget: MemoryBudget, fraction: float = 0.7) -> tuple[int, str]:
    """min(workers, max(1, floor(fraction * limit / rss))) and the reason; unchanged when rss or limit is unknown.

    The RSS of one freshly booted worker includes pages shared with the master (preload_app), so this errs on the
    side of fewer workers — the point is to never start a pool that the OOM killer will cut down.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if worker_rss <= 0:
        return workers, "memory: worker RSS unknown, not capped"
    if budget.limit_bytes <= 0:
        return workers, f"memory: {budget.reason}, not capped"
    from fractions import Fraction

    # An exact fraction keeps e.g. 0.7 * 1000 MiB / 100 MiB at 7, not 6.999... -> 6.
    share = Fraction(fraction).limit_denominator(1000)
    allowed = max(1, math.floor(share * budget.limit_bytes / worker_rss))
    reason = (
        f"memory: {_format_number(share * 100)}% of {budget.reason} / {_format_bytes(worker_rss)} per worker"
        f" allows {allowed}"
    )
    return min(workers, allowed), reason


def describe_choice(cpu: CpuBudget, final: int, memory_reason: str | None) -> str:
    """The one log line for workers=auto: the count, then every fact that led to it."""
    reasons = cpu.reason if memory_reason is None else f"{cpu.reason}; {memory_reason}"
    return f"workers=auto: {final} ({reasons})"


def rss_bytes(pid: int | str = "self", proc_root: str = "/proc") -> int:
    """Resident set size of a process from /proc/<pid>/statm; 0 if the process is gone or /proc is unavailable."""
    # Called about once a second by every worker: one small read, no Path objects.
    try:
        with open(f"{proc_root}/{pid}/statm", "rb") as statm:
            fields = statm.read().split()
        return int(fields[1]) * mmap.PAGESIZE
    except (OSError, IndexError, ValueError):
        return 0


# ---------------------------------------------------------------------------------------------------------------
# CPUs


def _usable_cpus(affinity: Callable[[], set[int]] | None) -> tuple[int, str]:
    getter = affinity if affinity is not None else _default_affinity()
    if getter is not None:
        try:
            count = len(getter())
        except OSError:
            count = 0
        if count > 0:
            return count, f"sched affinity: {_plural(count, 'CPU')}"
    # No affinity API (macOS) or it failed: the host's count is all we can know.
    count = os.cpu_count() or 1
    return count, f"os.cpu_count: {_plural(count, 'CPU')}"


def _default_affinity() -> Callable[[], set[int]] | None:
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is None:
        return None
    return lambda: set(getaffinity(0))


def _tightest_cpu_quota(proc_root: str, cgroup_root: str) -> _CpuQuota | None:
    quotas = []
    for unified, directory in _applicable_cgroup_dirs(proc_root, cgroup_root, "cpu"):
        quota = _read_v2_cpu_quota(directory) if unified else _read_v1_cpu_quota(directory)
        if quota is not None:
            quotas.append(quota)
    # Every level of the hierarchy throttles independently, so the smallest share is the one we live under.
    return min(quotas, key=lambda quota: quota.share, default=None)


def _read_v2_cpu_quota(directory: Path) -> _CpuQuota | None:
    fields = (_read_text(directory / "cpu.max") or "").split()
    if not fields or fields[0] == "max":
        return None
    quota = _parse_int(fields[0])
    period = _parse_int(fields[1]) if len(fields) > 1 else _DEFAULT_V2_PERIOD_US
    return _valid_quota(quota, period, "cgroup v2 cpu.max")


def _read_v1_cpu_quota(directory: Path) -> _CpuQuota | None:
    quota = _parse_int(_read_text(directory / "cpu.cfs_quota_us"))
    if quota is None or quota < 0:  # -1 means "no quota"
        return None
    period = _parse_int(_read_text(directory / "cpu.cfs_period_us"))
    return _valid_quota(quota, period, "cgroup v1 cpu.cfs_quota_us/cpu.cfs_period_us")


def _valid_quota(quota: int | None, period: int | None, source: str) -> _CpuQuota | None:
    if quota is None or period is None or quota <= 0 or period <= 0:
        return None
    return _CpuQuota(quota, period, source)


# ---------------------------------------------------------------------------------------------------------------
# Memory


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _tightest_memory_limit(proc_root: str, cgroup_root: str) -> _MemoryLimit | None:
    limits = []
    for unified, directory in _applicable_cgroup_dirs(proc_root, cgroup_root, "memory"):
        if unified:
            limit = _read_memory_limit(directory / "memory.max", "cgroup v2 memory.max")
        else:
            limit = _read_memory_limit(directory / "memory.limit_in_bytes", "cgroup v1 memory.limit_in_bytes")
        if limit is not None:
            limits.append(limit)
    return min(limits, key=lambda limit: limit.limit_bytes, default=None)


def _read_memory_limit(path: Path, source: str) -> _MemoryLimit | None:
    text = _read_text(path)
    if text is None or text == "max":
        return None
    value = _parse_int(text)
    if value is None or value <= 0 or value >= _UNLIMITED_BYTES:
        return None
    return _MemoryLimit(value, source)


# ---------------------------------------------------------------------------------------------------------------
# Finding our cgroups


def _applicable_cgroup_dirs(proc_root: str, cgroup_root: str, controller: str) -> list[tuple[bool, Path]]:
    """(is cgroup v2, directory) for our own cgroup and each ancestor, in every hierarchy that may hold `controller`.

    Directories that do not exist are listed too; reading their files simply finds nothing. That also covers a
    container without a cgroup namespace: /proc/self/cgroup names the host's path, absent from the container's
    mount, and the walk reaches the mount root, which is the container's own cgroup.
    """
    root = Path(cgroup_root)
    found: list[tuple[bool, Path]] = []
    for membership in _memberships(proc_root):
        if membership.is_unified:
            mount = _unified_mount(root)
        elif controller in membership.controllers:
            mount = _v1_mount(root, membership.controllers)
        else:
            continue
        if mount is not None:
            found.extend((membership.is_unified, directory) for directory in _lineage(mount, membership.path))
    return found


def _memberships(proc_root: str) -> list[_Membership]:
    text = _read_text(Path(proc_root, "self", "cgroup")) or ""
    memberships = []
    for line in text.splitlines():
        hierarchy_id, _, rest = line.partition(":")
        controllers, separator, path = rest.partition(":")
        if not separator or not path.startswith("/"):
            continue
        if hierarchy_id == "0" and not controllers:
            memberships.append(_Membership((), path))
        else:
            memberships.append(_Membership(tuple(controllers.split(",")), path))
    return memberships


def _unified_mount(root: Path) -> Path | None:
    # Pure cgroup v2 mounts the hierarchy at the root; the hybrid layout mounts it at <root>/unified.
    for candidate in (root, root / "unified"):
        if (candidate / "cgroup.controllers").is_file():
            return candidate
    return None


def _v1_mount(root: Path, controllers: tuple[str, ...]) -> Path | None:
    # A co-mounted hierarchy lives at <root>/cpu,cpuacct (with <root>/cpu usually a symlink to it); a lone one at
    # <root>/<controller>.
    for name in dict.fromkeys((",".join(controllers), *controllers)):
        if (root / name).is_dir():
            return root / name
    return None


def _lineage(mount: Path, cgroup_path: str) -> list[Path]:
    """The cgroup's own directory under `mount`, then each parent up to the mount root."""
    parts = [part for part in cgroup_path.split("/") if part and part not in (".", "..")]
    return [mount.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


# ---------------------------------------------------------------------------------------------------------------
# Small helpers


def _read_text(path: Path) -> str | None:
    """A small kernel file's stripped text, or None if it is missing, unreadable or not a file."""
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _parse_int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _format_number(value: Fraction) -> str:
    """1.5 -> "1.5", 2 -> "2", 1/3 -> "0.33"."""
    return f"{float(value):.2f}".rstrip("0").rstrip(".")


def _format_bytes(count: int) -> str:
    if count >= _GIB:
        return f"{count / _GIB:.1f} GiB"
    if count >= _MIB:
        return f"{count / _MIB:.0f} MiB"
    if count >= _KIB:
        return f"{count / _KIB:.0f} KiB"
    return f"{count} B"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
