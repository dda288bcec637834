"""`corral status`, `corral reload` and `corral scale N`: talk to a running corral.

They find it the way the server was configured, from the same settings (command line, CORRAL_CMD_ARGS,
config file): the admin endpoint (`admin_bind`) for the pool's status and target, the pidfile (`pidfile`) or
the admin endpoint for the master's pid. Changes go through the master's signals (HUP, TTIN, TTOU), so
only who may signal the master may change the pool: the admin endpoint itself only reads.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from corral.admin.identity import master_problem, pidfile_problem
from corral.admin.status import format_status
from corral.core.contract import MasterSignal
from corral.core.settings import Settings
from corral.core.sockets import BindError, parse_bind

__all__ = ["CommandError", "NotConfigured", "fetch_status", "master_pid", "reload", "scale", "status"]

TIMEOUT = 5.0
_ANY_HOST = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class CommandError(Exception):
    """Why a command could not do its work; str() is one line for the user."""


class NotConfigured(CommandError):
    """The command was not told where the running corral is."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _connection(address: str, timeout: float) -> http.client.HTTPConnection:
    try:
        where = parse_bind(address)
    except BindError as exc:
        raise CommandError(f"admin_bind: {exc}") from None
    if where.kind == "unix":
        return _UnixConnection(where.path, timeout)
    if where.kind == "fd":
        raise CommandError(f"admin_bind {address!r} is an inherited descriptor: give its address with --admin-bind")
    return http.client.HTTPConnection(_ANY_HOST.get(where.host, where.host), where.port, timeout=timeout)


def fetch_status(address: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    """The /status document of the corral whose admin endpoint is `address`."""
    conn = _connection(address, timeout)
    try:
        conn.request("GET", "/status")
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise CommandError(f"cannot reach the admin endpoint at {address}: {reason} (is corral running?)") from None
    finally:
        conn.close()
    if response.status != 200:
        raise CommandError(f"the admin endpoint at {address} answered {response.status} to /status")
    try:
        document: dict[str, Any] = json.loads(body)
    except ValueError:
        raise CommandError(f"the admin endpoint at {address} sent something that is not JSON") from None
    return document


def _admin_address(settings: Settings, why: str) -> str:
    if not settings.metrics.admin_bind:
        raise NotConfigured(
            f"{why} needs the admin endpoint: give the server's admin_bind (--admin-bind ADDRESS, or the same "
            "config file with -c)"
        )
    return str(settings.metrics.admin_bind)


def status(settings: Settings, *, as_json: bool = False) -> str:
    """What `corral status` prints."""
    document = fetch_status(_admin_address(settings, "corral status"))
    return json.dumps(document, indent=1) if as_json else format_status(document)


def master_pid(settings: Settings) -> int:
    """The master's pid: from the pidfile when there is one, else from the admin endpoint."""
    pidfile, admin_bind = settings.process.pidfile, settings.metrics.admin_bind
    if pidfile:
        try:
            with open(pidfile) as handle:
                text = handle.read().strip()
        except OSError as exc:
            raise CommandError(f"pidfile {pidfile}: {exc.strerror or exc} (is corral running?)") from None
        if not text.isdigit() or int(text) <= 1:
            raise CommandError(f"pidfile {pidfile}: {text!r} is not a process id")
        pid = int(text)
        _refuse(pidfile_problem(pid, pidfile))
    elif admin_bind:
        pid = _verified_master(fetch_status(admin_bind), admin_bind)
    else:
        raise NotConfigured("cannot find the master: give the server's pidfile (-p FILE) or admin_bind (--admin-bind)")
    _check_signallable(pid, pidfile)
    return pid


def _verified_master(document: dict[str, Any], address: str) -> int:
    """The master's pid from a /status document, once verified to be the master that answered."""
    master = document.get("master") if isinstance(document, dict) else None
    if not isinstance(master, dict):
        master = {}
    pid = master.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool):
        raise CommandError(f"the admin endpoint at {address} reports no master pid: not signalling anything")
    _refuse(master_problem(pid, master.get("start_ticks"), address))
    return pid


def _refuse(problem: str | None) -> None:
    if problem is not None:
        raise CommandError(problem)


def _check_signallable(pid: int, pidfile: str | None) -> None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        stale = f" (the pidfile {pidfile} is stale)" if pidfile else ""
        raise CommandError(f"no process {pid}{stale}: is corral running?") from None
    except PermissionError:
        raise CommandError(f"not allowed to signal the master (pid {pid}): run as its user or as root") from None


def reload(settings: Settings) -> str:
    """HUP the master: it re-reads its configuration and replaces every worker, new ones READY first."""
    pid = master_pid(settings)
    os.kill(pid, MasterSignal.HUP)
    return f"corral: sent HUP to the master (pid {pid}): rolling reload started; corral status follows it"


def scale(
    settings: Settings,
    workers: int,
    *,
    timeout: float = 30.0,
    fetch: Callable[[str], dict[str, Any]] = fetch_status,
    send: Callable[[int, int], None] = os.kill,
) -> str:
    """TTIN or TTOU the master one signal at a time, each time until its target moved, until the target is
    `workers`. One at a time because signals of one kind sent together may arrive as one."""
    if workers < 1:
        raise CommandError(f"scale: the pool needs at least 1 worker, got {workers}")
    address = _admin_address(settings, "corral scale")
    document = fetch(address)
    pid, start = _verified_master(document, address), int(document["master"]["target"])
    _check_signallable(pid, None)
    deadline = time.monotonic() + timeout
    target = start
    for _ in range(abs(workers - start) + 1):
        if target == workers:
            return f"corral: target {start} -> {workers} workers (the master is on it; corral status shows the pool)"
        send(pid, MasterSignal.TTIN if workers > target else MasterSignal.TTOU)
        target = _wait_for_new_target(address, target, deadline, fetch)
    raise CommandError(f"scale: the target is {target}, not {workers}: did someone else change it meanwhile?")


def _wait_for_new_target(address: str, old: int, deadline: float, fetch: Callable[[str], dict[str, Any]]) -> int:
    for _ in range(100_000):
        target = int(fetch(address)["master"]["target"])
        if target != old:
            return target
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise CommandError(f"scale: the master did not change its target from {old} in time (see its error log)")
