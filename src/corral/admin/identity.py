"""Who the master is: the identity it publishes in /status, and the checks `corral reload` and `corral scale`
make before they signal a pid it or a pidfile reports.

A pid is only a number: a stale pidfile, a recycled pid, or whatever answers on the admin address must never
make these commands signal another process (as root, kill(-1, HUP) reaches every process on the machine).
So a pid is signalled only when it is above 1, its process exists, its start time (/proc/PID/stat, in clock
ticks since boot) is the one the master published about itself, and that process holds the very admin socket
the status came from.
"""

from __future__ import annotations

import os
from pathlib import Path

from corral.core.sockets import BindError, parse_bind

__all__ = ["admin_socket_holder_problem", "master_problem", "pidfile_problem", "start_ticks"]

_PROC = Path("/proc")
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp
_UNIX_LISTENING = 0x10000  # __SO_ACCEPTCON in the flags of /proc/net/unix
_SLACK_SECONDS = 2.0  # clock-tick rounding and a pidfile written just after the start


def start_ticks(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (field 22 of /proc/PID/stat); None if unknown."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields after it start after the last ")".
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def master_problem(pid: int, published_ticks: object, admin_address: str) -> str | None:
    """Why `pid`, as /status reported it, must not be signalled (None: it is the master that answered)."""
    if pid <= 1:
        return f"the admin endpoint at {admin_address} reports pid {pid}, which is not a corral master"
    if not _PROC.joinpath("self").exists():
        return None  # no /proc to check against: pid > 1 and the permission to signal are all there is
    ticks = start_ticks(pid)
    if ticks is None:
        return f"no process {pid} (reported by the admin endpoint at {admin_address}): is corral running?"
    if not isinstance(published_ticks, int) or isinstance(published_ticks, bool):
        return (
            f"the admin endpoint at {admin_address} does not say which process it is (no master start_ticks): "
            f"not signalling pid {pid}"
        )
    if ticks != published_ticks:
        return (
            f"process {pid} started at tick {ticks}, not at {published_ticks} as the admin endpoint at "
            f"{admin_address} says: it is not that master (it exited and the pid was reused?)"
        )
    return admin_socket_holder_problem(pid, admin_address)


def admin_socket_holder_problem(pid: int, admin_address: str) -> str | None:
    """Why `pid` is not the process serving `admin_address` (None: it holds that listening socket)."""
    inodes = _listening_inodes(admin_address)
    if not inodes:
        return None  # an inherited descriptor, or a /proc without socket tables: nothing more to compare
    try:
        held = {os.readlink(entry) for entry in (_PROC / str(pid) / "fd").iterdir()}
    except PermissionError:
        return f"not allowed to inspect process {pid}: run as the master's user or as root"
    except OSError:
        return f"no process {pid}: is corral running?"
    if not any(f"socket:[{inode}]" in held for inode in inodes):
        return f"process {pid} does not hold the admin socket {admin_address}: it is not the corral master there"
    return None


def pidfile_problem(pid: int, pidfile: str) -> str | None:
    """Why the pid in `pidfile` must not be signalled: its process started after the pidfile was written, so
    the master that wrote it is gone and the pid belongs to someone else now."""
    if pid <= 1:
        return f"pidfile {pidfile}: {pid} is not a process id"
    ticks = start_ticks(pid)
    if ticks is None:
        return None  # gone (the caller says so) or no /proc
    try:
        written = os.stat(pidfile).st_mtime
        booted = _boot_time()
    except (OSError, ValueError):
        return None
    started = booted + ticks / os.sysconf("SC_CLK_TCK")
    if started > written + _SLACK_SECONDS:
        return f"pidfile {pidfile} is stale: process {pid} started after it was written, it is not the master"
    return None


def _boot_time() -> float:
    for line in (_PROC / "stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise ValueError("no btime in /proc/stat")


def _listening_inodes(admin_address: str) -> set[str]:
    """The inodes of the listening sockets bound to `admin_address`, from /proc/net (empty when unknown)."""
    try:
        where = parse_bind(admin_address)
    except BindError:
        return set()
    try:
        if where.kind == "unix":
            return _unix_inodes(where.path)
        if where.kind == "tcp":
            return _tcp_inodes(where.port)
    except (OSError, ValueError, IndexError):
        pass
    return set()


def _tcp_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("tcp", "tcp6"):
        path = _PROC / "net" / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == _LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def _unix_inodes(path: str) -> set[str]:
    wanted = {path, os.path.abspath(path)}  # the table shows the path as it was given to bind()
    inodes = set()
    for line in (_PROC / "net" / "unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7] in wanted and int(fields[3], 16) & _UNIX_LISTENING:
            inodes.add(fields[6])
    return inodes
