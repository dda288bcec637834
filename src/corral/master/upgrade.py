"""Binary upgrade on USR2, Gunicorn-style: exec a new master that inherits the listening sockets.

The old master forks; the child execs the same command line (new code, same sockets: their descriptor
numbers travel in CORRAL_FDS, the old master's pid in CORRAL_UPGRADE_FROM). Both pools then accept on the
same sockets, so no connection is refused while the operator checks the new one. WINCH stops the old
master's workers; TERM ends the old master, and the new one, re-parented, takes over the pidfile.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable, MutableMapping

from corral.core.contract import MASTER_SIGNALS, ExitCode

__all__ = ["FDS_ENV", "UPGRADE_FROM_ENV", "exec_new_master", "inherited_listeners", "upgrade_parent"]

FDS_ENV = "CORRAL_FDS"
UPGRADE_FROM_ENV = "CORRAL_UPGRADE_FROM"
# Variables that describe the old master's own start and must not reach the new one.
_NOT_INHERITED = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", FDS_ENV, UPGRADE_FROM_ENV)


def command_line() -> list[str]:
    """The command that started this master, runnable again (python, then the script or -m and the args)."""
    return [sys.executable, *sys.orig_argv[1:]]


def exec_new_master(
    listeners: list[socket.socket],
    start_cwd: str,
    pre_exec: Callable[[], None],
    extra_environ: Callable[[int], dict[str, str]] | None = None,
    argv: list[str] | None = None,
) -> int:
    """Fork a child that execs a new master inheriting `listeners`; returns the child's pid (in the parent).

    extra_environ(pid) adds variables for the new master's pid (systemd's notify socket, taken out of our
    own environment at start so that apps never see it)."""
    old_master = os.getpid()
    pid = os.fork()
    if pid != 0:
        return pid
    try:
        # The master blocks its signals around fork; exec keeps the mask, and a new master that starts with
        # TERM blocked could never be stopped.
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        for sig in MASTER_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        environ = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
        fds = []
        for sock in listeners:
            os.set_inheritable(sock.fileno(), True)
            fds.append(str(sock.fileno()))
        environ[FDS_ENV] = ",".join(fds)
        environ[UPGRADE_FROM_ENV] = str(old_master)
        if extra_environ is not None:
            environ.update(extra_environ(os.getpid()))
        pre_exec()
        os.chdir(start_cwd)
        command = argv or command_line()
        os.execve(command[0], command, environ)
    except BaseException as exc:  # the exec failed: tell the old master's log and go; it keeps serving
        with contextlib.suppress(Exception):
            print(f"corral: error: binary upgrade: could not exec a new master: {exc}", file=sys.stderr, flush=True)
    os._exit(ExitCode.FAILED)


def inherited_listeners(environ: MutableMapping[str, str] | None = None) -> list[socket.socket] | None:
    """The listeners an upgrading master passed down (CORRAL_FDS), or None; the variable is consumed."""
    env = os.environ if environ is None else environ
    text = env.pop(FDS_ENV, "")
    if not text:
        return None
    listeners = []
    for item in text.split(","):
        sock = socket.socket(fileno=int(item))
        sock.set_inheritable(False)
        sock.setblocking(False)
        listeners.append(sock)
    return listeners


def upgrade_parent(environ: MutableMapping[str, str] | None = None) -> int | None:
    """The pid of the old master that exec'd this one, while it still runs as our parent; else None."""
    env = os.environ if environ is None else environ
    text = env.pop(UPGRADE_FROM_ENV, "")
    if not text.isdigit() or int(text) != os.getppid():
        return None
    return int(text)
